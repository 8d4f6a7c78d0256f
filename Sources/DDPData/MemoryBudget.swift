#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How much memory a dataset may take: checked before anything is allocated, so that a
/// header or an option asking for more fails with an error instead of the kernel's OOM killer.
enum MemoryBudget {
    /// MemAvailable from /proc/meminfo (free memory plus what the kernel can reclaim without
    /// swapping); physical memory where that cannot be read.
    static func availableBytes() -> Int {
        if let available = memAvailable() { return available }
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, pageSize > 0 else { return Int.max }
        let (bytes, overflow) = pages.multipliedReportingOverflow(by: pageSize)
        return overflow ? Int.max : bytes
    }

    static var source: String {
        memAvailable() != nil ? "MemAvailable in /proc/meminfo" : "physical memory"
    }

    /// Fails unless `bytes` fit in the memory available now. `what` says what needs them.
    static func check(_ bytes: Int, for what: String, path: String) throws {
        let available = availableBytes()
        if bytes > available {
            throw DataError(path, "\(what) need \(bytes) bytes of memory, more than the \(available) bytes available (\(source))")
        }
    }

    private static func memAvailable() -> Int? {
        let fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 16384)  // the file is ~1.5 KB; MemAvailable is near its top
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        let text = String(decoding: buffer[0..<n], as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }) else { return nil }
        let fields = line.split(separator: " ")
        guard fields.count == 3, fields[2] == "kB", let kibibytes = Int(fields[1]) else { return nil }
        let (bytes, overflow) = kibibytes.multipliedReportingOverflow(by: 1024)
        return overflow ? nil : bytes
    }
}
