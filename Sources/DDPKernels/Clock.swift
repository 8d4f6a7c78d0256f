import Glibc

/// Elapsed time for step splits and benchmarks: the kernel's monotonic clock (it never jumps
/// with the time of day), read without MPI, so that every layer can time itself.
public enum Clock {
    /// Seconds since an arbitrary fixed point (boot); only differences mean anything.
    @inline(__always)
    public static func seconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) * 1e-9
    }
}
