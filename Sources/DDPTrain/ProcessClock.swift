import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Process start time and resource figures for the benchmark and the run summary.
public enum ProcessClock {
    /// Seconds since this process started, by the kernel's clock: field 22 of
    /// /proc/self/stat (start time in clock ticks since boot) against CLOCK_BOOTTIME, so
    /// it counts the loader, the Swift runtime and MPI start-up, not only `main`.
    /// Resolution: one clock tick (10 ms). nil where /proc is not available.
    public static func secondsSinceProcessStart() -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after the command name (which may hold spaces) start at field 3.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let ticks = Double(fields[19]) else { return nil }
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        var now = timespec()
        guard hz > 0, clock_gettime(CLOCK_BOOTTIME, &now) == 0 else { return nil }
        return Double(now.tv_sec) + Double(now.tv_nsec) * 1e-9 - ticks / hz
    }

    /// Seconds since the Unix epoch.
    public static func unixTime() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) * 1e-9
    }

    /// User plus system CPU seconds of this process, all threads.
    public static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6
    }

    /// This process's peak resident set size in bytes (getrusage ru_maxrss, KiB on Linux).
    public static func peakRSSBytes() -> Int {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return usage.ru_maxrss * 1024
    }
}
