import Foundation
import XCTest

/// Edits a checkpoint the way a person with a script would: new metadata values, changed
/// tensor bytes, and a checksum recomputed so that the file still passes it. Written from
/// the format's description, without the code it tests: the header is re-encoded with
/// JSONSerialization; format version 2 carries `ddptrain.file_crc32` (CRC-32 of the whole
/// file with its own 8 digits read as "00000000"), version 1 `ddptrain.data_crc32` (CRC-32
/// of the data section).
enum CheckpointEdit {
    enum Checksum {
        /// As the original file has it.
        case same
        /// Version 1: data section only.
        case dataOnly
    }

    static let fileKey = "ddptrain.file_crc32"
    static let dataKey = "ddptrain.data_crc32"

    /// Writes a copy of `path` to `output` with `metadata` values replaced and `tensors`
    /// given each tensor's bytes to change (same length).
    static func rewrite(_ path: String, to output: String, metadata changes: [String: String] = [:], checksum: Checksum = .same,
                        tensors: (String, inout [UInt8]) -> Void = { _, _ in }) throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let length = Int(bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        var header = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + length)])) as? [String: Any])
        var data = Array(bytes[(8 + length)...])
        for (name, entry) in header where name != "__metadata__" {
            let offsets = try XCTUnwrap((entry as? [String: Any])?["data_offsets"] as? [Int])
            var slice = Array(data[offsets[0]..<offsets[1]])
            tensors(name, &slice)
            data.replaceSubrange(offsets[0]..<offsets[1], with: slice)
        }
        var metadata = try XCTUnwrap(header["__metadata__"] as? [String: String])
        for (key, value) in changes { metadata[key] = value }
        let wholeFile = checksum == .same && metadata[fileKey] != nil
        metadata[fileKey] = nil
        metadata[dataKey] = nil
        if wholeFile {
            metadata[fileKey] = "00000000"
        } else {
            metadata[dataKey] = hex(crc32(data))
        }
        header["__metadata__"] = metadata
        var json = [UInt8](try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        while (8 + json.count) % 8 != 0 { json.append(UInt8(ascii: " ")) }
        let prefix = withUnsafeBytes(of: UInt64(json.count).littleEndian) { Array($0) }
        if wholeFile {
            let digits = try XCTUnwrap(json.firstRange(of: Array("\"\(fileKey)\":\"".utf8))).upperBound
            let crc = Array(hex(crc32(prefix + json + data)).utf8)
            json.replaceSubrange(digits..<(digits + 8), with: crc)
        }
        try Data(prefix + json + data).write(to: URL(fileURLWithPath: output))
    }

    /// CRC-32 (IEEE, as zlib computes it), bit by bit.
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var table = [UInt32](repeating: 0, count: 256)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0xEDB8_8320 : c >> 1 }
            table[i] = c
        }
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return ~crc
    }

    static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 8 - digits.count) + digits
    }

    /// `bytes` (Float32 little-endian) with element `index` set to `value`.
    static func setFloat(_ bytes: inout [UInt8], at index: Int, to value: Float) {
        withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.replaceSubrange((index * 4)..<(index * 4 + 4), with: $0) }
    }
}
