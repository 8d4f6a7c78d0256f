import CMPI
#if canImport(Glibc)
import Glibc
#endif

/// Element types MPI can reduce and move.
public protocol MPIScalar {
    static var mpiDatatype: MPI_Datatype { get }
}
extension Float: MPIScalar { public static var mpiDatatype: MPI_Datatype { ddp_mpi_float() } }
extension Double: MPIScalar { public static var mpiDatatype: MPI_Datatype { ddp_mpi_double() } }
extension Int64: MPIScalar { public static var mpiDatatype: MPI_Datatype { ddp_mpi_int64() } }
extension UInt8: MPIScalar { public static var mpiDatatype: MPI_Datatype { ddp_mpi_byte() } }

public enum ReduceOp: Sendable {
    case sum, max, min
    var handle: MPI_Op {
        switch self {
        case .sum: return ddp_mpi_sum()
        case .max: return ddp_mpi_max()
        case .min: return ddp_mpi_min()
        }
    }
}

/// A nonblocking collective in flight (Communicator.startAllreduce).
public struct PendingCollective {
    fileprivate var request: MPI_Request?
}

/// The world communicator: a thin layer over MPI's C API in which every return code is
/// checked (the error handler is set to return codes) and a failure becomes an `MPIError`.
/// Works in a single process started without mpirun (MPI singleton), so unit tests can use it.
public final class Communicator: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    private let comm: MPI_Comm

    /// MPI may be initialized once per process; this is the one world communicator.
    public static func world() throws(MPIError) -> Communicator {
        if let existing = shared.communicator { return existing }
        var initialized: Int32 = 0
        MPI_Initialized(&initialized)
        var provided: Int32 = 0
        if initialized == 0 {
            let code = MPI_Init_thread(nil, nil, requiredThreadLevel, &provided)
            try check(code, "MPI_Init_thread", rank: -1)
            atexit { Communicator.finalizeIfNeeded() }
            try checkThreadLevel(provided: provided, call: "MPI_Init_thread")
        } else {
            try check(MPI_Query_thread(&provided), "MPI_Query_thread", rank: -1)
            try checkThreadLevel(provided: provided, call: "MPI_Query_thread")
        }
        let world: MPI_Comm = ddp_mpi_comm_world()!
        try check(MPI_Comm_set_errhandler(world, ddp_mpi_errors_return()), "MPI_Comm_set_errhandler", rank: -1)
        var rank: Int32 = 0, size: Int32 = 0
        try check(MPI_Comm_rank(world, &rank), "MPI_Comm_rank", rank: -1)
        try check(MPI_Comm_size(world, &size), "MPI_Comm_size", rank: Int(rank))
        let communicator = Communicator(comm: world, rank: Int(rank), size: Int(size))
        shared.communicator = communicator
        return communicator
    }

    /// The thread support ddptrain needs: MPI is called only by the thread that initialized
    /// it (the training loop, which is member 0 of every ThreadTeam); compute threads and the
    /// step watchdog never call MPI. So MPI_THREAD_FUNNELED.
    public static let requiredThreadLevel: Int32 = ddp_mpi_thread_funneled()

    /// MPI's name of a thread support level.
    public static func threadLevelName(_ level: Int32) -> String {
        let names: [(Int32, String)] = [(ddp_mpi_thread_single(), "MPI_THREAD_SINGLE"), (ddp_mpi_thread_funneled(), "MPI_THREAD_FUNNELED"),
                                        (ddp_mpi_thread_serialized(), "MPI_THREAD_SERIALIZED"), (ddp_mpi_thread_multiple(), "MPI_THREAD_MULTIPLE")]
        return names.first { $0.0 == level }?.1 ?? "level \(level)"
    }

    /// Throws unless `provided` (what `call` reported) is at least `requiredThreadLevel`; the
    /// levels are ordered SINGLE < FUNNELED < SERIALIZED < MULTIPLE (MPI standard, 12.4.3).
    public static func checkThreadLevel(provided: Int32, call: String) throws(MPIError) {
        guard provided < requiredThreadLevel else { return }
        throw MPIError(call: call, code: 0, message: "the MPI library provides thread support \(threadLevelName(provided)), "
                       + "ddptrain needs \(threadLevelName(requiredThreadLevel)) (its training loop calls MPI while compute threads run)",
                       rank: -1)
    }

    /// The world communicator if MPI has been brought up in this process, else nil.
    public static var current: Communicator? { shared.communicator }

    private init(comm: MPI_Comm, rank: Int, size: Int) {
        self.comm = comm
        self.rank = rank
        self.size = size
    }

    /// Finalizes MPI once, at exit; a no-op when it was never initialized or already finalized.
    public static func finalizeIfNeeded() {
        var initialized: Int32 = 0, finalized: Int32 = 0
        MPI_Initialized(&initialized)
        MPI_Finalized(&finalized)
        if initialized != 0 && finalized == 0 { MPI_Finalize() }
    }

    /// This rank's host name as MPI reports it.
    public func hostName() throws(MPIError) -> String {
        var buffer = [CChar](repeating: 0, count: Int(ddp_mpi_max_processor_name()) + 1)
        var length: Int32 = 0
        try check(MPI_Get_processor_name(&buffer, &length), "MPI_Get_processor_name", rank: rank)
        return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The MPI library's own version string (Open MPI's name and release).
    public static func libraryVersion() -> String {
        var buffer = [CChar](repeating: 0, count: Int(ddp_mpi_max_library_version_string()) + 1)
        var length: Int32 = 0
        guard MPI_Get_library_version(&buffer, &length) == MPI_SUCCESS else { return "unknown" }
        let text = String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return text.split(separator: ",").first.map(String.init) ?? text
    }

    // MARK: Collectives

    /// In-place allreduce over `count` elements at `buffer`.
    public func allreduce<T: MPIScalar>(_ buffer: UnsafeMutablePointer<T>, count: Int, op: ReduceOp = .sum) throws(MPIError) {
        try check(MPI_Allreduce(ddp_mpi_in_place(), buffer, Int32(count), T.mpiDatatype, op.handle, comm),
                  "MPI_Allreduce", rank: rank)
    }

    public func allreduce<T: MPIScalar>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum) throws(MPIError) {
        guard let base = buffer.baseAddress else { return try allreduceEmpty(T.self, op: op) }
        try allreduce(base, count: buffer.count, op: op)
    }

    public func allreduce<T: MPIScalar>(_ array: inout [T], op: ReduceOp = .sum) throws(MPIError) {
        let rank = self.rank
        let comm = self.comm
        let code = array.withUnsafeMutableBufferPointer { buffer in
            MPI_Allreduce(ddp_mpi_in_place(), buffer.baseAddress, Int32(buffer.count), T.mpiDatatype, op.handle, comm)
        }
        try check(code, "MPI_Allreduce", rank: rank)
    }

    /// A scalar allreduce, for counts and flags.
    public func allreduce<T: MPIScalar>(_ value: T, op: ReduceOp = .sum) throws(MPIError) -> T {
        var array = [value]
        try allreduce(&array, op: op)
        return array[0]
    }

    /// Starts an in-place allreduce (MPI_Iallreduce) that `wait` completes; `buffer` stays
    /// untouched until then. A small one started just before a large blocking collective is
    /// carried along by it and costs next to nothing to wait for afterwards.
    public func startAllreduce<T: MPIScalar>(_ buffer: UnsafeMutablePointer<T>, count: Int, op: ReduceOp = .sum) throws(MPIError) -> PendingCollective {
        var pending = PendingCollective()
        try check(MPI_Iallreduce(ddp_mpi_in_place(), buffer, Int32(count), T.mpiDatatype, op.handle, comm, &pending.request),
                  "MPI_Iallreduce", rank: rank)
        return pending
    }

    /// Completes a collective that `startAllreduce` started.
    public func wait(_ pending: inout PendingCollective) throws(MPIError) {
        try check(MPI_Wait(&pending.request, nil), "MPI_Wait", rank: rank)
    }

    private func allreduceEmpty<T: MPIScalar>(_ type: T.Type, op: ReduceOp) throws(MPIError) {
        var dummy = [T]()
        try allreduce(&dummy, op: op)
    }

    /// Broadcast of `count` elements from `root`.
    public func broadcast<T: MPIScalar>(_ buffer: UnsafeMutablePointer<T>, count: Int, root: Int) throws(MPIError) {
        try check(MPI_Bcast(buffer, Int32(count), T.mpiDatatype, Int32(root), comm), "MPI_Bcast", rank: rank)
    }

    public func broadcast<T: MPIScalar>(_ array: inout [T], root: Int) throws(MPIError) {
        let rank = self.rank
        let comm = self.comm
        let code = array.withUnsafeMutableBufferPointer { buffer in
            MPI_Bcast(buffer.baseAddress, Int32(buffer.count), T.mpiDatatype, Int32(root), comm)
        }
        try check(code, "MPI_Bcast", rank: rank)
    }

    /// Broadcast of a byte string whose length only the root knows.
    public func broadcast(bytes: [UInt8], root: Int) throws(MPIError) -> [UInt8] {
        var length = [Int64(rank == root ? bytes.count : 0)]
        try broadcast(&length, root: root)
        var data = rank == root ? bytes : [UInt8](repeating: 0, count: Int(length[0]))
        try broadcast(&data, root: root)
        return data
    }

    public func broadcast(string: String, root: Int) throws(MPIError) -> String {
        String(decoding: try broadcast(bytes: Array(string.utf8), root: root), as: UTF8.self)
    }

    /// Every rank's `send` concatenated in rank order; `send` has the same length on all ranks.
    public func allgather<T: MPIScalar>(_ send: [T]) throws(MPIError) -> [T] {
        guard let first = send.first else { return [] }
        var receive = [T](repeating: first, count: send.count * size)
        let rank = self.rank
        let comm = self.comm
        let code = send.withUnsafeBufferPointer { s in
            receive.withUnsafeMutableBufferPointer { r in
                MPI_Allgather(s.baseAddress, Int32(s.count), T.mpiDatatype, r.baseAddress, Int32(s.count), T.mpiDatatype, comm)
            }
        }
        try check(code, "MPI_Allgather", rank: rank)
        return receive
    }

    /// Allgather into a caller-owned buffer of `count * size` elements (no allocation).
    public func allgather<T: MPIScalar>(_ send: UnsafePointer<T>, count: Int, into receive: UnsafeMutablePointer<T>) throws(MPIError) {
        try check(MPI_Allgather(send, Int32(count), T.mpiDatatype, receive, Int32(count), T.mpiDatatype, comm),
                  "MPI_Allgather", rank: rank)
    }

    /// Rank r's `counts[r]` elements land at `displacements[r]` of `receive` on every rank;
    /// this rank's are taken from there too (MPI_IN_PLACE).
    public func allgatherInPlace<T: MPIScalar>(_ receive: UnsafeMutablePointer<T>, counts: [Int32], displacements: [Int32]) throws(MPIError) {
        let code = counts.withUnsafeBufferPointer { c in
            displacements.withUnsafeBufferPointer { d in
                MPI_Allgatherv(ddp_mpi_in_place(), 0, T.mpiDatatype, receive, c.baseAddress, d.baseAddress, T.mpiDatatype, comm)
            }
        }
        try check(code, "MPI_Allgatherv", rank: rank)
    }

    /// Every rank's `send` (`count` elements, counts differing by rank) concatenated in
    /// rank order into `receive` (`counts[r]` from rank r).
    public func allgather<T: MPIScalar>(_ send: UnsafePointer<T>, count: Int, into receive: UnsafeMutablePointer<T>, counts: [Int32]) throws(MPIError) {
        var displacements = [Int32](repeating: 0, count: counts.count)
        for r in 1..<max(counts.count, 1) { displacements[r] = displacements[r - 1] + counts[r - 1] }
        let code = counts.withUnsafeBufferPointer { c in
            displacements.withUnsafeBufferPointer { d in
                MPI_Allgatherv(send, Int32(count), T.mpiDatatype, receive, c.baseAddress, d.baseAddress, T.mpiDatatype, comm)
            }
        }
        try check(code, "MPI_Allgatherv", rank: rank)
    }

    /// Sends `sendCounts[r]` elements at `sendDisplacements[r]` of `send` to rank r, and
    /// receives rank r's at `receiveDisplacements[r]` of `receive`.
    public func alltoall<T: MPIScalar>(_ send: UnsafePointer<T>, counts sendCounts: [Int32], displacements sendDisplacements: [Int32],
                                       into receive: UnsafeMutablePointer<T>, counts receiveCounts: [Int32],
                                       displacements receiveDisplacements: [Int32]) throws(MPIError) {
        let code = sendCounts.withUnsafeBufferPointer { sc in
            sendDisplacements.withUnsafeBufferPointer { sd in
                receiveCounts.withUnsafeBufferPointer { rc in
                    receiveDisplacements.withUnsafeBufferPointer { rd in
                        MPI_Alltoallv(send, sc.baseAddress, sd.baseAddress, T.mpiDatatype,
                                      receive, rc.baseAddress, rd.baseAddress, T.mpiDatatype, comm)
                    }
                }
            }
        }
        try check(code, "MPI_Alltoallv", rank: rank)
    }

    /// Every rank's string, in rank order.
    public func allgather(string: String) throws(MPIError) -> [String] {
        let bytes = Array(string.utf8)
        let lengths = try allgather([Int64(bytes.count)])
        let width = Int(lengths.max() ?? 0)
        var padded = bytes + [UInt8](repeating: 0, count: width - bytes.count)
        if width == 0 { return [String](repeating: "", count: size) }
        padded = try allgather(padded)
        return (0..<size).map { r in
            String(decoding: padded[(r * width)..<(r * width + Int(lengths[r]))], as: UTF8.self)
        }
    }

    public func barrier() throws(MPIError) {
        try check(MPI_Barrier(comm), "MPI_Barrier", rank: rank)
    }

    /// Ends every rank of the job. Used once an error is known on some rank after the first
    /// collective, so that ranks waiting in a collective do not hang.
    public func abort(exitCode: Int32) -> Never {
        MPI_Abort(comm, exitCode)
        exit(exitCode)
    }

}

/// Process-wide holder of the one world communicator.
private final class SharedState: @unchecked Sendable {
    var communicator: Communicator?
}
private let shared = SharedState()
