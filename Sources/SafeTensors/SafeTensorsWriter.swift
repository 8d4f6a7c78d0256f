#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CZlib

/// Writes safetensors files atomically (`AtomicFile`: a new temporary file, created
/// exclusively under a random name, flushed and renamed over the final name).
///
/// Tensors are stored in the order given (for a checkpoint, the order of the flat parameter
/// buffer, so the data section is one sequential pass over it); Python's safetensors and
/// PyTorch do not care about the order. The data section starts 8-byte aligned; a caller
/// that wants every tensor naturally aligned for zero-copy readers lists 8-byte dtypes
/// before 4-byte ones, and so on (the reference writer sorts by dtype for this).
///
/// The metadata always carries a CRC-32 (zlib's) of the whole file under `checksumKey`, as
/// 8 lowercase hex digits: computed over all the file's bytes (length prefix, header, data)
/// with those 8 digits themselves read as "00000000". So the header (metadata, tensor
/// names, shapes, offsets) is covered as well as the data. The key and its value must
/// appear once in the header as the writer spells them, `"ddptrain.file_crc32":"<digits>"`,
/// which is how a reader finds the digits to put the placeholder back. Files of older
/// writers carry `dataChecksumKey` instead, the CRC-32 of the data section alone; readers
/// still check it.
public enum SafeTensorsWriter {
    /// Metadata key of the whole file's CRC-32 (see above).
    public static let checksumKey = "ddptrain.file_crc32"
    /// Metadata key of the data section's CRC-32, written by older versions (checkpoint
    /// format version 1); read, no longer written.
    public static let dataChecksumKey = "ddptrain.data_crc32"
    /// What the checksum's digits are taken as while the CRC is computed.
    static let checksumPlaceholder = "00000000"

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

    /// Writes `tensors` and `metadata` to `path`, replacing any existing file atomically
    /// (see `AtomicFile` for what a failure leaves behind).
    public static func write(_ tensors: [Tensor], metadata: [String: String], to path: String) throws(SafeTensorsError) {
        let layout = try self.layout(of: tensors, path: path)
        for key in [checksumKey, dataChecksumKey] where metadata[key] != nil {
            throw .invalidRequest(path, "metadata key \(key) is reserved for the writer")
        }
        var fullMetadata = metadata
        fullMetadata[checksumKey] = checksumPlaceholder
        let header = HeaderEncoder(metadata: fullMetadata, tensors: layout, placeholderKey: checksumKey)

        try AtomicFile.replace(path) { file throws(SafeTensorsError) in
            var checksum = crc32_z(0, nil, 0)
            func write(_ bytes: UnsafeRawBufferPointer) throws(SafeTensorsError) {
                checksum = crc32_z(checksum, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count)
                try file.writeAll(bytes)
            }
            try withUnsafeBytes(of: UInt64(header.bytes.count).littleEndian) { prefix throws(SafeTensorsError) in
                try write(prefix)
            }
            try header.bytes.span.withUnsafeBytes { bytes throws(SafeTensorsError) in try write(bytes) }
            for tensor in tensors {
                try tensor.withBytes { bytes throws(SafeTensorsError) in try write(bytes) }
            }
            // The header comes first but the checksum is known last: patch its placeholder.
            let digits = Array(hex(UInt32(checksum)).utf8)
            try digits.span.withUnsafeBytes { bytes throws(SafeTensorsError) in
                try file.writeAll(bytes, atOffset: 8 + header.placeholderOffset!)
            }
        }
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
}

/// 8 lowercase hex digits.
func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 8 - digits.count) + digits
}
