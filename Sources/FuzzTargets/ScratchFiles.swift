import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The readers under test take paths, so each input is written to a file in a directory of
/// this process's own (removed at exit).
enum ScratchFiles {
    /// `$TMPDIR` (or /tmp) without a trailing slash.
    static var temporaryDirectory: String {
        var path = NSTemporaryDirectory()
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        return path
    }

    /// In memory where Linux offers it: the cache target's rebuilds fsync, which is free
    /// there and costs milliseconds on a disk. Named after the process: a fuzzer that
    /// crashes never reaches its atexit, so each new one removes the folders of the dead.
    static let directory: String = {
        let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : temporaryDirectory
        removeFoldersOfEndedProcesses(in: base)
        var template = Array((base + "/\(prefix)\(getpid()).XXXXXX").utf8CString)
        guard mkdtemp(&template) != nil else { fatalError("fuzz harness: mkdtemp failed: \(String(cString: strerror(errno)))") }
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        atexit { try? FileManager.default.removeItem(atPath: ScratchFiles.directory) }
        return path
    }()

    private static let prefix = "ddptrain-fuzz-"

    private static func removeFoldersOfEndedProcesses(in base: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? [] where name.hasPrefix(prefix) {
            guard let pid = Int32(name.dropFirst(prefix.count).prefix { $0 != "." }),
                  kill(pid, 0) != 0 && errno == ESRCH else { continue }
            try? FileManager.default.removeItem(atPath: base + "/" + name)
        }
    }

    /// Writes `bytes` to the file `name` in the scratch directory, replacing what was there.
    @discardableResult
    static func store(_ bytes: UnsafeRawBufferPointer, as name: String) -> String {
        let path = directory + "/" + name
        store(bytes, atPath: path)
        return path
    }

    static func store(_ bytes: UnsafeRawBufferPointer, atPath path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { fatalError("fuzz harness: cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var written = 0
        while written < bytes.count {
            let n = write(fd, bytes.baseAddress! + written, bytes.count - written)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { fatalError("fuzz harness: cannot write \(path): \(String(cString: strerror(errno)))") }
            written += n
        }
    }
}
