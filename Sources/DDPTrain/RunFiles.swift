import DDPSystem
import Foundation

// The run dir's lock and the careful reading and writing of its files (RunDirectory, RunLog).

/// The run dirs this process has locked. A lock lasts as long as the process: the kernel drops
/// it when the process ends, so nothing has to unlock on any path out.
final class RunDirectoryLocks: @unchecked Sendable {
    static let shared = RunDirectoryLocks()
    private let mutex = NSLock()
    /// Lock file (device:inode) -> its descriptor, kept open.
    private var held: [String: Int32] = [:]

    /// Locks `lockPath` (created if missing, never through a link) and writes this process's
    /// pid and host into it for the message another run gets. Locking a run dir this process
    /// holds already succeeds. Returns warnings (a file system without locks).
    func acquire(directory: String, lockPath: String) throws -> [String] {
        let fd = open(lockPath, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw TrainingError("run dir \(directory): cannot open its lock file \(lockPath): \(errnoText(errno))",
                                exitCode: ExitStatus.inputError)
        }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw TrainingError("run dir \(directory): \(lockPath) is not a regular file", exitCode: ExitStatus.inputError)
        }
        let key = "\(info.st_dev):\(info.st_ino)"
        mutex.lock()
        defer { mutex.unlock() }
        if held[key] != nil {
            close(fd)
            return []
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if code == EWOULDBLOCK || code == EAGAIN {
                let holder = RunDirectoryLocks.holder(fd)
                close(fd)
                throw TrainingError("run dir \(directory) is in use by another run (\(holder)); wait for it to end, "
                                    + "or use another --run-dir", exitCode: ExitStatus.inputError)
            }
            // Some shared file systems have no locks (Lustre mounted without flock): go on, and say so.
            held[key] = fd
            return ["run dir \(directory): cannot lock \(lockPath) (flock: \(errnoText(code))); "
                    + "a second run started in this run dir would not be stopped"]
        }
        let text = Array("pid \(getpid()) host \(hostName())\n".utf8)
        guard ftruncate(fd, 0) == 0, pwrite(fd, text, text.count, 0) == text.count else {
            let reason = errnoText(errno)
            close(fd)
            throw TrainingError("run dir \(directory): cannot write \(lockPath): \(reason)", exitCode: ExitStatus.inputError)
        }
        held[key] = fd
        return []
    }

    /// "pid P on host H" from a lock file another run wrote.
    static func holder(_ fd: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 300)
        let count = pread(fd, &buffer, buffer.count, 0)
        let text = String(decoding: buffer.prefix(max(count, 0)), as: UTF8.self)
        let words = text.split(whereSeparator: \.isWhitespace)
        guard words.count >= 4, words[0] == "pid", words[2] == "host", Int32(words[1]) != nil,
              words[3].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }) else {
            return "pid and host unknown"
        }
        return "pid \(words[1]) on host \(words[3])"
    }
}

/// One piece of a line: a whole line (`starts` and `ends`), or a part of one longer than the
/// reader's limit. `terminated`: the line ended with a line feed (not with the end of the file).
struct LinePiece {
    var bytes: ArraySlice<UInt8>
    var starts: Bool
    var ends: Bool
    var terminated: Bool
}

/// Reads `fd` in chunks and hands `body` its lines without their line feeds. Holds at most one
/// line of up to `limit` bytes: a longer line comes in pieces.
func forEachLine(fd: Int32, path: String, limit: Int = 1 << 20, _ body: (LinePiece) throws -> Void) throws {
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    var line: [UInt8] = []
    var inLongLine = false
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 {
            if errno == EINTR { continue }
            throw TrainingError("\(path): cannot read: \(errnoText(errno))", exitCode: ExitStatus.inputError)
        }
        if count == 0 { break }
        var start = 0
        while start < count {
            let newline = chunk[start..<count].firstIndex(of: 10)
            let part = chunk[start..<(newline ?? count)]
            start = (newline ?? count - 1) + 1
            if let _ = newline {
                if inLongLine {
                    try body(LinePiece(bytes: part, starts: false, ends: true, terminated: true))
                    inLongLine = false
                } else if line.isEmpty {
                    try body(LinePiece(bytes: part, starts: true, ends: true, terminated: true))
                } else {
                    line += part
                    try body(LinePiece(bytes: line[...], starts: true, ends: true, terminated: true))
                    line.removeAll(keepingCapacity: true)
                }
            } else if inLongLine {
                try body(LinePiece(bytes: part, starts: false, ends: false, terminated: false))
            } else if line.count + part.count > limit {
                line += part
                try body(LinePiece(bytes: line[...], starts: true, ends: false, terminated: false))
                line.removeAll(keepingCapacity: true)
                inLongLine = true
            } else {
                line += part
            }
        }
    }
    if inLongLine {
        try body(LinePiece(bytes: [], starts: false, ends: true, terminated: false))
    } else if !line.isEmpty {
        try body(LinePiece(bytes: line[...], starts: true, ends: true, terminated: false))
    }
}

/// Opens a file for reading only if it is a regular file (DDPSystem's RegularFile): never
/// through a link, and never waiting on a FIFO or a device. nil: there is no such file.
func openRegularFileForReading(_ path: String) throws -> Int32? {
    switch RegularFile.open(path, followingLinks: false) {
    case .success(let opened): return opened.descriptor
    case .failure(.failed(let failure)) where failure.code == ENOENT: return nil
    case .failure(.failed(let failure)) where failure.code == ELOOP:
        throw TrainingError("\(path) is a symbolic link, not a file ddptrain wrote; move it away", exitCode: ExitStatus.inputError)
    case .failure(.failed(let failure)):
        throw TrainingError("\(path): cannot \(failure.call == "open" ? "open" : "examine"): \(failure.reason)", exitCode: ExitStatus.inputError)
    case .failure(.notRegular(let mode)):
        throw TrainingError("\(path) is \(describeFileType(mode)), not a file ddptrain wrote; move it away", exitCode: ExitStatus.inputError)
    case .failure(.tooLarge): preconditionFailure("opened without a size limit")
    }
}

/// Writes every byte, or says why not (a full disk, a quota, an I/O error).
func writeEvery<Bytes: Collection>(_ bytes: Bytes, to fd: Int32, path: String) throws where Bytes.Element == UInt8 {
    let failure = Array(bytes).withUnsafeBytes { DDPSystem.writeAll(fd, $0) }
    guard let failure else { return }
    throw TrainingError("\(path): cannot write: " + (failure.code == 0 ? "the write made no progress" : failure.reason),
                        exitCode: ExitStatus.checkpointWriteFailed)
}

/// The type of what is at `path` (S_IFREG, S_IFDIR, ...), nil when nothing is there or it cannot be examined.
/// Links are not followed unless `following`.
func fileType(_ path: String, following: Bool = false) -> mode_t? {
    var info = stat()
    return (following ? stat(path, &info) : lstat(path, &info)) == 0 ? info.st_mode & S_IFMT : nil
}

/// `mkdir -p`, with the failing call's reason (errno) rather than Foundation's paraphrase.
func createDirectories(_ path: String) throws {
    if let failure = makeDirectories(path) {
        throw TrainingError("cannot create \(failure.path ?? path): \(failure.reason)", exitCode: ExitStatus.inputError)
    }
}
