import CZlib
import DDPSystem
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A data file read in bounded pieces: its bytes, or the inflated stream of a gzip file
/// (magic 1f 8b). Nothing is read before the caller knows how much to expect: a reader
/// learns the size from the header, checks it against `diskBytes` and the memory available,
/// reads exactly that much, then checks (with one more byte) that nothing follows. So a
/// sparse giant is refused from its size, and a gzip bomb is inflated only as far as its
/// header announces.
final class DataFile {
    let path: String
    /// The size on disk (fstat).
    let diskBytes: Int
    private let fd: Int32
    private let gz: gzFile?
    /// Bytes delivered so far (inflated ones, for gzip).
    private(set) var position = 0

    var isGzip: Bool { gz != nil }

    /// deflate's largest compression ratio (zlib's documentation: 1032:1).
    static let maximumInflation = 1032

    private init(path: String, fd: Int32, diskBytes: Int, gz: gzFile?) {
        self.path = path
        self.fd = fd
        self.diskBytes = diskBytes
        self.gz = gz
    }

    /// Opens the regular file at `path`; gzip if its first two bytes say so.
    static func open(_ path: String) throws -> DataFile {
        let (fd, diskBytes): (Int32, Int)
        switch RegularFile.open(path) {
        case .success(let opened): (fd, diskBytes) = opened
        case .failure(let problem): throw DataError.opening(path, problem)
        }
        var magic: (UInt8, UInt8) = (0, 0)
        let n = pread(fd, &magic, 2, 0)
        guard n >= 0 else {
            let error = DataError.systemCall("pread", path: path, doing: "cannot read")
            close(fd)
            throw error
        }
        guard n == 2, magic == (0x1f, 0x8b) else { return DataFile(path: path, fd: fd, diskBytes: diskBytes, gz: nil) }
        // zlib reads through its own descriptor, closed by gzclose.
        let gzipFD = dup(fd)
        guard gzipFD >= 0 else {
            let error = DataError.systemCall("dup", path: path, doing: "cannot open")
            close(fd)
            throw error
        }
        guard let gz = gzdopen(gzipFD, "rb") else {
            let error = DataError.systemCall("gzdopen", path: path, doing: "cannot open")
            close(gzipFD)
            close(fd)
            throw error
        }
        gzbuffer(gz, 1 << 18)
        return DataFile(path: path, fd: fd, diskBytes: diskBytes, gz: gz)
    }

    deinit {
        if let gz { gzclose(gz) }
        close(fd)
    }

    /// Reads up to `count` bytes into `buffer`: fewer only where the data ends.
    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
        var done = 0
        while done < count {
            let want = min(count - done, 1 << 30)
            let n: Int
            if let gz {
                let got = gzread(gz, buffer + done, UInt32(want))
                // gzread returns what it inflated before a cut-off stream ends, then 0 with
                // the error set: an end with an error is a failure too.
                var code: Int32 = Z_OK
                let message = got <= 0 ? String(cString: gzerror(gz, &code)) : ""
                if got < 0 || code != Z_OK {
                    if code == Z_ERRNO { throw DataError.systemCall("gzread", path: path, doing: "cannot read") }
                    throw DataError(path, "cannot read: gzread() failed: \(message) (zlib error \(code))")
                }
                n = Int(got)
            } else {
                let got = pread(fd, buffer + done, want, off_t(position))
                if got < 0 {
                    if errno == EINTR { continue }
                    throw DataError.systemCall("pread", path: path, doing: "cannot read")
                }
                n = got
            }
            if n == 0 { break }
            done += n
            position += n
        }
        return done
    }

    /// Up to `count` bytes, as an array.
    func read(upTo count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = try bytes.withUnsafeMutableBytes { try read(into: $0.baseAddress!, count: count) }
        return Array(bytes.prefix(n))
    }

    /// Fails unless the file can hold `headerBytes + dataBytes`, which `says` describes (e.g.
    /// "10 images of 4x4"): exactly, for a plain file; within deflate's largest ratio, for gzip.
    func checkHolds(headerBytes: Int, dataBytes: Int, says: String) throws {
        let (expected, overflow) = headerBytes.addingReportingOverflow(dataBytes)
        guard !overflow else { throw DataError(path, "header says \(says), too large") }
        if isGzip {
            let (largest, overflow) = diskBytes.multipliedReportingOverflow(by: DataFile.maximumInflation)
            if !overflow && expected > largest {
                throw DataError(path, "truncated: header says \(says) (\(expected) bytes with the header) but a gzip file of \(diskBytes) bytes inflates to at most \(largest) bytes")
            }
        } else if diskBytes < expected {
            throw DataError(path, "truncated: header says \(says) (\(expected) bytes with the header) but the file holds \(diskBytes) bytes")
        } else if diskBytes > expected {
            throw DataError(path, "\(diskBytes - expected) bytes of trailing data after the \(says) the header announces")
        }
    }

    /// Reads exactly `count` bytes into `buffer`, the data that `says` announces after a
    /// header of `headerBytes`, and checks that nothing follows (reading at most one byte more).
    func readAll(into buffer: UnsafeMutableRawPointer, count: Int, headerBytes: Int, says: String) throws {
        let n = try read(into: buffer, count: count)
        if n < count {
            throw DataError(path, "truncated: header says \(says) (\(headerBytes + count) bytes with the header) but the file holds \(headerBytes + n) bytes")
        }
        try checkAtEnd(says: says)
    }

    /// Fails if any data follows what was read: the `says` that `announcer` announces.
    func checkAtEnd(says: String, announcer: String = "the header") throws {
        var extra: UInt8 = 0
        guard try read(into: &extra, count: 1) == 1 else { return }
        if isGzip {
            throw DataError(path, "trailing data after the \(says) \(announcer) announces: the gzip stream inflates to more than \(position - 1) bytes (stopped there)")
        }
        throw DataError(path, "trailing data after the \(says) \(announcer) announces: the file grew to more than \(position - 1) bytes while it was read")
    }

    /// The size the gzip trailer gives (ISIZE: the inflated size of the last member, mod 2^32).
    func gzipTrailerSize() throws -> Int {
        guard diskBytes >= 18 else { throw DataError(path, "truncated: a gzip file of \(diskBytes) bytes is shorter than a gzip header and trailer") }
        var trailer: UInt32 = 0
        let n = pread(fd, &trailer, 4, off_t(diskBytes - 4))
        guard n >= 0 else { throw DataError.systemCall("pread", path: path, doing: "cannot read") }
        guard n == 4 else { throw DataError(path, "truncated: the gzip trailer cannot be read (the file shrank?)") }
        return Int(UInt32(littleEndian: trailer))
    }
}

// MARK: IDX (MNIST, Fashion-MNIST)

/// IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of
/// dimensions. Dimensions follow as big-endian UInt32, then the data.
enum IDX {
    static let images: UInt32 = 0x0000_0803
    static let labels: UInt32 = 0x0000_0801

    /// The dimensions in the header of the IDX file of type `magic`, and the header's size.
    static func header(_ file: DataFile, magic: UInt32, what: String) throws -> (dims: [Int], headerBytes: Int) {
        let path = file.path
        let headerBytes = 4 + 4 * Int(magic & 0xff)
        let bytes = try file.read(upTo: headerBytes)
        if bytes.isEmpty { throw DataError(path, "empty file") }
        if bytes.count < 2 || bytes[0] != 0 || bytes[1] != 0 { throw DataError(path, "not a gzip or IDX file") }
        guard bytes.count == headerBytes else {
            throw DataError(path, "truncated: \(bytes.count) bytes is shorter than the \(headerBytes)-byte IDX header")
        }
        let found = bigEndian32(bytes, at: 0)
        guard found == magic else {
            throw DataError(path, "wrong magic number \(hex(found)), expected \(hex(magic)) (IDX unsigned-byte \(what))")
        }
        return ((0..<Int(magic & 0xff)).map { Int(bigEndian32(bytes, at: 4 + 4 * $0)) }, headerBytes)
    }

    static func decode(images: String, labels: String, classes: Int, key: [UInt8]) throws -> Storage {
        let imageFile = try DataFile.open(images)
        let (imageDims, imageHeader) = try header(imageFile, magic: IDX.images, what: "images")
        let (count, rows, cols) = (imageDims[0], imageDims[1], imageDims[2])
        let imagesSay = "\(count) images of \(rows)x\(cols)"
        guard rows > 0, cols > 0 else { throw DataError(images, "image size \(rows)x\(cols) is empty") }
        guard count > 0 else { throw DataError(images, "header says 0 images: the dataset is empty") }
        guard let pixelBytes = checkedProduct([count, rows, cols]) else { throw DataError(images, "header says \(imagesSay), too large") }
        try imageFile.checkHolds(headerBytes: imageHeader, dataBytes: pixelBytes, says: imagesSay)

        let labelFile = try DataFile.open(labels)
        let (labelDims, labelHeader) = try header(labelFile, magic: IDX.labels, what: "labels")
        let labelsSay = "\(labelDims[0]) labels"
        try labelFile.checkHolds(headerBytes: labelHeader, dataBytes: labelDims[0], says: labelsSay)
        guard labelDims[0] == count else {
            throw DataError(images, "holds \(count) images but \(labels) holds \(labelDims[0]) labels")
        }
        guard classes >= 1 && classes <= Int(Int32.max) else {
            throw DataError(labels, "classes \(classes) is not between 1 and \(Int32.max)")
        }

        let storage = try Storage(allocating: Layout(count: count, channels: 1, height: rows, width: cols, classes: classes, key: key),
                                  path: images, what: imagesSay)
        try imageFile.readAll(into: storage.base + storage.layout.pixelsOffset, count: pixelBytes,
                              headerBytes: imageHeader, says: imagesSay)
        var labelBytes = [UInt8](repeating: 0, count: count)
        try labelBytes.withUnsafeMutableBytes {
            try labelFile.readAll(into: $0.baseAddress!, count: count, headerBytes: labelHeader, says: labelsSay)
        }
        let labelsOut = (storage.base + storage.layout.labelsOffset).assumingMemoryBound(to: Int32.self)
        for (i, label) in labelBytes.enumerated() {
            guard Int(label) < classes else { throw DataError(labels, "label \(label) at index \(i) is out of range 0..\(classes - 1)") }
            labelsOut[i] = Int32(label)
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
/// green and blue planes in turn, which is CHW). A batch has no header: its size is the
/// file's (plain) or the gzip trailer's (gzip, so under 4 GiB), and must be whole records.
enum CIFAR10 {
    static let pixelBytes = 3 * 32 * 32
    static let recordBytes = 1 + pixelBytes
    static let classes = 10
    /// Records read at a time (3 MB).
    static let chunkRecords = 1024

    static func decode(batches: [String], key: [UInt8]) throws -> Storage {
        var files: [(file: DataFile, records: Int)] = []
        var count = 0
        for path in batches {
            let file = try DataFile.open(path)
            let bytes = file.isGzip ? try file.gzipTrailerSize() : file.diskBytes
            if bytes == 0 { throw DataError(path, "empty file") }
            let size = file.isGzip ? "size \(bytes) bytes (gzip trailer)" : "size \(bytes) bytes"
            guard bytes % recordBytes == 0 else {
                throw DataError(path, "\(size) is not a multiple of the \(recordBytes)-byte CIFAR-10 record (1 label byte + \(pixelBytes) pixel bytes)")
            }
            try file.checkHolds(headerBytes: 0, dataBytes: bytes, says: "\(bytes / recordBytes) records")
            files.append((file, bytes / recordBytes))
            count += bytes / recordBytes  // each at most Int.max / 3073: no overflow for any realistic number of batches
        }
        let storage = try Storage(allocating: Layout(count: count, channels: 3, height: 32, width: 32, classes: classes, key: key),
                                  path: batches[0], what: "\(count) samples of 3x32x32")
        let labels = (storage.base + storage.layout.labelsOffset).assumingMemoryBound(to: Int32.self)
        let pixels = (storage.base + storage.layout.pixelsOffset).assumingMemoryBound(to: UInt8.self)
        let chunk = UnsafeMutablePointer<UInt8>.allocate(capacity: chunkRecords * recordBytes)
        defer { chunk.deallocate() }
        var sample = 0
        for (file, records) in files {
            let says = "\(records) records"
            var record = 0
            while record < records {
                let n = min(chunkRecords, records - record)
                let got = try file.read(into: chunk, count: n * recordBytes)
                if got < n * recordBytes {
                    throw DataError(file.path, "truncated: \(says) (\(records * recordBytes) bytes) expected but the file holds \(file.position) bytes")
                }
                for r in 0..<n {
                    let label = Int(chunk[r * recordBytes])
                    guard label < classes else {
                        throw DataError(file.path, "label \(label) at record \(record + r) is out of range 0..\(classes - 1)")
                    }
                    labels[sample] = Int32(label)
                    (pixels + sample * pixelBytes).update(from: chunk + r * recordBytes + 1, count: pixelBytes)
                    sample += 1
                }
                record += n
            }
            try file.checkAtEnd(says: says, announcer: file.isGzip ? "the gzip trailer" : "the file size")
        }
        return storage
    }
}
