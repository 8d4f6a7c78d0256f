#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import DDPSystem

/// How much memory a dataset may take: checked before anything is allocated, so that a
/// header or an option asking for more fails with an error instead of the kernel's OOM killer.
enum MemoryBudget {
    /// Fails unless `bytes` fit in the memory available now (DDPSystem's MemoryInfo; physical
    /// memory where that cannot be read) and in what the process's own limits leave.
    /// `what` says what needs them.
    static func check(_ bytes: Int, for what: String, path: String) throws {
        let known = MemoryInfo.availableBytes()
        let available = known ?? MemoryInfo.physicalBytes()
        let source = known != nil ? MemoryInfo.source : "physical memory"
        if bytes > available {
            throw DataError(path, "\(what) need \(bytes) bytes of memory, more than the \(available) bytes available (\(source))")
        }
        if let room = MemoryInfo.processRoom(), bytes > room.bytes {
            throw DataError(path, "\(what) need \(bytes) bytes of memory; \(room.limit): raise the limit or use fewer samples")
        }
    }
}
