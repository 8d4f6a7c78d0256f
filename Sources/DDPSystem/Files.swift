#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CStopSignal

// The file-system calls every reader and writer of untrusted files shares (DESIGN: untrusted
// input): open only regular files and never wait on a FIFO, create temporary files
// exclusively and never through a link. Each module words its own errors from what fails
// here, so these return the failing call and errno rather than a message.

/// A C call that failed, its errno, and the file it acted on when that matters.
public struct SystemCallFailure: Error, Equatable, Sendable {
    public let call: String
    public let code: Int32
    public let path: String?

    public init(_ call: String, path: String? = nil, code: Int32 = errno) {
        self.call = call
        self.path = path
        self.code = code
    }

    /// "Permission denied (errno 13)".
    public var reason: String { errnoText(code) }
}

/// "Permission denied (errno 13)" for an errno value.
public func errnoText(_ code: Int32) -> String { "\(String(cString: strerror(code))) (errno \(code))" }

/// "a FIFO", "a directory", ...: what a file that is not a regular one is.
public func describeFileType(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFREG: "a regular file"
    case S_IFIFO: "a FIFO"
    case S_IFDIR: "a directory"
    case S_IFCHR: "a character device"
    case S_IFBLK: "a block device"
    case S_IFSOCK: "a socket"
    case S_IFLNK: "a symbolic link"
    default: "file type 0o\(String(mode & S_IFMT, radix: 8))"
    }
}

/// Why a file could not be opened or read as a regular file.
public enum RegularFileProblem: Error, Equatable, Sendable {
    case failed(SystemCallFailure)
    /// Something else than a regular file is there: its st_mode.
    case notRegular(mode_t)
    /// Larger than the caller's limit: its size as fstat says, or nil when it grew past the
    /// limit while being read.
    case tooLarge(Int?)
}

public enum RegularFile {
    /// Opens `path` for reading if it is a regular file, and returns the descriptor (the
    /// caller closes it) and the size. O_NONBLOCK makes the open of a FIFO return at once
    /// instead of waiting for a writer; fstat then refuses every type but a regular file
    /// without reading from it, and O_NONBLOCK is cleared before any read. `followingLinks:
    /// false` refuses a symbolic link (ELOOP from open).
    public static func open(_ path: String, followingLinks: Bool = true) -> Result<(descriptor: Int32, size: Int), RegularFileProblem> {
        let flags = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (followingLinks ? 0 : O_NOFOLLOW)
        let fd = retryingOnInterrupt { Glibc.open(path, flags) }
        guard fd >= 0 else { return .failure(.failed(SystemCallFailure("open"))) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return closing(fd, .failed(SystemCallFailure("fstat"))) }
        guard info.st_mode & S_IFMT == S_IFREG else { return closing(fd, .notRegular(info.st_mode)) }
        let status = fcntl(fd, F_GETFL)
        guard status >= 0, fcntl(fd, F_SETFL, status & ~O_NONBLOCK) == 0 else { return closing(fd, .failed(SystemCallFailure("fcntl"))) }
        return .success((fd, Int(info.st_size)))
    }

    /// The whole of a regular file of at most `limit` bytes. It reads one byte more than
    /// that at the most, so a file that grew since fstat is refused too.
    public static func read(_ path: String, limit: Int, followingLinks: Bool = true) -> Result<[UInt8], RegularFileProblem> {
        let opened: (descriptor: Int32, size: Int)
        switch open(path, followingLinks: followingLinks) {
        case .success(let file): opened = file
        case .failure(let problem): return .failure(problem)
        }
        defer { close(opened.descriptor) }
        guard opened.size <= limit else { return .failure(.tooLarge(opened.size)) }
        return readBytes(opened.descriptor, upTo: limit + 1).flatMap { bytes in
            bytes.count <= limit ? .success(bytes) : .failure(.tooLarge(nil))
        }
    }

    /// Up to `count` bytes from `fd`, fewer at its end.
    private static func readBytes(_ fd: Int32, upTo count: Int) -> Result<[UInt8], RegularFileProblem> {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + filled, count - filled) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { return .failure(.failed(SystemCallFailure("read"))) }
            if n == 0 { break }
            filled += n
        }
        return .success(Array(bytes[..<filled]))
    }

    private static func closing<T>(_ fd: Int32, _ problem: RegularFileProblem) -> Result<T, RegularFileProblem> {
        let saved = errno
        close(fd)
        errno = saved
        return .failure(problem)
    }
}

/// Writes `text` to standard error, ignoring a failure: a message about a failure must
/// not become a crash of its own (Foundation's FileHandle.write traps when the write fails,
/// e.g. with stderr on a full disk or closed), and there is nowhere left to report it.
public func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}

/// Opens /dev/null on standard input, output or error where one is closed, before anything
/// else opens a file: the first file opened would otherwise take its number (Open MPI's
/// internal pipe did), and output meant for the closed one would go into it. Standard
/// output is opened read-only, so that writing there still fails and a command whose
/// output was lost still says so (exit 74); standard error's messages are dropped.
public func openClosedStandardDescriptors() {
    for (descriptor, flags): (Int32, Int32) in [(0, O_RDONLY), (1, O_RDONLY), (2, O_WRONLY)]
    where fcntl(descriptor, F_GETFD) == -1 && errno == EBADF {
        let opened = open("/dev/null", flags)
        if opened >= 0 && opened != descriptor { dup2(opened, descriptor); close(opened) }
    }
}

/// Flushes standard output; the reason (errno's words) if anything written there was lost
/// (a full disk, an I/O error), else nil.
public func standardOutputFailure() -> String? {
    errno = 0
    guard ddp_stdout_failed() != 0 else { return nil }
    return errno == 0 ? "an earlier write failed" : errnoText(errno)
}

/// What is at a path a command is about to write its output to (lstat: a link is not
/// followed). The output is written next to it and renamed over it (`AtomicFile`), which
/// would replace whatever is there, a device node or a FIFO included: the callers refuse
/// anything but a regular file.
public enum OutputTarget: Equatable, Sendable {
    case absent
    case regularFile
    /// Something else: what, in words ("a directory", "a character device", ...).
    case other(String)
    /// lstat failed with another error than ENOENT.
    case unreadable(SystemCallFailure)

    public static func at(_ path: String) -> OutputTarget {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            return errno == ENOENT ? .absent : .unreadable(SystemCallFailure("lstat", path: path))
        }
        return info.st_mode & S_IFMT == S_IFREG ? .regularFile : .other(describeFileType(info.st_mode))
    }
}

extension RegularFile {
    /// The first `count` bytes (or fewer) of a regular file, without following a link.
    public static func prefix(_ path: String, count: Int) -> Result<[UInt8], RegularFileProblem> {
        let opened: (descriptor: Int32, size: Int)
        switch open(path, followingLinks: false) {
        case .success(let file): opened = file
        case .failure(let problem): return .failure(problem)
        }
        defer { close(opened.descriptor) }
        return readBytes(opened.descriptor, upTo: count)
    }
}

public enum TemporaryFile {
    /// How many names are tried before giving up: a clash of 64-bit random names means
    /// someone is planting them.
    public static let attempts = 16

    /// Creates `<directory>/.<name>.tmp.<suffix>` next to `path`, exclusively and never
    /// through a link (O_CREAT | O_EXCL | O_NOFOLLOW), mode 0644 less the umask. The suffix
    /// is random, so the name cannot be planted in advance; should it exist anyway, another
    /// is tried. On failure: the failing open, with the last name tried.
    public static func create(nextTo path: String, suffix: () -> String = randomSuffix)
        -> Result<(descriptor: Int32, path: String), SystemCallFailure> {
        let (directory, name) = splitPath(path)
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        var tried = 0
        while true {
            tried += 1
            let candidate = "\(directory == "/" ? "" : directory)/.\(name).tmp.\(suffix())"
            let fd = retryingOnInterrupt { Glibc.open(candidate, flags, 0o644) }
            if fd >= 0 { return .success((fd, candidate)) }
            if errno != EEXIST || tried == attempts { return .failure(SystemCallFailure("open", path: candidate)) }
        }
    }

    /// Whether `name` (a file name, no folder) is one `create` makes with `randomSuffix`:
    /// "." + a name + ".tmp." + 16 lowercase hex digits.
    public static func isTemporaryName(_ name: String) -> Bool {
        let bytes = Array(name.utf8), marker = Array(".tmp.".utf8)
        // "." + at least one byte + ".tmp." + 16 digits.
        guard bytes.count >= 2 + marker.count + 16, bytes[0] == UInt8(ascii: "."),
              bytes[(bytes.count - 16 - marker.count)..<(bytes.count - 16)].elementsEqual(marker) else { return false }
        return bytes.suffix(16).allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains($0) }
    }

    /// 16 lowercase hex digits from the system's random source.
    public static func randomSuffix() -> String {
        let digits = String(UInt64.random(in: .min ... .max), radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

/// Creates `path` for appending, exclusively and never through a link (O_CREAT | O_EXCL |
/// O_NOFOLLOW), mode 0644 less the umask: the descriptor, or the failing open (EEXIST when
/// something, a link included, is there already).
public func createExclusively(_ path: String) -> Result<Int32, SystemCallFailure> {
    let fd = retryingOnInterrupt { Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644) }
    return fd >= 0 ? .success(fd) : .failure(SystemCallFailure("open", path: path))
}

/// `mkdir -p`: nil when `path` is a directory at the end, else the mkdir that failed and
/// where (a component that exists but is not a directory fails with ENOTDIR).
@discardableResult
public func makeDirectories(_ path: String) -> SystemCallFailure? {
    var prefix = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
        prefix += "/" + component
        if mkdir(prefix, 0o755) != 0 {
            let code = errno
            var info = stat()
            guard code == EEXIST, stat(prefix, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
                return SystemCallFailure("mkdir", path: prefix, code: code == EEXIST ? ENOTDIR : code)
            }
        }
    }
    return nil
}

/// Directory and file name of a path; a bare name lives in ".".
public func splitPath(_ path: String) -> (directory: String, name: String) {
    guard let slash = path.lastIndex(of: "/") else { return (".", path) }
    let directory = String(path[..<slash])
    return (directory.isEmpty ? "/" : directory, String(path[path.index(after: slash)...]))
}

/// Repeats a C call that failed with EINTR.
public func retryingOnInterrupt<Result: BinaryInteger>(_ call: () -> Result) -> Result {
    while true {
        let result = call()
        if result >= 0 || errno != EINTR { return result }
    }
}

/// Writes all of `bytes`, continuing after short writes; at `offset` (pwrite) when given,
/// else at the current position. The failing call, or one with errno 0 when a write made no
/// progress.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, atOffset offset: Int? = nil) -> SystemCallFailure? {
    var written = 0
    while written < bytes.count {
        let start = bytes.baseAddress! + written, count = bytes.count - written
        let result = retryingOnInterrupt {
            if let offset { pwrite(fd, start, count, off_t(offset + written)) } else { write(fd, start, count) }
        }
        guard result > 0 else { return SystemCallFailure(offset == nil ? "write" : "pwrite", code: result == 0 ? 0 : errno) }
        written += result
    }
    return nil
}

public enum AtomicFile {
    /// Replaces `path` atomically: `body` writes a new hidden temporary file next to it
    /// (TemporaryFile: created exclusively, never through a link), which is flushed and
    /// renamed over `path`; then the directory is flushed. A reader sees the old file or the
    /// complete new one, never a partial file. On failure the temporary file is removed and
    /// an existing file at `path` is untouched, except when only the final fsync of the
    /// directory fails: the new file is then in place but may not survive a power loss.
    /// `failure` words a failing call (its `path` is the file it acted on) as the caller's error.
    public static func replace<E: Error>(_ path: String, temporarySuffix: () -> String = TemporaryFile.randomSuffix,
                                         failure: (SystemCallFailure) -> E,
                                         writing body: (_ descriptor: Int32, _ temporaryPath: String) throws(E) -> Void) throws(E) {
        let (fd, temporary): (Int32, String)
        switch TemporaryFile.create(nextTo: path, suffix: temporarySuffix) {
        case .success(let created): (fd, temporary) = created
        case .failure(let problem): throw failure(problem)
        }
        // A signal that ends the process at once (StopRequest) removes the file being written.
        ddp_stop_temporary_file(temporary)
        defer { ddp_stop_temporary_file(nil) }
        var open = true
        do throws(E) {
            try body(fd, temporary)
            guard retryingOnInterrupt({ fsync(fd) }) == 0 else { throw failure(SystemCallFailure("fsync", path: temporary)) }
            open = false
            // A failing close can mean lost writes (NFS), so it is an error.
            guard close(fd) == 0 else { throw failure(SystemCallFailure("close", path: temporary)) }
            guard rename(temporary, path) == 0 else { throw failure(SystemCallFailure("rename", path: temporary)) }
        } catch {
            if open { close(fd) }
            unlink(temporary)
            throw error
        }
        // The rename is durable only once the directory entry is flushed too.
        let directory = splitPath(path).directory
        let dfd = retryingOnInterrupt { Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard dfd >= 0 else { throw failure(SystemCallFailure("open", path: directory)) }
        defer { close(dfd) }
        guard retryingOnInterrupt({ fsync(dfd) }) == 0 else { throw failure(SystemCallFailure("fsync", path: directory)) }
    }
}

/// This machine's host name (gethostname; empty if it fails).
public func hostName() -> String {
    var name = [CChar](repeating: 0, count: 256)
    guard gethostname(&name, name.count - 1) == 0 else { return "" }
    return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
