import CZlib
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The whole content of a file, gunzipped if it starts with the gzip magic (1f 8b); zlib's
/// gzread passes other files through unchanged.
func readFile(_ path: String) throws -> [UInt8] {
    guard let file = gzopen(path, "rb") else {
        throw DataError(path, errno == ENOENT ? "file not found" : "cannot open: \(errorText())")
    }
    defer { gzclose(file) }
    gzbuffer(file, 1 << 18)
    var content: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = chunk.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32($0.count)) }
        if n < 0 {
            var code: Int32 = 0
            throw DataError(path, "cannot read: \(String(cString: gzerror(file, &code)))")
        }
        if n == 0 { return content }
        content.append(contentsOf: chunk[0..<Int(n)])
    }
}

// MARK: IDX (MNIST, Fashion-MNIST)

/// IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of
/// dimensions. Dimensions follow as big-endian UInt32, then the data.
enum IDX {
    static let images: UInt32 = 0x0000_0803
    static let labels: UInt32 = 0x0000_0801

    /// The dimensions in the header of an IDX file of type `magic`, and where its data starts.
    static func header(_ bytes: [UInt8], path: String, magic: UInt32, what: String) throws -> (dims: [Int], dataOffset: Int) {
        if bytes.isEmpty { throw DataError(path, "empty file") }
        if bytes.count < 2 || bytes[0] != 0 || bytes[1] != 0 { throw DataError(path, "not a gzip or IDX file") }
        let headerBytes = 4 + 4 * Int(magic & 0xff)
        guard bytes.count >= headerBytes else {
            throw DataError(path, "truncated: \(bytes.count) bytes is shorter than the \(headerBytes)-byte IDX header")
        }
        let found = bigEndian32(bytes, at: 0)
        guard found == magic else {
            throw DataError(path, "wrong magic number \(hex(found)), expected \(hex(magic)) (IDX unsigned-byte \(what))")
        }
        return ((0..<Int(magic & 0xff)).map { Int(bigEndian32(bytes, at: 4 + 4 * $0)) }, headerBytes)
    }

    /// Fails unless the file holds exactly `dataBytes` after its header.
    static func checkSize(_ bytes: [UInt8], path: String, dataOffset: Int, dataBytes: Int, says: String) throws {
        let expected = dataOffset + dataBytes
        if bytes.count < expected {
            throw DataError(path, "truncated: header says \(says) (\(expected) bytes with the header) but the file holds \(bytes.count) bytes")
        }
        if bytes.count > expected {
            throw DataError(path, "\(bytes.count - expected) bytes of trailing data after the \(says) the header announces")
        }
    }

    static func decode(images: String, labels: String, classes: Int, key: [UInt8]) throws -> Storage {
        let imageBytes = try readFile(images)
        let (imageDims, pixelsOffset) = try header(imageBytes, path: images, magic: IDX.images, what: "images")
        let (count, rows, cols) = (imageDims[0], imageDims[1], imageDims[2])
        guard rows > 0, cols > 0 else { throw DataError(images, "image size \(rows)x\(cols) is empty") }
        let (imagePixels, overflow1) = rows.multipliedReportingOverflow(by: cols)
        let (pixelBytes, overflow2) = count.multipliedReportingOverflow(by: imagePixels)
        guard !overflow1, !overflow2 else { throw DataError(images, "header says \(count) images of \(rows)x\(cols), too large") }
        try checkSize(imageBytes, path: images, dataOffset: pixelsOffset, dataBytes: pixelBytes,
                      says: "\(count) images of \(rows)x\(cols)")

        let labelBytes = try readFile(labels)
        let (labelDims, labelsOffset) = try header(labelBytes, path: labels, magic: IDX.labels, what: "labels")
        try checkSize(labelBytes, path: labels, dataOffset: labelsOffset, dataBytes: labelDims[0], says: "\(labelDims[0]) labels")
        guard labelDims[0] == count else {
            throw DataError(images, "holds \(count) images but \(labels) holds \(labelDims[0]) labels")
        }

        let storage = Storage(allocating: Layout(count: count, channels: 1, height: rows, width: cols, classes: classes, key: key))
        let labelsOut = (storage.base + storage.layout.labelsOffset).assumingMemoryBound(to: Int32.self)
        for i in 0..<count {
            let label = Int(labelBytes[labelsOffset + i])
            guard label < classes else { throw DataError(labels, "label \(label) at index \(i) is out of range 0..\(classes - 1)") }
            labelsOut[i] = Int32(label)
        }
        imageBytes.withUnsafeBytes {
            (storage.base + storage.layout.pixelsOffset).copyMemory(from: $0.baseAddress! + pixelsOffset, byteCount: pixelBytes)
        }
        return storage
    }

    private static func bigEndian32(_ bytes: [UInt8], at i: Int) -> UInt32 {
        UInt32(bytes[i]) << 24 | UInt32(bytes[i + 1]) << 16 | UInt32(bytes[i + 2]) << 8 | UInt32(bytes[i + 3])
    }

    private static func hex(_ x: UInt32) -> String {
        let digits = String(x, radix: 16)
        return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
    }
}

// MARK: CIFAR-10 binary

/// CIFAR-10 binary batches: records of one label byte then 3072 pixel bytes (32x32, the red,
/// green and blue planes in turn, which is CHW).
enum CIFAR10 {
    static let pixelBytes = 3 * 32 * 32
    static let recordBytes = 1 + pixelBytes
    static let classes = 10

    static func decode(batches: [String], key: [UInt8]) throws -> Storage {
        let contents = try batches.map { path in
            let bytes = try readFile(path)
            if bytes.isEmpty { throw DataError(path, "empty file") }
            guard bytes.count % recordBytes == 0 else {
                throw DataError(path, "size \(bytes.count) bytes is not a multiple of the \(recordBytes)-byte CIFAR-10 record (1 label byte + \(pixelBytes) pixel bytes)")
            }
            return bytes
        }
        let count = contents.reduce(0) { $0 + $1.count / recordBytes }
        let storage = Storage(allocating: Layout(count: count, channels: 3, height: 32, width: 32, classes: classes, key: key))
        let labels = (storage.base + storage.layout.labelsOffset).assumingMemoryBound(to: Int32.self)
        let pixels = (storage.base + storage.layout.pixelsOffset).assumingMemoryBound(to: UInt8.self)
        var sample = 0
        for (path, bytes) in zip(batches, contents) {
            try bytes.withUnsafeBufferPointer { file in
                for record in 0..<(file.count / recordBytes) {
                    let label = Int(file[record * recordBytes])
                    guard label < classes else {
                        throw DataError(path, "label \(label) at record \(record) is out of range 0..\(classes - 1)")
                    }
                    labels[sample] = Int32(label)
                    (pixels + sample * pixelBytes).update(from: file.baseAddress! + record * recordBytes + 1, count: pixelBytes)
                    sample += 1
                }
            }
        }
        return storage
    }
}
