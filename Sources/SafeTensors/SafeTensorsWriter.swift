#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CZlib

/// Writes safetensors files atomically: the bytes go to a hidden temporary file in the same
/// directory, which is flushed and then renamed over the final name, so a reader sees either
/// the old file or the complete new one, never a partial file.
///
/// Tensors are stored in the order given (for a checkpoint, the order of the flat parameter
/// buffer, so the data section is one sequential pass over it); Python's safetensors and
/// PyTorch do not care about the order. The data section starts 8-byte aligned; a caller
/// that wants every tensor naturally aligned for zero-copy readers lists 8-byte dtypes
/// before 4-byte ones, and so on (the reference writer sorts by dtype for this). The metadata always carries the CRC-32 (zlib) of the
/// data section under `checksumKey`.
public enum SafeTensorsWriter {
    /// Metadata key of the data section's CRC-32: 8 lowercase hex digits.
    public static let checksumKey = "ddptrain.data_crc32"

    /// One tensor to write.
    public struct Tensor {
        public let name: String
        public let dtype: SafeTensorsDType
        public let shape: [Int]
        private let storage: Storage

        private enum Storage {
            case borrowed(UnsafeRawBufferPointer)
            case owned([UInt8])
        }

        /// A tensor whose bytes are not copied: `bytes` must stay valid until `write` returns.
        public init(name: String, dtype: SafeTensorsDType, shape: [Int], bytes: UnsafeRawBufferPointer) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            storage = .borrowed(bytes)
        }

        /// A tensor holding a copy of `values`; meant for small tensors.
        public init<Element: SafeTensorsElement>(name: String, shape: [Int], values: [Element]) {
            self.name = name
            dtype = Element.dtype
            self.shape = shape
            storage = .owned(values.withUnsafeBytes { Array($0) })
        }

        fileprivate func withBytes<Value>(
            _ body: (UnsafeRawBufferPointer) throws(SafeTensorsError) -> Value
        ) throws(SafeTensorsError) -> Value {
            switch storage {
            case .borrowed(let bytes):
                return try body(bytes)
            case .owned(let array):
                return try array.span.withUnsafeBytes(body)
            }
        }
    }

    /// The hidden name the writer uses for `path` before renaming: `<dir>/.<name>.tmp.<pid>`.
    public static func temporaryPath(for path: String) -> String {
        let (directory, name) = split(path)
        return "\(directory == "/" ? "" : directory)/.\(name).tmp.\(getpid())"
    }

    /// Writes `tensors` and `metadata` to `path`, replacing any existing file atomically.
    /// On failure the temporary file is removed and an existing file at `path` is untouched,
    /// except when only the final fsync of the directory fails: the new file is then in
    /// place but may not survive a power loss, and the error says so by naming fsync.
    public static func write(_ tensors: [Tensor], metadata: [String: String], to path: String) throws(SafeTensorsError) {
        let layout = try self.layout(of: tensors, path: path)
        guard metadata[checksumKey] == nil else {
            throw .invalidRequest(path, "metadata key \(checksumKey) is reserved for the writer")
        }
        var fullMetadata = metadata
        fullMetadata[checksumKey] = "00000000"
        let header = HeaderEncoder(metadata: fullMetadata, tensors: layout, placeholderKey: checksumKey)

        let temporaryPath = temporaryPath(for: path)
        let file = try OpenFile.open(temporaryPath, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644,
                                     reportedPath: path)
        do throws(SafeTensorsError) {
            try withUnsafeBytes(of: UInt64(header.bytes.count).littleEndian) { prefix throws(SafeTensorsError) in
                try file.writeAll(prefix)
            }
            try header.bytes.span.withUnsafeBytes { bytes throws(SafeTensorsError) in try file.writeAll(bytes) }
            var checksum = crc32_z(0, nil, 0)
            for tensor in tensors {
                try tensor.withBytes { bytes throws(SafeTensorsError) in
                    checksum = crc32_z(checksum, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count)
                    try file.writeAll(bytes)
                }
            }
            // The header comes first but the checksum is known last: patch its placeholder.
            let digits = Array(hex(UInt32(checksum)).utf8)
            try digits.span.withUnsafeBytes { bytes throws(SafeTensorsError) in
                try file.writeAll(bytes, atOffset: 8 + header.placeholderOffset!)
            }
            try file.sync()
            try file.close()
            guard rename(temporaryPath, path) == 0 else {
                throw .systemCall("rename", path: path, operand: temporaryPath)
            }
        } catch {
            unlink(temporaryPath)
            throw error
        }
        // The rename is durable only once the directory entry is flushed too.
        let directory = try OpenFile.open(split(path).directory, flags: O_RDONLY | O_DIRECTORY, reportedPath: path)
        try directory.sync()
        try directory.close()
    }

    /// Checks the tensors and assigns them consecutive data offsets in the order given.
    private static func layout(of tensors: [Tensor], path: String) throws(SafeTensorsError) -> [TensorInfo] {
        var layout: [TensorInfo] = []
        var names = Set<String>()
        var offset = 0
        for tensor in tensors {
            guard tensor.name != metadataKey, names.insert(tensor.name).inserted else {
                throw .invalidRequest(path, "tensor name \"\(tensor.name)\" is reserved or used twice")
            }
            guard let count = elementCount(of: tensor.shape),
                  case let (needed, false) = count.multipliedReportingOverflow(by: tensor.dtype.size) else {
                throw .invalidRequest(path, "tensor \"\(tensor.name)\": shape \(describe(tensor.shape)) has a negative or too large dimension")
            }
            let givenCount = try tensor.withBytes { bytes in bytes.count }
            guard givenCount == needed else {
                throw .invalidRequest(path, "tensor \"\(tensor.name)\": \(givenCount) bytes given, "
                                          + "\(tensor.dtype.rawValue) \(describe(tensor.shape)) needs \(needed)")
            }
            layout.append(TensorInfo(name: tensor.name, dtype: tensor.dtype, shape: tensor.shape,
                                     dataOffsets: offset..<(offset + givenCount)))
            offset += givenCount
        }
        return layout
    }

    /// Directory and file name of a path; a bare name lives in ".".
    private static func split(_ path: String) -> (directory: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let directory = String(path[..<slash])
        return (directory.isEmpty ? "/" : directory, String(path[path.index(after: slash)...]))
    }
}

/// 8 lowercase hex digits.
func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 8 - digits.count) + digits
}
