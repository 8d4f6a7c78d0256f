import XCTest

final class DoctorTests: XCTestCase {
    func testDoctorPassesOnOneTwoAndFourRanks() throws {
        for ranks in [1, 2, 4] {
            let r = try MPIRun.run(ranks: ranks, ["doctor"], timeout: 60)
            XCTAssertEqual(r.status, 0, "doctor on \(ranks) ranks: \(r.stdout)\n\(r.stderr)")
            XCTAssertTrue(r.stdout.contains("world size             \(ranks)"), r.stdout)
            XCTAssertTrue(r.stdout.contains("allreduce check        exact"), r.stdout)
            XCTAssertTrue(r.stdout.contains("doctor: all checks passed"), r.stdout)
            // Rank 0 alone reports.
            XCTAssertEqual(r.stdout.components(separatedBy: "doctor: all checks passed").count, 2, r.stdout)
        }
    }

    func testDoctorFailsWhenDataIsMissing() throws {
        let r = try MPIRun.run(ranks: 2, ["doctor", "--no-bench", "--data-dir", "/nonexistent"], timeout: 60)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stdout.contains("doctor: FAILED: Fashion-MNIST files missing in /nonexistent"), r.stdout)
    }

    /// A failing MPI call on one rank surfaces as an error naming the call and that rank,
    /// and the whole job ends instead of hanging.
    func testFailedMPICallOnOneRankEndsTheJob() throws {
        let r = try MPIRun.run(ranks: 4, ["doctor", "--no-bench", "--inject-fault", "bad-broadcast-root", "--fault-rank", "2"], timeout: 30)
        XCTAssertFalse(r.timedOut, "the job hung")
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("error on rank 2 of 4: MPI_Bcast failed on rank 2: MPI_ERR_ROOT"), r.stderr)
        XCTAssertLessThan(r.seconds, 10)
    }

    func testArgumentErrorIsPrintedOnceAndFails() throws {
        let r = try MPIRun.run(ranks: 4, ["doctor", "--inject-fault", "nope"], timeout: 30)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertEqual(r.stderr.components(separatedBy: "--inject-fault takes bad-broadcast-root").count, 2, r.stderr)
    }
}
