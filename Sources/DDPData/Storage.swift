#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a dataset's bytes are, in the cache layout. The same layout serves the cache file
/// and in-memory data, so a dataset is read the same way whether it was mapped or decoded:
///
///     0   "DDPCACH1"                     8 bytes
///     8   count, channels, height, width, classes, key length   6 x UInt64, little-endian
///     56  key: what the cache was built from (paths, sizes, mtimes), zero-padded to 64
///         labels: count x Int32, zero-padded to 64
///         pixels: count x channels x height x width UInt8, sample-major, CHW
struct Layout: Equatable {
    static let magic: [UInt8] = Array("DDPCACH1".utf8)
    static let fixedHeaderBytes = 56

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

    private func align64(_ n: Int) -> Int { (n + 63) & ~63 }

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
}

extension Layout {
    /// The layout stored at `base`, or nil if these `byteCount` bytes do not hold one.
    init?(reading base: UnsafeRawPointer, byteCount: Int) {
        guard byteCount >= Layout.fixedHeaderBytes,
              (0..<8).allSatisfy({ base.load(fromByteOffset: $0, as: UInt8.self) == Layout.magic[$0] })
        else { return nil }
        let fields = (0..<6).map {
            Int(truncatingIfNeeded: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 8 + 8 * $0, as: UInt64.self)))
        }
        // Sizes are checked in floating point first, so that a damaged header cannot overflow.
        let pixelBytes = Double(fields[0]) * Double(fields[1]) * Double(fields[2]) * Double(fields[3])
        guard fields.allSatisfy({ $0 >= 0 }),
              Double(Layout.fixedHeaderBytes) + Double(fields[5]) + 4 * Double(fields[0]) + pixelBytes <= Double(byteCount)
        else { return nil }
        let keyStart = base + Layout.fixedHeaderBytes
        self.init(count: fields[0], channels: fields[1], height: fields[2], width: fields[3], classes: fields[4],
                  key: Array(UnsafeRawBufferPointer(start: keyStart, count: fields[5])))
        guard self.byteCount == byteCount else { return nil }
    }
}

/// Memory holding one dataset in the cache layout: a read-only map of a cache file, or an
/// allocation. Freed with the last dataset that uses it.
final class Storage {
    let base: UnsafeMutableRawPointer
    let layout: Layout
    let isMapped: Bool

    /// Zeroed memory for `layout`, header written; the caller fills labels and pixels.
    init(allocating layout: Layout) {
        base = UnsafeMutableRawPointer.allocate(byteCount: layout.byteCount, alignment: 64)
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

    /// Maps the cache at `path` read-only if it exists and was built from `key`; nil if it is
    /// missing, damaged or stale.
    static func map(_ path: String, key: [UInt8]) -> Storage? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_size >= Layout.fixedHeaderBytes else { return nil }
        let byteCount = Int(info.st_size)
        guard let base = mmap(nil, byteCount, PROT_READ, MAP_SHARED, fd, 0), base != MAP_FAILED else { return nil }
        guard let layout = Layout(reading: base, byteCount: byteCount), layout.key == key else {
            munmap(base, byteCount)
            return nil
        }
        return Storage(mapped: base, layout: layout)
    }

    /// Writes these bytes to `path` atomically: a temporary name unique to this host,
    /// process and call, flushed, then renamed. Ranks (or threads) racing to build the same
    /// cache each rename an identical file, and nobody ever sees a half-written one.
    func save(to path: String) throws {
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        makeDirectories(directory)
        var template = Array("\(path).tmp.\(hostName()).\(getpid()).XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        let temporary = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        guard fd >= 0 else { throw DataError(temporary, "cannot create cache file: \(errorText())") }
        fchmod(fd, 0o644)  // mkstemp makes it owner-only; a cache is fine for anyone to read
        var written = 0
        while written < layout.byteCount {
            let n = write(fd, base + written, layout.byteCount - written)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let reason = errorText()
                close(fd); unlink(temporary)
                throw DataError(temporary, "cannot write cache file: \(reason)")
            }
            written += n
        }
        let flushed = fsync(fd) == 0
        let reason = errorText()
        close(fd)
        guard flushed else { unlink(temporary); throw DataError(temporary, "cannot flush cache file: \(reason)") }
        guard rename(temporary, path) == 0 else {
            let reason = errorText()
            unlink(temporary)
            throw DataError(path, "cannot rename the cache into place: \(reason)")
        }
    }

    deinit {
        if isMapped { munmap(base, layout.byteCount) } else { base.deallocate() }
    }
}

/// `mkdir -p`: errors are left for the open() that follows to report.
private func makeDirectories(_ path: String) {
    var prefix = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
        prefix += "/" + component
        mkdir(prefix, 0o755)
    }
}

private func hostName() -> String {
    var name = [CChar](repeating: 0, count: 256)
    guard gethostname(&name, name.count - 1) == 0 else { return "host" }
    return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func errorText() -> String { String(cString: strerror(errno)) }
