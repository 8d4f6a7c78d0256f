#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import DDPSystem

/// A failure to write or read a safetensors file. The description names the file first,
/// then the problem, so that it can be logged as is.
public struct SafeTensorsError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A C call failed; `call` is its name, `errno` its error number. For a reader this
        /// means the file cannot be read (permissions, an I/O error), not that it is damaged.
        case systemCall(call: String, errno: Int32)
        /// The path names a FIFO, a directory, a device or a socket: refused by its type,
        /// without reading (a FIFO would block), and like a failed call not "damaged": no
        /// writer of ours made it, so what is there is unknown.
        case notARegularFile
        /// The header is sound but its data would not fit in this machine's memory: not read,
        /// and not known to be damaged either.
        case tooLarge
        /// The file was read and breaks the format or fails its checksum.
        case damaged
        /// The caller asked for something impossible: bad input to the writer, an unknown
        /// tensor, the wrong element type or shape.
        case invalidRequest
    }

    /// The file the error is about (for the writer: the final name, not the temporary one).
    public let path: String
    public let kind: Kind
    public let problem: String

    public var description: String { "\(path): \(problem)" }

    /// Whether the file was read and found damaged, as opposed to not readable at all
    /// (or asked for something it lacks). Only damage lets `--resume auto` skip a file.
    public var isDamage: Bool { kind == .damaged }

    static func damaged(_ path: String, _ problem: String) -> SafeTensorsError {
        SafeTensorsError(path: path, kind: .damaged, problem: problem)
    }

    static func invalidRequest(_ path: String, _ problem: String) -> SafeTensorsError {
        SafeTensorsError(path: path, kind: .invalidRequest, problem: problem)
    }

    /// The error for a C call that failed. `operand` is the file the call acted on, shown
    /// when it differs from `path` (the writer's temporary file).
    static func systemCall(_ failure: SystemCallFailure, path: String, operand: String) -> SafeTensorsError {
        let target = operand == path ? "" : "(\(operand))"
        return SafeTensorsError(path: path, kind: .systemCall(call: failure.call, errno: failure.code),
                                problem: "\(failure.call)\(target) failed: \(failure.reason)")
    }
}
