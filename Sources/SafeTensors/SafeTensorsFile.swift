#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CZlib
import DDPSystem
import Foundation

/// A safetensors file read into memory and validated as a whole before any of it is used.
/// Nothing is read before its size is known: the file must be a regular file (a FIFO or a
/// device is refused by type, never read); its size comes from fstat; the length prefix
/// and the header are read and validated first (header length, nesting, JSON, every
/// entry, contiguous coverage of the data section), which gives the exact size the file
/// must have; only a file of exactly that size has its data read. Then the checksum, when
/// the header carries one (see `SafeTensorsWriter`: the whole file, or the data alone in
/// older files).
///
/// Errors say which of two things happened (`SafeTensorsError.isDamage`): the file could
/// not be read (open or read failed, not a regular file), or it was read and is damaged.
public struct SafeTensorsFile: Sendable {
    /// What the checksum a file carries covers.
    public enum ChecksumScope: Sendable, Equatable {
        /// Every byte of the file (`SafeTensorsWriter.checksumKey`).
        case file
        /// The data section only (`SafeTensorsWriter.dataChecksumKey`, older files).
        case data
    }

    public let path: String
    /// The tensors in data-section order.
    public let tensors: [TensorInfo]
    /// All string metadata, including the writer's checksum key when present.
    public let metadata: [String: String]
    /// True when the metadata carried a checksum and the file matched it; nil when it
    /// carried none (files from other writers). A mismatch throws unless the file was
    /// opened with `verifyingChecksum: false`.
    public let checksumVerified: Bool?
    /// What the checksum covers; nil when there is none.
    public let checksumScope: ChecksumScope?

    /// The data section; tensor offsets are relative to its start.
    private let data: [UInt8]

    /// Reads and validates `path`. `verifyingChecksum: false` is for showing a damaged file
    /// (`ddptrain inspect`); `checksumVerified` is then false when the file does not match.
    public init(path: String, verifyingChecksum: Bool = true) throws(SafeTensorsError) {
        let (file, size) = try OpenFile.openRegularFile(path)
        guard size >= 8 else {
            throw .damaged(path, "truncated: file has \(size) bytes, the header length prefix alone needs 8")
        }
        let prefix = try file.read(8, atOffset: 0)
        let headerLength = prefix.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard headerLength <= UInt64(maximumHeaderLength) else {
            throw .damaged(path, "header length \(headerLength) exceeds the limit of \(maximumHeaderLength) bytes")
        }
        guard headerLength <= UInt64(size - 8) else {
            throw .damaged(path, "truncated: header needs \(headerLength) bytes, file has \(size - 8) after the length prefix")
        }
        let headerBytes = try file.read(Int(headerLength), atOffset: 8)
        let header = try Self.decodeHeader(headerBytes, path: path)
        let tensors = header.tensors.sorted {
            ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name)
                < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name)
        }
        let dataLength = try Self.checkCoverage(tensors, path: path)
        let dataStart = 8 + headerBytes.count
        let available = size - dataStart
        guard dataLength <= available else {
            throw .damaged(path, "truncated: data section needs \(dataLength) bytes, file has \(available)")
        }
        guard dataLength == available else {
            throw .damaged(path, "trailing garbage: \(available - dataLength) bytes after the end of the data section")
        }
        // The header accounts for every byte; still, a sound header may claim more than can be
        // held in memory (a huge sparse file): refused rather than trapping on the allocation.
        let memory = MemoryInfo.physicalBytes()
        guard dataLength <= memory else {
            throw SafeTensorsError(path: path, kind: .tooLarge,
                                   problem: "data section of \(dataLength) bytes is larger than this machine's memory (\(memory) bytes)")
        }
        let data = try file.read(dataLength, atOffset: dataStart)
        try file.close()

        var verified: Bool?
        if let expected = try Self.checksum(SafeTensorsWriter.checksumKey, in: header.metadata, path: path) {
            let digits = try Self.checksumDigits(in: headerBytes, path: path)
            var actual = crc32_z(0, nil, 0)
            for part in [prefix[...], headerBytes[..<digits.lowerBound], Array(SafeTensorsWriter.checksumPlaceholder.utf8)[...],
                         headerBytes[digits.upperBound...], data[...]] {
                actual = part.withUnsafeBufferPointer { crc32_z(actual, $0.baseAddress, $0.count) }
            }
            try Self.compare(expected: expected, actual: UInt32(actual), what: "file", verifying: verifyingChecksum, path: path)
            verified = UInt32(actual) == expected
        }
        if let expected = try Self.checksum(SafeTensorsWriter.dataChecksumKey, in: header.metadata, path: path) {
            let actual = UInt32(data.withUnsafeBufferPointer { crc32_z(crc32_z(0, nil, 0), $0.baseAddress, $0.count) })
            try Self.compare(expected: expected, actual: actual, what: "data", verifying: verifyingChecksum, path: path)
            verified = (verified ?? true) && actual == expected
        }
        checksumVerified = verified
        checksumScope = header.metadata[SafeTensorsWriter.checksumKey] != nil ? .file
            : header.metadata[SafeTensorsWriter.dataChecksumKey] != nil ? .data : nil
        self.path = path
        self.tensors = tensors
        self.metadata = header.metadata
        self.data = data
    }

    /// The value of checksum metadata `key`, if present. Only the writer's own spelling is
    /// accepted: exactly 8 lowercase hex digits.
    private static func checksum(_ key: String, in metadata: [String: String], path: String) throws(SafeTensorsError) -> UInt32? {
        guard let text = metadata[key] else { return nil }
        guard let value = UInt32(text, radix: 16), hex(value) == text else {
            throw .damaged(path, "metadata \(key) is not 8 hex digits: \"\(text)\"")
        }
        return value
    }

    /// Where the 8 digits of the whole-file checksum lie in the header: after the one
    /// occurrence of `"ddptrain.file_crc32":"`, as the writer spells it.
    private static func checksumDigits(in header: [UInt8], path: String) throws(SafeTensorsError) -> Range<Int> {
        let key = SafeTensorsWriter.checksumKey
        let marker = Array("\"\(key)\":\"".utf8)
        let found = header.ranges(of: marker)
        guard found.count == 1, let start = found.first?.upperBound, start + 9 <= header.count,
              header[start + 8] == UInt8(ascii: "\"") else {
            throw .damaged(path, "metadata \(key) is not written once as \"\(key)\":\"<8 hex digits>\" in the header")
        }
        return start..<(start + 8)
    }

    private static func compare(expected: UInt32, actual: UInt32, what: String, verifying: Bool, path: String) throws(SafeTensorsError) {
        if actual != expected && verifying {
            throw .damaged(path, "checksum mismatch: header says 0x\(hex(expected)), \(what) gives 0x\(hex(actual))")
        }
    }

    private static func decodeHeader(_ header: [UInt8], path: String) throws(SafeTensorsError) -> DecodedHeader {
        guard String(validating: header, as: UTF8.self) != nil else {
            throw .damaged(path, "header is not valid UTF-8")
        }
        guard header.first == UInt8(ascii: "{") else {
            throw .damaged(path, "header is not valid JSON: it does not start with '{'")
        }
        guard nestingDepth(of: header) <= maximumHeaderNesting else {
            throw .damaged(path, "header is nested more than \(maximumHeaderNesting) levels deep")
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
        data[tensor.dataOffsets].withUnsafeBytes { source in destination.copyMemory(from: source) }
    }

    /// The first NaN or infinity in tensor `name` (F32 or F64): its flat index and value;
    /// nil when every value is finite, or the tensor holds another dtype or does not exist.
    public func firstNonFinite(in name: String) -> (index: Int, value: Double)? {
        firstValue(in: name) { !$0.isFinite }
    }

    /// The first value below zero in tensor `name` (F32 or F64), as `firstNonFinite`.
    public func firstNegative(in name: String) -> (index: Int, value: Double)? {
        firstValue(in: name) { $0 < 0 }
    }

    private func firstValue(in name: String, where test: (Double) -> Bool) -> (index: Int, value: Double)? {
        guard let tensor = tensor(named: name) else { return nil }
        switch tensor.dtype {
        case .f32: return firstValue(in: tensor, as: Float.self, where: test)
        case .f64: return firstValue(in: tensor, as: Double.self, where: test)
        default: return nil
        }
    }

    /// Loads are unaligned: other writers need not align a tensor to its element size.
    private func firstValue<Value: BinaryFloatingPoint>(in tensor: TensorInfo, as type: Value.Type,
                                                        where test: (Double) -> Bool) -> (index: Int, value: Double)? {
        data[tensor.dataOffsets].withUnsafeBytes { bytes in
            for index in 0..<tensor.elementCount {
                let value = Double(bytes.loadUnaligned(fromByteOffset: index * MemoryLayout<Value>.size, as: Value.self))
                if test(value) { return (index, value) }
            }
            return nil
        }
    }
}

/// `[begin, end]`, as data offsets are written in the header.
private func describe(_ range: Range<Int>) -> String {
    "[\(range.lowerBound), \(range.upperBound)]"
}
