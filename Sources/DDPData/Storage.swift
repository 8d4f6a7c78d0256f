import CZlib
import DDPSystem
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a dataset's bytes are, in the cache layout. The same layout serves the cache file
/// and in-memory data, so a dataset is read the same way whether it was mapped or decoded:
///
///     0   "DDPCACH2"                     8 bytes
///     8   count, channels, height, width, classes, key length   6 x UInt64, little-endian
///     56  checksum: CRC-32 of every byte of the file but these 8, UInt64, little-endian
///     64  key: what the cache was built from (paths, sizes, mtimes), zero-padded to 64
///         labels: count x Int32, zero-padded to 64
///         pixels: count x channels x height x width UInt8, sample-major, CHW
///
/// The computed offsets are valid once `problem` is nil: it checks every size for overflow.
struct Layout: Equatable {
    static let magic: [UInt8] = Array("DDPCACH2".utf8)
    static let checksumOffset = 56
    static let fixedHeaderBytes = 64

    var count: Int
    var channels: Int
    var height: Int
    var width: Int
    var classes: Int
    var key: [UInt8]

    var samplePixels: Int { channels * height * width }
    var labelsOffset: Int { align64(Layout.fixedHeaderBytes + key.count) }
    var pixelsOffset: Int { labelsOffset + align64(4 * count) }
    var byteCount: Int { pixelsOffset + count * samplePixels }
    var shapeText: String { "\(channels)x\(height)x\(width)" }

    private func align64(_ n: Int) -> Int { (n + 63) & ~63 }

    /// What makes this layout impossible, or nil: counts out of range (sample indices and
    /// labels are Int32), an empty sample, or a size that overflows Int.
    var problem: String? {
        if count < 0 { return "a negative sample count \(count)" }
        if count > Int(Int32.max) { return "\(count) samples is more than \(Int32.max) samples (sample indices are 32-bit)" }
        if channels < 1 || height < 1 || width < 1 { return "sample shape \(shapeText) is empty" }
        if classes < 1 || classes > Int(Int32.max) { return "classes \(classes) is not between 1 and \(Int32.max)" }
        if key.count > Int(Int32.max) { return "key length \(key.count) is too large" }
        // count, key.count <= Int32.max: the header and label sizes cannot overflow.
        guard let pixels = checkedProduct([channels, height, width, count]),
              pixels <= Int.max - (Layout.fixedHeaderBytes + 3 * 64 + key.count + 4 * count)
        else { return "\(count) samples of \(shapeText) is too large (the size in bytes overflows)" }
        return nil
    }

    func writeHeader(to base: UnsafeMutableRawPointer) {
        base.initializeMemory(as: UInt8.self, repeating: 0, count: pixelsOffset)
        for (i, byte) in Layout.magic.enumerated() { base.storeBytes(of: byte, toByteOffset: i, as: UInt8.self) }
        for (i, field) in [count, channels, height, width, classes, key.count].enumerated() {
            base.storeBytes(of: UInt64(field).littleEndian, toByteOffset: 8 + 8 * i, as: UInt64.self)
        }
        for (i, byte) in key.enumerated() {
            base.storeBytes(of: byte, toByteOffset: Layout.fixedHeaderBytes + i, as: UInt8.self)
        }
    }

    /// CRC-32 of the `byteCount` bytes at `base`, leaving out the checksum field itself.
    static func checksum(_ base: UnsafeRawPointer, byteCount: Int) -> UInt64 {
        let bytes = base.assumingMemoryBound(to: UInt8.self)
        let head = crc32_z(0, bytes, z_size_t(checksumOffset))
        return UInt64(crc32_z(head, bytes + fixedHeaderBytes, z_size_t(byteCount - fixedHeaderBytes)))
    }
}

/// What was found where a cache should be.
enum CacheLookup {
    case missing
    case unusable(Unusable)
    case mapped(Storage)
}

/// Why a cache file cannot be used.
enum Unusable: Error {
    /// Built from other files (or by another version): replaced without comment.
    case stale
    /// Damaged or not a cache (the reason): rebuilt, with a warning.
    case damaged(String)
}

extension Layout {
    /// The layout stored in the `byteCount` bytes at `base` after its magic number, every
    /// field checked against the type's range and the file's size.
    static func read(_ base: UnsafeRawPointer, byteCount: Int) throws(Unusable) -> Layout {
        let names = ["count", "channels", "height", "width", "classes", "key length"]
        var fields: [Int] = []
        for (i, name) in names.enumerated() {
            let raw = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 8 + 8 * i, as: UInt64.self))
            guard raw <= UInt64(Int.max) else { throw .damaged("header field \(name) is \(raw), out of range") }
            fields.append(Int(raw))
        }
        guard fields[5] <= byteCount - fixedHeaderBytes else {
            throw .damaged("header: key length \(fields[5]) is more than the file's \(byteCount) bytes hold")
        }
        let layout = Layout(count: fields[0], channels: fields[1], height: fields[2], width: fields[3], classes: fields[4],
                            key: Array(UnsafeRawBufferPointer(start: base + fixedHeaderBytes, count: fields[5])))
        if let problem = layout.problem { throw .damaged("header: \(problem)") }
        guard layout.byteCount == byteCount else {
            throw .damaged("header says \(layout.count) samples of \(layout.shapeText) (\(layout.byteCount) bytes) but the file holds \(byteCount) bytes")
        }
        return layout
    }
}

/// Memory holding one dataset in the cache layout: a read-only map of a cache file, or an
/// allocation. Freed with the last dataset that uses it.
final class Storage {
    let base: UnsafeMutableRawPointer
    let layout: Layout
    let isMapped: Bool

    /// Zeroed memory for `layout`, header written; the caller fills labels and pixels.
    /// Checks first that the layout's sizes do not overflow and fit in the memory available;
    /// the error is about `path` and says that `what` (e.g. "10 images of 28x28") need it.
    init(allocating layout: Layout, path: String, what: String) throws {
        if let problem = layout.problem { throw DataError(path, "\(what): \(problem)") }
        try MemoryBudget.check(layout.byteCount, for: what, path: path)
        var raw: UnsafeMutableRawPointer?
        let code = posix_memalign(&raw, 64, max(layout.byteCount, 1))
        guard code == 0, let raw else {
            throw DataError(path, "\(what): posix_memalign of \(layout.byteCount) bytes failed: \(String(cString: strerror(code))) (errno \(code))")
        }
        base = raw
        self.layout = layout
        isMapped = false
        layout.writeHeader(to: base)
        (base + layout.pixelsOffset).initializeMemory(as: UInt8.self, repeating: 0, count: layout.byteCount - layout.pixelsOffset)
    }

    private init(mapped base: UnsafeMutableRawPointer, layout: Layout) {
        self.base = base
        self.layout = layout
        isMapped = true
    }

    /// Maps the cache at `path` read-only if it exists, was built from `key`, and passes
    /// every check: header fields in range and consistent with the file's size, checksum,
    /// labels in 0..<classes. Never follows a symbolic link.
    static func map(_ path: String, key: [UInt8]) -> CacheLookup {
        let (fd, byteCount): (Int32, Int)
        switch RegularFile.open(path, followingLinks: false) {
        case .success(let opened): (fd, byteCount) = opened
        case .failure(.failed(let failure)) where failure.code == ENOENT: return .missing
        case .failure(.failed(let failure)) where failure.code == ELOOP:
            return .unusable(.damaged("is a symbolic link, which a cache never is: not followed"))
        case .failure(.failed(let failure)): return .unusable(.damaged(describe(failure)))
        case .failure(.notRegular(let mode)): return .unusable(.damaged(notARegularFileProblem(mode)))
        case .failure(.tooLarge): preconditionFailure("the cache is opened without a size limit")
        }
        defer { close(fd) }
        guard byteCount >= Layout.fixedHeaderBytes else {
            return .unusable(.damaged("\(byteCount) bytes is shorter than the \(Layout.fixedHeaderBytes)-byte cache header"))
        }
        guard let base = mmap(nil, byteCount, PROT_READ, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            return .unusable(.damaged(describe(SystemCallFailure("mmap"))))
        }
        do {
            return .mapped(Storage(mapped: base, layout: try check(base, byteCount: byteCount, key: key)))
        } catch {
            munmap(base, byteCount)
            return .unusable(error)
        }
    }

    private static func check(_ base: UnsafeRawPointer, byteCount: Int, key: [UInt8]) throws(Unusable) -> Layout {
        let magic = Array(UnsafeRawBufferPointer(start: base, count: 8))
        guard magic == Layout.magic else {
            // Another version's cache ("DDPCACH1") is stale, not damaged.
            throw magic.starts(with: Layout.magic.dropLast()) ? .stale : .damaged("not a ddptrain cache (wrong magic number)")
        }
        let layout = try Layout.read(base, byteCount: byteCount)
        guard layout.key == key else { throw .stale }
        let stored = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: Layout.checksumOffset, as: UInt64.self))
        let computed = Layout.checksum(base, byteCount: byteCount)
        guard stored == computed else {
            throw .damaged("checksum mismatch: the header says \(hex(stored)), the content gives \(hex(computed))")
        }
        let labels = (base + layout.labelsOffset).assumingMemoryBound(to: Int32.self)
        for i in 0..<layout.count where labels[i] < 0 || Int(labels[i]) >= layout.classes {
            throw .damaged("label \(labels[i]) at index \(i) is out of range 0..\(layout.classes - 1)")
        }
        return layout
    }

    /// Writes these bytes, with their checksum, to `path` atomically (DDPSystem's AtomicFile:
    /// a new temporary file of an unpredictable name, created exclusively, never through a
    /// link, flushed, then renamed over `path`). Ranks (or threads) racing to build the same cache each rename
    /// an identical file, and nobody ever sees a half-written one.
    func save(to path: String) throws {
        precondition(!isMapped, "a mapped cache is already saved")
        base.storeBytes(of: Layout.checksum(base, byteCount: layout.byteCount).littleEndian,
                        toByteOffset: Layout.checksumOffset, as: UInt64.self)
        // Errors creating the folder are left for the temporary file's creation to report.
        makeDirectories(splitPath(path).directory)
        try AtomicFile.replace(path, failure: { failure in
            DataError.systemCall(failure, path: failure.path ?? path, doing: "cannot write the cache")
        }) { descriptor, temporary throws(DataError) in
            if let failure = writeAll(descriptor, UnsafeRawBufferPointer(start: base, count: layout.byteCount)) {
                let code = failure.code == 0 ? ENOSPC : failure.code  // a write that made no progress
                throw DataError.systemCall(SystemCallFailure(failure.call, code: code), path: temporary, doing: "cannot write the cache")
            }
        }
    }

    deinit {
        if isMapped { munmap(base, layout.byteCount) } else { free(base) }
    }
}

private func hex(_ x: UInt64) -> String { "0x" + String(x, radix: 16) }
