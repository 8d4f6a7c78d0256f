#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An open file descriptor. Every failing call becomes a `SafeTensorsError` that names the
/// call; the descriptor is closed on deinit if `close()` was never reached (error paths).
final class OpenFile {
    private var descriptor: Int32?
    /// The file errors are reported against.
    let reportedPath: String
    /// The file actually opened.
    let path: String

    private init(descriptor: Int32, path: String, reportedPath: String) {
        self.descriptor = descriptor
        self.path = path
        self.reportedPath = reportedPath
    }

    deinit {
        if let descriptor { _ = closeDescriptor(descriptor) }
    }

    static func open(_ path: String, flags: Int32, mode: mode_t = 0,
                     reportedPath: String) throws(SafeTensorsError) -> OpenFile {
        let descriptor = retryingOnInterrupt { openDescriptor(path, flags | O_CLOEXEC, mode) }
        guard descriptor >= 0 else {
            throw .systemCall("open", path: reportedPath, operand: path)
        }
        return OpenFile(descriptor: descriptor, path: path, reportedPath: reportedPath)
    }

    private func failure(_ call: String) -> SafeTensorsError {
        .systemCall(call, path: reportedPath, operand: path)
    }

    /// A write that returned `result` <= 0: -1 sets errno; 0 (no progress) does not.
    private func failure(_ call: String, result: Int) -> SafeTensorsError {
        guard result == 0 else { return failure(call) }
        return SafeTensorsError(path: reportedPath, kind: .systemCall(call: call, errno: 0),
                                problem: "\(call)(\(path)) wrote nothing")
    }

    /// Writes all of `bytes` at the current position, continuing after short writes.
    func writeAll(_ bytes: UnsafeRawBufferPointer) throws(SafeTensorsError) {
        var written = 0
        while written < bytes.count {
            let result = retryingOnInterrupt {
                write(descriptor!, bytes.baseAddress! + written, bytes.count - written)
            }
            guard result > 0 else { throw failure("write", result: result) }
            written += result
        }
    }

    /// Writes all of `bytes` at `offset` without moving the file position.
    func writeAll(_ bytes: UnsafeRawBufferPointer, atOffset offset: Int) throws(SafeTensorsError) {
        var written = 0
        while written < bytes.count {
            let result = retryingOnInterrupt {
                pwrite(descriptor!, bytes.baseAddress! + written, bytes.count - written,
                             off_t(offset + written))
            }
            guard result > 0 else { throw failure("pwrite", result: result) }
            written += result
        }
    }

    /// Opens `path` for reading if it is a regular file, and returns its size. O_NONBLOCK
    /// makes the open of a FIFO return at once instead of waiting for a writer (it is
    /// cleared again before any read); fstat then refuses every type but a regular file
    /// without reading from it.
    static func openRegularFile(_ path: String) throws(SafeTensorsError) -> (file: OpenFile, size: Int) {
        let file = try open(path, flags: O_RDONLY | O_NONBLOCK | O_NOCTTY, reportedPath: path)
        var status = stat()
        guard fstat(file.descriptor!, &status) == 0 else { throw file.failure("fstat") }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw SafeTensorsError(path: path, kind: .notARegularFile,
                                   problem: "not a regular file (\(describeType(status.st_mode))), so it cannot be read as a safetensors file")
        }
        let flags = fcntl(file.descriptor!, F_GETFL)
        guard flags >= 0, fcntl(file.descriptor!, F_SETFL, flags & ~O_NONBLOCK) == 0 else { throw file.failure("fcntl") }
        return (file, Int(status.st_size))
    }

    /// `count` bytes from `offset`, which the caller checked against the file's size. A file
    /// that ends sooner changed while being read (checkpoints are replaced by rename, never
    /// rewritten in place): it is reported as truncated.
    func read(_ count: Int, atOffset offset: Int) throws(SafeTensorsError) -> [UInt8] {
        var readError: SafeTensorsError?
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, done in
            while done < count {
                let result = retryingOnInterrupt {
                    pread(descriptor!, buffer.baseAddress! + done, count - done, off_t(offset + done))
                }
                if result < 0 { readError = failure("read") }
                if result <= 0 { return }
                done += result
            }
        }
        if let readError { throw readError }
        guard bytes.count == count else {
            throw .damaged(reportedPath, "truncated: the file ended at byte \(offset + bytes.count) while reading up to byte "
                                         + "\(offset + count), which its size allowed: it changed while being read")
        }
        return bytes
    }

    /// Creates a new file `<directory>/.<name>.tmp.<suffix>` next to `path`, exclusively and
    /// never through a link (O_CREAT | O_EXCL | O_NOFOLLOW), mode 0644 (less the umask). The
    /// suffix is random, so the name cannot be planted in advance; should it exist anyway,
    /// another suffix is tried, a bounded number of times.
    static func createTemporary(nextTo path: String, suffix: () -> String) throws(SafeTensorsError) -> OpenFile {
        let (directory, name) = splitPath(path)
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW
        var attempts = 0
        while true {
            attempts += 1
            let candidate = "\(directory == "/" ? "" : directory)/.\(name).tmp.\(suffix())"
            let descriptor = retryingOnInterrupt { openDescriptor(candidate, flags | O_CLOEXEC, 0o644) }
            if descriptor >= 0 { return OpenFile(descriptor: descriptor, path: candidate, reportedPath: path) }
            if errno != EEXIST || attempts == temporaryAttempts {
                throw .systemCall("open", path: path, operand: candidate)
            }
        }
    }

    static let temporaryAttempts = 16

    func sync() throws(SafeTensorsError) {
        guard retryingOnInterrupt({ fsync(descriptor!) }) == 0 else { throw failure("fsync") }
    }

    /// Closes the descriptor; a failing close can mean lost writes (NFS), so it is an error.
    func close() throws(SafeTensorsError) {
        let result = closeDescriptor(descriptor!)
        descriptor = nil
        guard result == 0 else { throw failure("close") }
    }
}

/// Repeats a C call that failed with EINTR.
private func retryingOnInterrupt<Result: BinaryInteger>(_ call: () -> Result) -> Result {
    while true {
        let result = call()
        if result >= 0 || errno != EINTR { return result }
    }
}

/// "a FIFO", "a directory", ...: the type of a file that is not a regular one.
private func describeType(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFIFO: "a FIFO"
    case S_IFDIR: "a directory"
    case S_IFCHR: "a character device"
    case S_IFBLK: "a block device"
    case S_IFSOCK: "a socket"
    case S_IFLNK: "a symbolic link"
    default: "file type 0o\(String(mode & S_IFMT, radix: 8))"
    }
}

/// This machine's physical memory in bytes (Int.max if unknown).
func physicalMemory() -> Int {
    let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
    guard pages > 0, pageSize > 0 else { return .max }
    let (bytes, overflow) = pages.multipliedReportingOverflow(by: pageSize)
    return overflow ? .max : bytes
}

/// Directory and file name of a path; a bare name lives in ".".
func splitPath(_ path: String) -> (directory: String, name: String) {
    guard let slash = path.lastIndex(of: "/") else { return (".", path) }
    let directory = String(path[..<slash])
    return (directory.isEmpty ? "/" : directory, String(path[path.index(after: slash)...]))
}

// The C calls whose names OpenFile's own methods shadow.
private func openDescriptor(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }
private func closeDescriptor(_ descriptor: Int32) -> Int32 { close(descriptor) }
