#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import DDPKernels

/// How much memory a dataset may take: checked before anything is allocated, so that a
/// header or an option asking for more fails with an error instead of the kernel's OOM killer.
enum MemoryBudget {
    /// What the kernel can give (DDPKernels.MemoryInfo); physical memory where that cannot
    /// be read.
    static func availableBytes() -> Int {
        if let available = MemoryInfo.availableBytes() { return available }
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, pageSize > 0 else { return Int.max }
        let (bytes, overflow) = pages.multipliedReportingOverflow(by: pageSize)
        return overflow ? Int.max : bytes
    }

    static var source: String {
        MemoryInfo.availableBytes() != nil ? MemoryInfo.source : "physical memory"
    }

    /// Fails unless `bytes` fit in the memory available now. `what` says what needs them.
    static func check(_ bytes: Int, for what: String, path: String) throws {
        let available = availableBytes()
        if bytes > available {
            throw DataError(path, "\(what) need \(bytes) bytes of memory, more than the \(available) bytes available (\(source))")
        }
    }
}
