import DDPTrain
import Foundation
import XCTest

/// metrics.jsonl's two kinds of rows, as RunLog writes them and as every reader takes them:
/// resume's truncation, compare's loss curve, the plot.
final class MetricsRowsTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-metrics-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    func stepRecord(_ step: Int, epoch: Int) -> StepRecord {
        StepRecord(step: step, epoch: epoch, loss: 2.5 / Double(step), accuracy: 0.125 * Double(step % 8), lr: 0.1, gradNorm: 1.5,
                   clipped: step % 2 == 0, skipped: false, samples: 32, dataSeconds: 0.001, forwardSeconds: 0.002,
                   backwardSeconds: 0.003, communicationSeconds: 0.0005, optimizerSeconds: 0.0001)
    }

    let evaluation = Evaluation(loss: 0.75, accuracy: 0.5, correct: 2, samples: 4, classAccuracy: [1, 0, nil],
                                confusionMatrix: [[2, 0, 0], [1, 0, 1], [0, 0, 0]])

    /// A run dir whose metrics.jsonl RunLog wrote: steps 1 to 8, 4 per epoch, an evaluation
    /// after each epoch.
    func loggedRun(_ name: String) throws -> RunDirectory {
        var config = TrainConfig()
        config.runDir = scratch.appendingPathComponent(name).path
        let run = RunDirectory(path: config.resolvedRunDir)
        _ = try run.create(config: config, keepMetricsUpTo: nil)
        let log = try RunLog(rank: 0, logEvery: 1000, json: false, metricsPath: run.metricsPath, tensorboardPath: run.tensorboardPath,
                             quiet: true)
        for step in 1...8 {
            try log.step(stepRecord(step, epoch: (step - 1) / 4 + 1), totalSteps: 8, stepsPerEpoch: 4)
            if step % 4 == 0 { try log.evaluation(epoch: step / 4, evaluation) }
        }
        return run
    }

    func rows(_ path: String) throws -> [[String: Any]] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    /// Every row has a kind and a time (Unix seconds, taken when it was logged); an evaluation
    /// row follows its step's row with that step and epoch.
    func testStepAndEvaluationRows() throws {
        let before = Date().timeIntervalSince1970
        let run = try loggedRun("rows")
        let after = Date().timeIntervalSince1970
        let rows = try rows(run.metricsPath)
        XCTAssertEqual(rows.map { $0["kind"] as? String }, Array(repeating: "step", count: 4) + ["eval"] + Array(repeating: "step", count: 4) + ["eval"])
        var lastTime = before
        for row in rows {
            let time = try XCTUnwrap(row["time"] as? Double, "\(row)")
            XCTAssertTrue(lastTime <= time && time <= after, "\(time) not in [\(lastTime), \(after)]")
            lastTime = time
        }
        let evaluation = rows[9]
        XCTAssertEqual(evaluation["step"] as? Int, 8)
        XCTAssertEqual(evaluation["epoch"] as? Int, rows[8]["epoch"] as? Int)
        XCTAssertEqual(evaluation["test_loss"] as? Double, 0.75)
        XCTAssertEqual(evaluation["test_accuracy"] as? Double, 0.5)
        XCTAssertEqual(evaluation["test_samples"] as? Int, 4)
        let perClass = try XCTUnwrap(evaluation["class_accuracy"] as? [Any])
        XCTAssertEqual(perClass.count, 3)
        XCTAssertEqual(perClass[0] as? Double, 1)
        XCTAssertEqual(perClass[1] as? Double, 0)
        XCTAssertTrue(perClass[2] is NSNull, "a class without test samples has no accuracy")
        XCTAssertEqual(Set(evaluation.keys), ["kind", "time", "step", "epoch", "test_loss", "test_accuracy", "test_samples", "class_accuracy"])
    }

    /// Resume keeps the rows up to the resumed step, evaluation rows included, byte for byte,
    /// and drops the later ones of both kinds, with no warning.
    func testResumeKeepsAndDropsEvaluationRowsWithTheirSteps() throws {
        let run = try loggedRun("resume")
        let lines = try String(contentsOfFile: run.metricsPath, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        var config = TrainConfig()
        config.runDir = run.path
        config.resume = "auto"
        let warnings = try run.create(config: config, keepMetricsUpTo: 4)
        XCTAssertEqual(warnings, [])
        XCTAssertEqual(try String(contentsOfFile: run.metricsPath, encoding: .utf8), lines[0..<5].joined(separator: "\n") + "\n")
        _ = try run.create(config: config, keepMetricsUpTo: 3)
        XCTAssertEqual(try String(contentsOfFile: run.metricsPath, encoding: .utf8), lines[0..<3].joined(separator: "\n") + "\n")
    }

    /// compare's loss curve takes the step rows only.
    func testCompareLossesLeaveEvaluationRowsOut() throws {
        let run = try loggedRun("compare")
        let losses = try VariantResult.losses(metricsPath: run.metricsPath)
        XCTAssertEqual(losses.map(\.step), Array(1...8))
        XCTAssertEqual(losses.map(\.loss), (1...8).map { 2.5 / Double($0) })
    }

    /// The plot's reader: both kinds, rows of earlier versions (no kind, no time) as steps,
    /// other lines counted.
    func testRunMetricsReadsBothKindsAndOlderRows() throws {
        let run = try loggedRun("plot")
        let old = #"{"accuracy":0.5,"clipped":false,"comm_s":0,"compute_s":0,"data_s":0,"epoch":2,"grad_norm":1,"loss":0.5,"lr":0.1,"#
            + #""optimizer_s":0,"samples":32,"skipped":false,"step":9}"#
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: run.metricsPath))
        handle.seekToEndOfFile()
        handle.write(Data((old + "\nnot json\n\n" + #"{"kind":"note","step":10}"# + "\n").utf8))
        try handle.close()
        let metrics = try RunMetrics(path: run.metricsPath)
        XCTAssertEqual(metrics.steps.map(\.step), Array(1...9))
        XCTAssertNil(metrics.steps.last?.time)
        XCTAssertEqual(metrics.evaluations.map(\.step), [4, 8])
        XCTAssertEqual(metrics.evaluations.first?.classAccuracy.count, 3)
        XCTAssertEqual(metrics.otherLines, 2)
    }

    /// The plot of a run: one series per curve, with as many points as there are steps or
    /// evaluations; self-contained.
    func testPlotHasTheExpectedSeries() throws {
        let run = try loggedRun("page")
        let html = try RunPlot(runDir: run.path).html
        for (name, points) in [("train (window mean)", 8), ("test", 2), ("lr", 8), ("grad norm (window mean)", 8), ("data", 8),
                               ("compute", 8), ("communication", 8), ("optimizer", 8), ("0 T-shirt/top", 2), ("1 Trouser", 2), ("2 Pullover", 0)] {
            XCTAssertTrue(html.contains("data-variant=\"\(name)\" data-points=\"\(points)\""), "\(name) with \(points) points")
        }
        XCTAssertEqual(html.components(separatedBy: "<svg").count - 1, 6)
        XCTAssertFalse(html.contains("<script") || html.contains("<link"), "self-contained")
    }
}
