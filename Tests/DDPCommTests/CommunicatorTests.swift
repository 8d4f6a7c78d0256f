import DDPComm
import XCTest

/// The communicator in one process (MPI singleton, no mpirun).
final class CommunicatorTests: XCTestCase {
    func testSingletonWorld() throws {
        let world = try Communicator.world()
        XCTAssertEqual(world.rank, 0)
        XCTAssertEqual(world.size, 1)
        XCTAssertFalse(try world.hostName().isEmpty)
        XCTAssertTrue(Communicator.libraryVersion().contains("Open MPI"))
        // A second call returns the same communicator: MPI is initialized once.
        XCTAssertTrue(try Communicator.world() === world)
    }

    func testAllreduceAndBroadcastInOneProcess() throws {
        let world = try Communicator.world()
        var f: [Float] = [1.5, -2, 3]
        try world.allreduce(&f)
        XCTAssertEqual(f, [1.5, -2, 3])
        var i: [Int64] = [7, -9]
        try world.allreduce(&i, op: .max)
        XCTAssertEqual(i, [7, -9])
        var d: [Double] = [0.25]
        try world.broadcast(&d, root: 0)
        XCTAssertEqual(d, [0.25])
        XCTAssertEqual(try world.allgather(string: "abc"), ["abc"])
        XCTAssertEqual(try world.broadcast(string: "hello", root: 0), "hello")
        try world.barrier()
    }

    /// Compute threads call no MPI, but the training loop calls it while they run: MPI must
    /// provide MPI_THREAD_FUNNELED at least. Less is an error naming the call and the levels.
    func testThreadSupportBelowFunneledIsRefused() throws {
        _ = try Communicator.world()
        XCTAssertEqual(Communicator.threadLevelName(Communicator.requiredThreadLevel), "MPI_THREAD_FUNNELED")
        XCTAssertNoThrow(try Communicator.checkThreadLevel(provided: Communicator.requiredThreadLevel, call: "MPI_Init_thread"))
        XCTAssertThrowsError(try Communicator.checkThreadLevel(provided: Communicator.requiredThreadLevel - 1, call: "MPI_Init_thread")) { error in
            guard let mpi = error as? MPIError else { return XCTFail("expected MPIError, got \(error)") }
            XCTAssertEqual(mpi.call, "MPI_Init_thread")
            XCTAssertEqual(mpi.description, "MPI_Init_thread on rank -1: the MPI library provides thread support MPI_THREAD_SINGLE, "
                           + "ddptrain needs MPI_THREAD_FUNNELED (its training loop calls MPI while compute threads run)")
        }
    }

    func testFailingCallBecomesErrorNamingTheCall() throws {
        let world = try Communicator.world()
        var x: [Float] = [1]
        XCTAssertThrowsError(try world.broadcast(&x, root: 5)) { error in
            guard let mpi = error as? MPIError else { return XCTFail("expected MPIError, got \(error)") }
            XCTAssertEqual(mpi.call, "MPI_Bcast")
            XCTAssertEqual(mpi.rank, 0)
            XCTAssertTrue(mpi.message.contains("root"), mpi.message)
            XCTAssertTrue(mpi.description.contains("MPI_Bcast failed on rank 0"), mpi.description)
        }
    }
}
