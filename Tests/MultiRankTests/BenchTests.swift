import Foundation
import XCTest

/// `ddptrain bench` under mpirun: what it reports holds together (no timing is asserted:
/// benchmarks are not tests).
final class BenchTests: XCTestCase {
    func testReportIsCompleteAndConsistent() throws {
        let stepLog = FileManager.default.temporaryDirectory.appendingPathComponent("bench-steps-\(UUID().uuidString).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: stepLog) }
        let r = try MPIRun.run(ranks: 2, ["bench", "--model", "mlp", "--dataset", "synthetic", "--per-rank-batch", "16",
                                          "--untimed-steps", "2", "--timed-steps", "6", "--threads", "2", "--json",
                                          "--step-log", stepLog], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let json = try XCTUnwrap((try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any], r.stdout)

        XCTAssertEqual(json["world_size"] as? Int, 2)
        XCTAssertEqual(json["threads_per_rank"] as? Int, 2)
        XCTAssertEqual(json["timed_steps"] as? Int, 6)
        XCTAssertEqual(json["global_batch"] as? Int, 32)
        let split = try XCTUnwrap(json["step_ms"] as? [String: Double])
        let parts = ["data", "forward", "backward", "communication", "optimizer"].compactMap { split[$0] }
        XCTAssertEqual(parts.count, 5)
        XCTAssertTrue(parts.allSatisfy { $0 >= 0 }, "\(split)")
        XCTAssertEqual(parts.reduce(0, +), split["total"] ?? -1, accuracy: 1e-6)
        let shares = try XCTUnwrap(json["communication_share_per_rank"] as? [Double])
        XCTAssertEqual(shares.count, 2)
        XCTAssertEqual(json["communication_share"] as? Double, shares.max())
        XCTAssertTrue(shares.allSatisfy { $0 >= 0 && $0 < 1 })
        XCTAssertEqual((json["peak_rss_mib_per_rank"] as? [Double])?.count, 2)
        XCTAssertTrue((json["peak_rss_mib_per_rank"] as? [Double] ?? []).allSatisfy { $0 > 1 })
        XCTAssertGreaterThan(json["samples_per_s"] as? Double ?? 0, 0)
        XCTAssertGreaterThan(json["gradient_allreduce_ms"] as? Double ?? 0, 0)
        XCTAssertEqual((json["work_ms_p50_per_rank"] as? [Double])?.count, 2)
        XCTAssertGreaterThanOrEqual(json["imbalance_ms"] as? Double ?? -1, 0)
        // The sgemm peak: the best of the probe's runs, one after the last untimed step and one
        // after each timed step, on every rank; its rate over all runs cannot exceed it.
        XCTAssertEqual(json["sgemm_runs"] as? Int, 7)
        let best = try XCTUnwrap(json["sgemm_gflops_one_core"] as? Double)
        let alongside = try XCTUnwrap(json["sgemm_gflops_one_core_alongside"] as? Double)
        XCTAssertGreaterThan(alongside, 0)
        XCTAssertLessThanOrEqual(alongside, best * (1 + 1e-12))
        XCTAssertEqual((json["sgemm_gflops_one_core_per_rank"] as? [Double])?.first, best)
        XCTAssertEqual((json["sgemm_gflops_one_core_alongside_per_rank"] as? [Double])?.first, alongside)
        let achieved = try XCTUnwrap(json["achieved_gflops"] as? Double), cores = try XCTUnwrap(json["cores_used"] as? Int)
        XCTAssertEqual(json["share_of_peak"] as? Double ?? -1, achieved / (best * Double(cores)), accuracy: 1e-9)
        XCTAssertEqual(json["share_of_sgemm_alongside"] as? Double ?? -1, achieved / (alongside * Double(cores)), accuracy: 1e-9)
        // The MLP's FLOPs per sample: 2 x (784·256 + 256·128 + 128·10) forward, 3x that with backward.
        XCTAssertEqual(json["flops_per_sample"] as? Double, 3 * 2 * Double(784 * 256 + 256 * 128 + 128 * 10))

        // The step log: every timed step of every rank, and the same split as the summary.
        let rows = try String(contentsOfFile: stepLog, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap((try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Double])
        }
        XCTAssertEqual(rows.count, 12)
        XCTAssertEqual(Set(rows.map { $0["rank"] ?? -1 }), [0, 1])
        let meanForward = rows.map { $0["forward"] ?? 0 }.reduce(0, +) / Double(rows.count)
        XCTAssertEqual(meanForward, split["forward"] ?? -1, accuracy: 0.01 + 1e-3 * meanForward)
    }

    /// With no untimed step, no probe runs before the first step (it would delay the start
    /// that bench reports): one after each timed step.
    func testNoProbeRunsBeforeTheFirstStep() throws {
        let r = try MPIRun.run(ranks: 1, ["bench", "--model", "mlp", "--dataset", "synthetic", "--per-rank-batch", "8",
                                          "--untimed-steps", "0", "--timed-steps", "3", "--json"], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let json = try XCTUnwrap((try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any], r.stdout)
        XCTAssertEqual(json["timed_steps"] as? Int, 3)
        XCTAssertEqual(json["sgemm_runs"] as? Int, 3)
        XCTAssertGreaterThan(json["share_of_peak"] as? Double ?? 0, 0)
    }

    func testBadArgumentsAreNamed() throws {
        let r = try MPIRun.run(ranks: 1, ["bench", "--timed-steps", "0"], timeout: 30)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--timed-steps must be at least 1"), r.stderr)
        let t = try MPIRun.run(ranks: 1, ["bench", "--threads", "0"], timeout: 30)
        XCTAssertNotEqual(t.status, 0)
        XCTAssertTrue(t.stderr.contains("--threads must be between 1 and 256, got 0"), t.stderr)
        let l = try MPIRun.run(ranks: 1, ["bench", "--step-log", "/nonexistent/steps.jsonl"], timeout: 30)
        XCTAssertNotEqual(l.status, 0)
        XCTAssertTrue(l.stderr.contains("--step-log /nonexistent/steps.jsonl: cannot write into /nonexistent"), l.stderr)
    }

    /// Training options bench decides itself are refused, not silently replaced.
    func testOptionsBenchSetsItselfAreRefused() throws {
        for flag in [["--steps", "5"], ["--eval-every", "2"], ["--run-dir", "x"], ["--keep", "2"]] {
            let r = try MPIRun.run(ranks: 1, ["bench"] + flag, timeout: 30)
            XCTAssertEqual(r.status, 64, "\(flag): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("bench does not take \(flag[0])"), r.stderr)
        }
        let huge = try MPIRun.run(ranks: 1, ["bench", "--timed-steps", "2000000000"], timeout: 30)
        XCTAssertEqual(huge.status, 64, huge.stderr)
        XCTAssertTrue(huge.stderr.contains("--timed-steps must be at most 1000000"), huge.stderr)
    }
}
