import Foundation

/// The header's reserved key for string metadata.
let metadataKey = "__metadata__"

/// Readers refuse larger headers, as the reference implementation does: a damaged length
/// prefix must not make us allocate gigabytes.
let maximumHeaderLength = 100_000_000

/// Readers refuse headers nested deeper: a safetensors header needs 3 levels (the object,
/// a tensor's entry, its shape), and a hostile one must not exhaust the JSON parser's stack.
let maximumHeaderNesting = 16

/// The deepest nesting of objects and arrays in JSON text, strings skipped.
func nestingDepth(of json: [UInt8]) -> Int {
    var depth = 0, deepest = 0
    var inString = false, escaped = false
    for byte in json {
        if inString {
            if escaped { escaped = false } else if byte == UInt8(ascii: "\\") { escaped = true } else if byte == UInt8(ascii: "\"") { inString = false }
            continue
        }
        switch byte {
        case UInt8(ascii: "\""): inString = true
        case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1; deepest = max(deepest, depth)
        case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
        default: break
        }
    }
    return deepest
}

/// Builds the JSON header byte for byte, so that equal inputs give equal files:
/// `{"__metadata__":{<keys sorted by UTF-8 bytes>},"<tensor>":{"dtype":..,"shape":[..],"data_offsets":[b,e]},..}`
/// with no whitespace, tensors in data order, padded with spaces so that the data section
/// starts 8-byte aligned (8-byte prefix + header length is a multiple of 8).
struct HeaderEncoder {
    private(set) var bytes: [UInt8] = []
    /// Where the digits of the value of `placeholderKey` start, if that key was written.
    private(set) var placeholderOffset: Int?

    /// `placeholderKey` marks the metadata value whose position the caller needs, to patch it
    /// once it is known (the data checksum).
    init(metadata: [String: String], tensors: [TensorInfo], placeholderKey: String) {
        append("{")
        appendQuoted(metadataKey)
        append(":{")
        let sortedKeys = metadata.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        for (index, key) in sortedKeys.enumerated() {
            if index > 0 { append(",") }
            appendQuoted(key)
            append(":")
            if key == placeholderKey { placeholderOffset = bytes.count + 1 }
            appendQuoted(metadata[key]!)
        }
        append("}")
        for tensor in tensors {
            append(",")
            appendQuoted(tensor.name)
            append(":{\"dtype\":")
            appendQuoted(tensor.dtype.rawValue)
            append(",\"shape\":[" + tensor.shape.map(String.init).joined(separator: ",") + "]")
            append(",\"data_offsets\":[\(tensor.dataOffsets.lowerBound),\(tensor.dataOffsets.upperBound)]}")
        }
        append("}")
        while (8 + bytes.count) % 8 != 0 { append(" ") }
    }

    private mutating func append(_ text: String) {
        bytes.append(contentsOf: text.utf8)
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped, everything
    /// else as raw UTF-8.
    private mutating func appendQuoted(_ text: String) {
        append("\"")
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): append("\\\"")
            case UInt8(ascii: "\\"): append("\\\\")
            case 0..<0x20: append("\\u00" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16))
            default: bytes.append(byte)
            }
        }
        append("\"")
    }
}

/// The header as parsed, before its offsets are checked against each other and the file.
struct DecodedHeader: Decodable {
    var metadata: [String: String] = [:]
    var tensors: [TensorInfo] = []

    /// Thrown from decoding to carry our own wording instead of a DecodingError's.
    struct Problem: Error {
        let message: String
    }

    private struct Key: CodingKey {
        let stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    private struct Entry: Decodable {
        let dtype: String
        let shape: [Int]
        let dataOffsets: [Int]

        enum CodingKeys: String, CodingKey {
            case dtype, shape
            case dataOffsets = "data_offsets"
        }
    }

    init(from decoder: Decoder) throws {
        let container: KeyedDecodingContainer<Key>
        do {
            container = try decoder.container(keyedBy: Key.self)
        } catch {
            throw Problem(message: "header is not a JSON object")
        }
        for key in container.allKeys {
            let name = key.stringValue
            if name == metadataKey {
                guard let metadata = try? container.decode([String: String].self, forKey: key) else {
                    throw Problem(message: "\(metadataKey) is not an object of string values")
                }
                self.metadata = metadata
                continue
            }
            guard let entry = try? container.decode(Entry.self, forKey: key) else {
                throw Problem(message: "tensor \"\(name)\": entry needs a string dtype, an integer list "
                                     + "shape and two integer data_offsets")
            }
            tensors.append(try Self.validated(entry, name: name))
        }
    }

    /// Checks one entry on its own: known dtype, sane shape, offsets that span its bytes.
    private static func validated(_ entry: Entry, name: String) throws -> TensorInfo {
        guard let dtype = SafeTensorsDType(rawValue: entry.dtype) else {
            throw Problem(message: "tensor \"\(name)\": unknown dtype \"\(entry.dtype)\"")
        }
        guard let count = elementCount(of: entry.shape) else {
            throw Problem(message: "tensor \"\(name)\": shape \(describe(entry.shape)) has a negative or too large dimension")
        }
        let offsets = entry.dataOffsets
        guard offsets.count == 2, offsets[0] >= 0, offsets[0] <= offsets[1] else {
            throw Problem(message: "tensor \"\(name)\": data_offsets \(describe(offsets)) are not [begin, end] with 0 <= begin <= end")
        }
        let (needed, overflow) = count.multipliedReportingOverflow(by: dtype.size)
        guard !overflow, offsets[1] - offsets[0] == needed else {
            throw Problem(message: "tensor \"\(name)\": data_offsets \(describe(offsets)) span \(offsets[1] - offsets[0]) bytes, "
                                 + "but \(dtype.rawValue) \(describe(entry.shape)) needs \(overflow ? "more" : String(needed))")
        }
        return TensorInfo(name: name, dtype: dtype, shape: entry.shape, dataOffsets: offsets[0]..<offsets[1])
    }
}
