import CMPI

/// A failed MPI call: which call, on which rank, and MPI's own words for the error.
public struct MPIError: Error, CustomStringConvertible, Sendable {
    public let call: String
    /// MPI's error code; 0 when the call succeeded but gave less than is needed.
    public let code: Int32
    public let message: String
    public let rank: Int

    public init(call: String, code: Int32, message: String, rank: Int) {
        self.call = call; self.code = code; self.message = message; self.rank = rank
    }

    public var description: String {
        code == 0 ? "\(call) on rank \(rank): \(message)" : "\(call) failed on rank \(rank): \(message) (MPI error \(code))"
    }
}

/// MPI's error string for a return code.
func mpiErrorString(_ code: Int32) -> String {
    var buffer = [CChar](repeating: 0, count: Int(ddp_mpi_max_error_string()) + 1)
    var length: Int32 = 0
    guard MPI_Error_string(code, &buffer, &length) == MPI_SUCCESS else { return "unknown error" }
    return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Turns an MPI return code into a thrown `MPIError` naming the call.
@inline(__always)
func check(_ code: Int32, _ call: @autoclosure () -> String, rank: Int) throws(MPIError) {
    if code != MPI_SUCCESS {
        throw MPIError(call: call(), code: code, message: mpiErrorString(code), rank: rank)
    }
}
