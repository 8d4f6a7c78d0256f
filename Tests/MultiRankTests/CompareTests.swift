import Foundation
import XCTest

/// `ddptrain compare`: every variant trained, the report written, the charts right.
final class CompareTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-compare-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    /// A variant that diverges (--max-skipped-steps non-finite steps in a row) no longer ends
    /// the comparison: its row says "diverged", the other variants train, the report is
    /// written, and the status is 70. `--resume auto` keeps that result (the run is
    /// deterministic), and refuses finished variants trained with other settings.
    func testADivergedVariantIsReportedAndTheOthersTrain() throws {
        let run = scratch.appendingPathComponent("diverge").path
        let args = ["compare", "--model", "mlp", "--dataset", "synthetic", "--train-samples", "256", "--steps", "8", "--eval-every", "0",
                    "--max-skipped-steps", "2", "--vary", "lr=1e30,0.1", "--run-dir", run]
        let r = try MPIRun.run(ranks: 2, args)
        XCTAssertEqual(r.status, 70, r.stderr)
        XCTAssertTrue(r.stderr.contains("variant lr=1e30: stopping at step"), r.stderr)
        XCTAssertTrue(r.stderr.contains("ddptrain: compare: lr=1e30 diverged (the report says so)"), r.stderr)
        let markdown = try String(contentsOfFile: run + "/report.md", encoding: .utf8)
        XCTAssertTrue(markdown.contains("| lr=1e30 |") && markdown.contains("diverged"), markdown)
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/variants/lr=0.1/checkpoints/step-00000008.safetensors"))
        // The default batch given explicitly is the same comparison.
        let again = try MPIRun.run(ranks: 2, args + ["--per-rank-batch", "32", "--resume", "auto"])
        XCTAssertEqual(again.status, 70, again.stderr)
        XCTAssertTrue(again.stdout.contains("lr=1e30: finished earlier, kept") && again.stdout.contains("lr=0.1: finished earlier, kept"), again.stdout)
        let other = try MPIRun.run(ranks: 1, args.map { $0 == "8" ? "16" : $0 } + ["--resume", "auto"])
        XCTAssertEqual(other.status, 65, other.stderr)
        XCTAssertTrue(other.stderr.contains("variant lr=1e30 finished earlier with other settings (--steps 8, now 16; global batch 64, now 32)"), other.stderr)
    }

    /// 2 values of bn x 2 of lr on a slice of Fashion-MNIST: 2 epochs of 4 steps each.
    func testShortCompareWritesReportAndCharts() throws {
        let run = scratch.appendingPathComponent("cmp").path
        let args = ["compare", "--model", "mlp", "--train-samples", "256", "--per-rank-batch", "32", "--epochs", "2",
                    "--vary", "bn=sync,local", "--vary", "lr=0.1,0.05", "--run-dir", run, "--title", "test compare"]
        let r = try MPIRun.run(ranks: 2, args, timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        for file in ["report.md", "report.html", "loss.svg", "test-loss.svg", "accuracy.svg", "lr.svg"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(run)/\(file)"), "\(file) missing")
        }
        let names = ["bn=sync lr=0.1", "bn=sync lr=0.05", "bn=local lr=0.1", "bn=local lr=0.05"]
        // The table is printed at the end and is in the markdown, one row per variant.
        let markdown = try String(contentsOfFile: "\(run)/report.md", encoding: .utf8)
        for name in names {
            XCTAssertTrue(r.stdout.contains(name), r.stdout)
            XCTAssertEqual(markdown.components(separatedBy: "| \(name) |").count, 2, markdown)
        }
        // One series per variant; 8 steps of loss and 2 epochs of accuracy each.
        let loss = try String(contentsOfFile: "\(run)/loss.svg", encoding: .utf8)
        let accuracy = try String(contentsOfFile: "\(run)/accuracy.svg", encoding: .utf8)
        for (svg, points) in [(loss, 8), (accuracy, 2)] {
            XCTAssertEqual(svg.components(separatedBy: "<polyline class=\"series\"").count - 1, 4)
            for name in names {
                XCTAssertTrue(svg.contains("data-variant=\"\(name)\" data-points=\"\(points)\""), "\(name) in \(svg.prefix(300))")
            }
            XCTAssertTrue(svg.hasPrefix("<svg") && svg.contains("</svg>"))
        }
        let html = try String(contentsOfFile: "\(run)/report.html", encoding: .utf8)
        XCTAssertEqual(html.components(separatedBy: "<svg").count - 1, 4, "every chart inline")
        XCTAssertTrue(markdown.contains("--run-dir \(run) --title 'test compare'\n"), "the command pastes back: \(markdown.prefix(400))")
        XCTAssertFalse(html.contains("http://") && !html.contains("http://www.w3.org/2000/svg"), "no network references")
        XCTAssertFalse(html.contains("<script src") || html.contains("<link"), "self-contained")

        // A stopped compare resumes: finished variants are kept, not trained again.
        let again = try MPIRun.run(ranks: 2, args + ["--resume", "auto"], timeout: 120)
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertEqual(again.stdout.components(separatedBy: "finished earlier, kept").count - 1, 4, again.stdout)

        try renderInChromium(html: "\(run)/report.html")
    }

    /// The batch-norm modes side by side (issue 15): statistics over the global batch, over
    /// groups of 1 and of 4 shards (16 shards of 2 samples, 8 per rank), and per rank. Each
    /// variant trains (in a folder named bn=group_4: no colon in file names) and reports; the
    /// modes give different runs.
    func testBatchNormModesSideBySide() throws {
        let run = scratch.appendingPathComponent("bn-modes").path
        let r = try MPIRun.run(ranks: 2, ["compare", "--model", "mlp", "--train-samples", "256", "--global-batch", "32", "--shard-size", "2",
                                          "--steps", "6", "--eval-every", "0", "--vary", "bn=sync,group:1,group:4,local", "--run-dir", run],
                               timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        var losses: [Double] = []
        for bn in ["sync", "group:1", "group:4", "local"] {
            XCTAssertTrue(r.stdout.contains("bn=\(bn)"), r.stdout)
            let folder = "\(run)/variants/bn=\(bn.replacingOccurrences(of: ":", with: "_"))"
            let config = try String(contentsOfFile: "\(folder)/config.json", encoding: .utf8)
            XCTAssertTrue(config.contains("\"bn\":\"\(bn)\""), config)
            let rows = try String(contentsOfFile: "\(folder)/metrics.jsonl", encoding: .utf8)
            let last = try XCTUnwrap(rows.split(separator: "\n").last(where: { $0.contains("\"loss\"") }), rows)
            let row = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
            losses.append(try XCTUnwrap(row["loss"] as? Double, "\(row)"))
        }
        XCTAssertEqual(Set(losses).count, 4, "every mode trains its own way: \(losses)")
    }

    /// --seeds 2: each bn value trained with seeds 0 and 1, one row each with mean ± standard
    /// deviation, checked against the figures in the variants' own metrics.jsonl.
    func testSeedsAggregateIntoMeanAndStandardDeviation() throws {
        let run = scratch.appendingPathComponent("seeds").path
        let args = ["compare", "--model", "mlp", "--train-samples", "256", "--per-rank-batch", "32", "--epochs", "2",
                    "--vary", "bn=sync,local", "--seeds", "2", "--run-dir", run]
        let r = try MPIRun.run(ranks: 2, args, timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        let markdown = try String(contentsOfFile: "\(run)/report.md", encoding: .utf8)
        for bn in ["sync", "local"] {
            var accuracies: [Double] = [], testLosses: [Double] = [], trainLosses: [Double] = []
            for seed in 0..<2 {
                let rows = try String(contentsOfFile: "\(run)/variants/bn=\(bn)_seed=\(seed)/metrics.jsonl", encoding: .utf8)
                    .split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
                let evaluation = try XCTUnwrap(rows.last { $0["kind"] as? String == "eval" })
                accuracies.append(evaluation["test_accuracy"] as! Double)
                testLosses.append(evaluation["test_loss"] as! Double)
                // 2 ranks x 32 of 256 samples: 4 steps per epoch; the second epoch is steps 5 to 8.
                let lastEpoch = rows.filter { $0["kind"] as? String == "step" && ($0["step"] as! Int) > 4 }.map { $0["loss"] as! Double }
                XCTAssertEqual(lastEpoch.count, 4)
                trainLosses.append(lastEpoch.reduce(0, +) / 4)
            }
            func meanAndDeviation(_ v: [Double], _ format: String, scale: Double = 1) -> String {
                let mean = (v[0] + v[1]) / 2
                let deviation = abs(v[0] - v[1]) / Double(2).squareRoot()  // sample standard deviation of two values
                return String(format: format, mean * scale) + " ± " + String(format: format, deviation * scale)
            }
            let row = "| bn=\(bn) | 2 | \(meanAndDeviation(accuracies, "%.2f", scale: 100))% | "
            XCTAssertTrue(markdown.contains(row), "\(row) in \(markdown)")
            let cells = try XCTUnwrap(markdown.split(separator: "\n").first { $0.hasPrefix("| bn=\(bn) |") }).components(separatedBy: " | ")
            XCTAssertEqual(cells[4], meanAndDeviation(testLosses, "%.4f"))
            XCTAssertEqual(cells[5], meanAndDeviation(trainLosses, "%.4f"))
        }
        XCTAssertEqual(markdown.components(separatedBy: "| bn=").count - 1, 2, "one row per bn value")
        let loss = try String(contentsOfFile: "\(run)/loss.svg", encoding: .utf8)
        XCTAssertEqual(loss.components(separatedBy: "<polygon class=\"band\"").count - 1, 2, "a band per bn value")
    }

    /// --seeds out of range, beside --vary seed, or past the largest seed: refused by name, exit 64.
    func testBadSeedsAreRefused() throws {
        let base = ["compare", "--model", "mlp", "--run-dir", scratch.appendingPathComponent("never").path]
        for (args, message) in [(["--seeds", "0"], "--seeds takes 1 to 100 runs per variant; got 0"),
                                (["--seeds", "2", "--vary", "seed=1,2"], "--seeds and --vary seed=... both set the seeds; give one of them"),
                                (["--seeds", "3", "--seed", "18446744073709551614"], "--seeds 3 from --seed 18446744073709551614 runs past the largest seed")] {
            let r = try MPIRun.run(ranks: 1, base + args)
            XCTAssertEqual(r.status, 64, r.stderr)
            XCTAssertTrue(r.stderr.contains(message), r.stderr)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch.appendingPathComponent("never").path))
    }

    /// A variant stopped by a fault and resumed reports the wall time of both attempts: the
    /// first from its start to its last row kept in metrics.jsonl, the second as measured.
    func testResumedVariantReportsWallTimeOfEveryAttempt() throws {
        let run = scratch.appendingPathComponent("resumed").path
        let args = ["compare", "--model", "mlp", "--train-samples", "256", "--per-rank-batch", "32", "--epochs", "2",
                    "--vary", "bn=sync", "--run-dir", run]
        // 4 steps per epoch: the checkpoint after epoch 1 is kept, step 6 fails.
        let crashed = try MPIRun.run(ranks: 2, args, environment: ["DDPTRAIN_INJECT_FAULT": "1:6"])
        XCTAssertNotEqual(crashed.status, 0)
        let resumed = try MPIRun.run(ranks: 2, args + ["--resume", "auto"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)

        let variant = "\(run)/variants/bn=sync"
        let starts = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(variant)/attempts.json"))) as! [Double]
        XCTAssertEqual(starts.count, 2, "one start per attempt")
        let rowTimes = try String(contentsOfFile: "\(variant)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .map { (try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any])["time"] as! Double }
        let firstAttempt = try XCTUnwrap(rowTimes.filter { $0 >= starts[0] && $0 < starts[1] }.max()) - starts[0]
        XCTAssertGreaterThan(firstAttempt, 0)
        let saved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(variant)/summary.json"))) as! [String: Any]
        func number(_ object: [String: Any], _ camel: String, _ snake: String) -> Double? { (object[camel] ?? object[snake]) as? Double }
        let summary = try XCTUnwrap((saved["summary"] as? [String: Any]))
        let lastAttempt = try XCTUnwrap(number(summary, "wallSeconds", "wall_seconds"))
        // Within a few ulps of a Unix time: JSONSerialization may read the last digit of a time differently.
        XCTAssertEqual(try XCTUnwrap(number(saved, "totalWallSeconds", "total_wall_seconds")), firstAttempt + lastAttempt, accuracy: 1e-5)
    }

    /// The HTML renders to a non-empty PNG in headless Chromium (Debian's `chromium`).
    func renderInChromium(html: String) throws {
        try Chromium.screenshot(html: html, png: scratch.appendingPathComponent("report.png").path)
    }
}
