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

    /// What this process may still map under its own limits, which Slurm and shells pass
    /// on to jobs: the address-space limit (RLIMIT_AS, `ulimit -v`) less the address space
    /// mapped now, and the data limit (RLIMIT_DATA, `ulimit -d`) less the data mapped now,
    /// whichever leaves less, with its name for messages; nil when neither is set. Past it
    /// an allocation fails however much memory the machine has free.
    public static func processRoom() -> (bytes: Int, limit: String)? {
        var room: (bytes: Int, limit: String)?
        for (resource, name, field) in [(RLIMIT_AS, "address-space limit (ulimit -v)", "VmSize:"),
                                        (RLIMIT_DATA, "data limit (ulimit -d)", "VmData:")] {
            var limit = rlimit()
            // RLIM_INFINITY is all ones (Swift cannot import the C macro's -1 as rlim_t).
            guard getrlimit(Int32(resource.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { continue }
            let cap = limit.rlim_cur > UInt(Int.max) ? Int.max : Int(limit.rlim_cur)
            let bytes = max(cap - (mappedBytes(field) ?? 0), 0)
            if room == nil || bytes < room!.bytes { room = (bytes, "the process's \(name) of \(cap) bytes leaves \(bytes)") }
        }
        return room
    }

    /// A "kB" line of /proc/self/status (VmSize, VmData) in bytes.
    private static func mappedBytes(_ field: String) -> Int? {
        guard let text = smallFile("/proc/self/status"),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field) }) else { return nil }
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard fields.count == 3, fields[2] == "kB", let kibibytes = Int(fields[1]) else { return nil }
        return kibibytes.multipliedReportingOverflow(by: 1024).overflow ? nil : kibibytes * 1024
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
