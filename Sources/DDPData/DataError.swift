#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A problem with a data file (or a dataset asked for): which file, and what is wrong with it.
public struct DataError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let problem: String
    /// The C call that failed and its errno, when one did.
    public let call: String?
    public let errorNumber: Int32?

    public init(_ path: String, _ problem: String) {
        self.init(path, problem, call: nil, errorNumber: nil)
    }

    private init(_ path: String, _ problem: String, call: String?, errorNumber: Int32?) {
        self.path = path
        self.problem = problem
        self.call = call
        self.errorNumber = errorNumber
    }

    public var description: String { "\(path): \(problem)" }

    /// The error for the C call `call` on `path` that just failed, read from errno: "file
    /// not found" for ENOENT, else "`doing`: call() failed: reason (errno N)".
    static func systemCall(_ call: String, path: String, doing: String) -> DataError {
        let code = errno
        let problem = code == ENOENT ? "file not found"
            : "\(doing): \(call)() failed: \(String(cString: strerror(code))) (errno \(code))"
        return DataError(path, problem, call: call, errorNumber: code)
    }
}
