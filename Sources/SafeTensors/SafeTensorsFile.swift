#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CZlib
import Foundation

/// A safetensors file read into memory and validated as a whole before any of it is used:
/// length prefix, header JSON, every entry, contiguous coverage of the data section, file
/// size, and the data checksum when the header carries one.
public struct SafeTensorsFile: Sendable {
    public let path: String
    /// The tensors in data-section order.
    public let tensors: [TensorInfo]
    /// All string metadata, including the writer's checksum key when present.
    public let metadata: [String: String]
    /// True when the metadata carried `SafeTensorsWriter.checksumKey` and the data matched it;
    /// nil when it carried none (files from other writers). A mismatch throws, so never false.
    public let checksumVerified: Bool?

    /// The whole file; tensor offsets are relative to `dataStart`.
    private let bytes: [UInt8]
    private let dataStart: Int

    /// Reads and validates `path`. `verifyingChecksum: false` is for showing a damaged file
    /// (`ddptrain inspect`); `checksumVerified` is then false when the data does not match.
    public init(path: String, verifyingChecksum: Bool = true) throws(SafeTensorsError) {
        let file = try OpenFile.open(path, flags: O_RDONLY, reportedPath: path)
        let bytes = try file.readAll()
        try file.close()
        try self.init(bytes: bytes, path: path, verifyingChecksum: verifyingChecksum)
    }

    private init(bytes: [UInt8], path: String, verifyingChecksum: Bool) throws(SafeTensorsError) {
        guard bytes.count >= 8 else {
            throw .damaged(path, "truncated: file has \(bytes.count) bytes, the header length prefix alone needs 8")
        }
        let headerLength = bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard headerLength <= UInt64(maximumHeaderLength) else {
            throw .damaged(path, "header length \(headerLength) exceeds the limit of \(maximumHeaderLength) bytes")
        }
        guard headerLength <= UInt64(bytes.count - 8) else {
            throw .damaged(path, "truncated: header needs \(headerLength) bytes, file has \(bytes.count - 8) after the length prefix")
        }
        let dataStart = 8 + Int(headerLength)
        let header = try Self.decodeHeader(bytes[8..<dataStart], path: path)
        let tensors = header.tensors.sorted {
            ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name)
                < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name)
        }
        let dataLength = try Self.checkCoverage(tensors, path: path)
        let available = bytes.count - dataStart
        guard dataLength <= available else {
            throw .damaged(path, "truncated: data section needs \(dataLength) bytes, file has \(available)")
        }
        guard dataLength == available else {
            throw .damaged(path, "trailing garbage: \(available - dataLength) bytes after the end of the data section")
        }

        if let expected = header.metadata[SafeTensorsWriter.checksumKey] {
            // Only the writer's own spelling is accepted: exactly 8 lowercase hex digits.
            guard let expectedValue = UInt32(expected, radix: 16), hex(expectedValue) == expected else {
                throw .damaged(path, "metadata \(SafeTensorsWriter.checksumKey) is not 8 hex digits: \"\(expected)\"")
            }
            let actual = bytes[dataStart...].withUnsafeBufferPointer { data in
                UInt32(crc32_z(crc32_z(0, nil, 0), data.baseAddress, data.count))
            }
            if actual != expectedValue && verifyingChecksum {
                throw .damaged(path, "checksum mismatch: header says 0x\(hex(expectedValue)), data gives 0x\(hex(actual))")
            }
            checksumVerified = actual == expectedValue
        } else {
            checksumVerified = nil
        }
        self.path = path
        self.tensors = tensors
        self.metadata = header.metadata
        self.bytes = bytes
        self.dataStart = dataStart
    }

    private static func decodeHeader(_ header: ArraySlice<UInt8>, path: String) throws(SafeTensorsError) -> DecodedHeader {
        guard String(validating: header, as: UTF8.self) != nil else {
            throw .damaged(path, "header is not valid UTF-8")
        }
        guard header.first == UInt8(ascii: "{") else {
            throw .damaged(path, "header is not valid JSON: it does not start with '{'")
        }
        do {
            return try JSONDecoder().decode(DecodedHeader.self, from: Data(header))
        } catch let problem as DecodedHeader.Problem {
            throw .damaged(path, problem.message)
        } catch {
            throw .damaged(path, "header is not valid JSON")
        }
    }

    /// Checks that the tensors, sorted by offset, tile the data section without gaps or
    /// overlaps, and returns its length.
    private static func checkCoverage(_ tensors: [TensorInfo], path: String) throws(SafeTensorsError) -> Int {
        var end = 0
        var previous: TensorInfo?
        for tensor in tensors {
            let range = tensor.dataOffsets
            if range.lowerBound < end, let previous {
                throw .damaged(path, "tensors \"\(previous.name)\" \(describe(previous.dataOffsets)) and "
                                   + "\"\(tensor.name)\" \(describe(range)) overlap")
            }
            if range.lowerBound > end {
                throw .damaged(path, "gap in data section: bytes \(end)..<\(range.lowerBound) belong to no tensor")
            }
            end = range.upperBound
            previous = tensor
        }
        return end
    }

    /// The tensor called `name`, if the file has one.
    public func tensor(named name: String) -> TensorInfo? {
        tensors.first { $0.name == name }
    }

    /// The values of tensor `name`, flattened in row-major order. The element type must be
    /// the tensor's dtype exactly; nothing is converted.
    public func values<Element: SafeTensorsElement>(
        of name: String, as type: Element.Type = Element.self
    ) throws(SafeTensorsError) -> [Element] {
        let tensor = try checkedTensor(name, Element.self)
        return [Element](unsafeUninitializedCapacity: tensor.elementCount) { buffer, count in
            copyBytes(of: tensor, to: UnsafeMutableRawBufferPointer(buffer))
            count = tensor.elementCount
        }
    }

    /// Copies tensor `name` into `destination`, which must hold exactly its elements, after
    /// checking that the file's shape is `shape`.
    public func copyValues<Element: SafeTensorsElement>(
        of name: String, shape: [Int], into destination: UnsafeMutableBufferPointer<Element>
    ) throws(SafeTensorsError) {
        let tensor = try checkedTensor(name, Element.self)
        guard tensor.shape == shape else {
            throw .invalidRequest(path, "tensor \"\(name)\" has shape \(describe(tensor.shape)), expected \(describe(shape))")
        }
        guard destination.count == tensor.elementCount else {
            throw .invalidRequest(path, "tensor \"\(name)\" has \(tensor.elementCount) elements, destination holds \(destination.count)")
        }
        copyBytes(of: tensor, to: UnsafeMutableRawBufferPointer(destination))
    }

    private func checkedTensor<Element: SafeTensorsElement>(
        _ name: String, _ type: Element.Type
    ) throws(SafeTensorsError) -> TensorInfo {
        guard let tensor = tensor(named: name) else {
            throw .invalidRequest(path, "no tensor named \"\(name)\"")
        }
        guard tensor.dtype == Element.dtype else {
            throw .invalidRequest(path, "tensor \"\(name)\" is \(tensor.dtype.rawValue), not \(Element.dtype.rawValue)")
        }
        return tensor
    }

    private func copyBytes(of tensor: TensorInfo, to destination: UnsafeMutableRawBufferPointer) {
        let range = (dataStart + tensor.dataOffsets.lowerBound)..<(dataStart + tensor.dataOffsets.upperBound)
        bytes[range].withUnsafeBytes { source in destination.copyMemory(from: source) }
    }
}

/// `[begin, end]`, as data offsets are written in the header.
private func describe(_ range: Range<Int>) -> String {
    "[\(range.lowerBound), \(range.upperBound)]"
}
