import Foundation
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
        XCTAssertTrue(r.stdout.contains("doctor: FAILED: Fashion-MNIST in /nonexistent cannot be read on ranks 0,1"), r.stdout)
    }

    /// Folders and a FIFO under the data files' names are found but are no data: doctor reads
    /// the files as train does and fails, naming the file, where it passed and train failed.
    func testDoctorReadsTheDataAsTrainDoes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-doctor-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"] {
            try FileManager.default.createDirectory(at: dir.appendingPathComponent(name), withIntermediateDirectories: true)
        }
        XCTAssertEqual(mkfifo(dir.appendingPathComponent("t10k-labels-idx1-ubyte").path, 0o644), 0)
        let r = try MPIRun.run(ranks: 2, ["doctor", "--no-bench", "--data-dir", dir.path], timeout: 60)
        XCTAssertNotEqual(r.status, 0, r.stdout)
        XCTAssertTrue(r.stdout.contains("train-images-idx3-ubyte: not a regular file"), r.stdout)
        XCTAssertTrue(r.stdout.contains("doctor: FAILED: Fashion-MNIST in \(dir.path) cannot be read on ranks 0,1"), r.stdout)
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
