#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import DDPSystem

/// An open file descriptor, with DDPSystem's checked calls worded as `SafeTensorsError`s
/// that name the call. An owning instance closes the descriptor on deinit if `close()` was
/// never reached (error paths).
final class OpenFile {
    private var descriptor: Int32?
    private let owning: Bool
    /// The file errors are reported against.
    let reportedPath: String
    /// The file actually opened.
    let path: String

    /// Wraps `descriptor`; `owning: false` leaves closing it to whoever opened it.
    init(descriptor: Int32, path: String, reportedPath: String, owning: Bool = true) {
        self.descriptor = descriptor
        self.path = path
        self.reportedPath = reportedPath
        self.owning = owning
    }

    deinit {
        if owning, let descriptor { _ = closeDescriptor(descriptor) }
    }

    /// Opens `path` for reading if it is a regular file (DDPSystem's RegularFile: never
    /// waits on a FIFO), and returns its size.
    static func openRegularFile(_ path: String) throws(SafeTensorsError) -> (file: OpenFile, size: Int) {
        switch RegularFile.open(path) {
        case .success(let opened):
            return (OpenFile(descriptor: opened.descriptor, path: path, reportedPath: path), opened.size)
        case .failure(.notRegular(let mode)):
            throw SafeTensorsError(path: path, kind: .notARegularFile,
                                   problem: "not a regular file (\(describeFileType(mode))), so it cannot be read as a safetensors file")
        case .failure(.failed(let failure)):
            throw .systemCall(failure, path: path, operand: path)
        case .failure(.tooLarge):
            preconditionFailure("RegularFile.open sets no size limit")
        }
    }

    private func failure(_ failure: SystemCallFailure) -> SafeTensorsError {
        guard failure.code == 0 else { return .systemCall(failure, path: reportedPath, operand: path) }
        // A write that made no progress sets no errno.
        return SafeTensorsError(path: reportedPath, kind: .systemCall(call: failure.call, errno: 0),
                                problem: "\(failure.call)(\(path)) wrote nothing")
    }

    /// Writes all of `bytes`, at `offset` without moving the file position when given.
    func writeAll(_ bytes: UnsafeRawBufferPointer, atOffset offset: Int? = nil) throws(SafeTensorsError) {
        if let problem = DDPSystem.writeAll(descriptor!, bytes, atOffset: offset) { throw failure(problem) }
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
                if result < 0 { readError = failure(SystemCallFailure("read")) }
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

    /// Closes the descriptor; a failing close can mean lost writes (NFS), so it is an error.
    func close() throws(SafeTensorsError) {
        let result = closeDescriptor(descriptor!)
        descriptor = nil
        guard result == 0 else { throw failure(SystemCallFailure("close")) }
    }
}

// The C call whose name OpenFile's own method shadows.
private func closeDescriptor(_ descriptor: Int32) -> Int32 { Glibc.close(descriptor) }
