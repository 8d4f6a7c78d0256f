#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import DDPSystem

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
        systemCall(SystemCallFailure(call), path: path, doing: doing)
    }

    static func systemCall(_ failure: SystemCallFailure, path: String, doing: String) -> DataError {
        let problem = failure.code == ENOENT ? "file not found" : "\(doing): \(describe(failure))"
        return DataError(path, problem, call: failure.call, errorNumber: failure.code)
    }

    /// Why a file could not be opened as a regular data file.
    static func opening(_ path: String, _ problem: RegularFileProblem) -> DataError {
        switch problem {
        case .failed(let failure): systemCall(failure, path: path, doing: "cannot open")
        case .notRegular(let mode): DataError(path, notARegularFileProblem(mode))
        case .tooLarge: preconditionFailure("data files are opened without a size limit")
        }
    }
}

/// "call() failed: reason (errno N)".
func describe(_ failure: SystemCallFailure) -> String { "\(failure.call)() failed: \(failure.reason)" }

/// "not a regular file (a FIFO)" and the like, for a file mode that is not S_IFREG.
func notARegularFileProblem(_ mode: mode_t) -> String { "not a regular file (\(describeFileType(mode)))" }
