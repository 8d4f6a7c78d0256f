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

    /// The whole file as `fstat` sizes it. Checkpoints are replaced by rename, never
    /// rewritten in place, so the size cannot change under the reader.
    func readAll() throws(SafeTensorsError) -> [UInt8] {
        var status = stat()
        guard fstat(descriptor!, &status) == 0 else { throw failure("fstat") }
        var readError: SafeTensorsError?
        let bytes = [UInt8](unsafeUninitializedCapacity: Int(status.st_size)) { buffer, count in
            while count < buffer.count {
                let result = retryingOnInterrupt {
                    read(descriptor!, buffer.baseAddress! + count, buffer.count - count)
                }
                if result < 0 { readError = failure("read") }
                if result <= 0 { return }
                count += result
            }
        }
        if let readError { throw readError }
        return bytes
    }

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

// The C calls whose names OpenFile's own methods shadow.
private func openDescriptor(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }
private func closeDescriptor(_ descriptor: Int32) -> Int32 { close(descriptor) }
