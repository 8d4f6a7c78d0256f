#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The memory the kernel says it can give without swapping, for the checks that refuse a
/// dataset or a model too large for the machine before anything is allocated (instead of
/// the OOM killer or a failed allocation ending the process).
public enum MemoryInfo {
    /// MemAvailable of /proc/meminfo (free memory plus what the kernel can reclaim),
    /// lowered to the cgroup's memory.max less its usage when that is smaller; nil when
    /// neither can be read.
    public static func availableBytes() -> Int? {
        var result: Int?
        if let text = smallFile("/proc/meminfo"),
           let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }) {
            let fields = line.split(separator: " ")
            if fields.count == 3, fields[2] == "kB", let kibibytes = Int(fields[1]),
               case let (bytes, false) = kibibytes.multipliedReportingOverflow(by: 1024) {
                result = bytes
            }
        }
        func number(_ path: String) -> Int? { smallFile(path).flatMap { Int($0.filter { !$0.isWhitespace }) } }
        if let limit = number("/sys/fs/cgroup/memory.max"), let used = number("/sys/fs/cgroup/memory.current") {
            result = min(result ?? Int.max, max(limit - used, 0))
        }
        return result
    }

    /// This machine's physical memory in bytes (Int.max if unknown).
    public static func physicalBytes() -> Int {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, pageSize > 0 else { return .max }
        let (bytes, overflow) = pages.multipliedReportingOverflow(by: pageSize)
        return overflow ? .max : bytes
    }

    /// Where `availableBytes` comes from, for messages.
    public static let source = "MemAvailable in /proc/meminfo, or the cgroup's memory.max"

    /// A small kernel file (at most 16 KiB), nil when it cannot be read.
    private static func smallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 16384)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }
}
