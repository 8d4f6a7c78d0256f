import DDPTrain
import Foundation
import XCTest

/// One spelling of JSON keys (snake_case) in what ddptrain writes, the flags' spelling still
/// read where earlier versions wrote it, and the warm-up's default.
final class FileFormatTests: XCTestCase {
    func temporaryFile(_ text: String, _ name: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString)-\(name)").path
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testConfigJSONIsSnakeCaseAndTheFlagsSpellingStillReads() throws {
        var config = TrainConfig()
        config.perRankBatch = 8
        config.runDir = "runs/x"
        config.warmupSteps = 7
        let json = config.json
        XCTAssertTrue(json.contains(#""per_rank_batch":8"#) && json.contains(#""run_dir":"runs/x""#) && json.contains(#""warmup_steps":7"#), json)
        XCTAssertFalse(json.contains("-batch") || json.contains("run-dir"), json)
        XCTAssertEqual(try JSONDecoder().decode(TrainConfig.self, from: Data(json.utf8)), config)
        // An earlier version's config.json and checkpoint configuration: the flags' spelling.
        let old = #"{"per-rank-batch": 8, "run-dir": "runs/x", "warmup-steps": 7, "clip-norm": null, "model": "mlp"}"#
        let decoded = try JSONDecoder().decode(TrainConfig.self, from: Data(old.utf8))
        XCTAssertEqual(decoded.perRankBatch, 8)
        XCTAssertEqual(decoded.runDir, "runs/x")
        XCTAssertEqual(decoded.warmupSteps, 7)
        XCTAssertNil(decoded.clipNorm)
        XCTAssertEqual(decoded.model, "mlp")
    }

    func testConfigFilesTakeEitherSpellingButNotBoth() throws {
        let snake = try TrainConfig.load(file: try temporaryFile("per_rank_batch: 64\nwarmup_steps: 10\n", "c.yaml"))
        XCTAssertEqual(snake.perRankBatch, 64)
        XCTAssertEqual(snake.warmupSteps, 10)
        let both = try temporaryFile("per_rank_batch: 64\nper-rank-batch: 32\n", "c.yaml")
        XCTAssertThrowsError(try TrainConfig.load(file: both)) { error in
            XCTAssertEqual("\(error)", "\(both): key 'per-rank-batch' is given twice, also as 'per_rank_batch'")
        }
        let wrong = try temporaryFile("warmup_steps: many\n", "c.yaml")
        XCTAssertThrowsError(try TrainConfig.load(file: wrong)) { error in
            XCTAssertTrue("\(error)".contains("key 'warmup_steps': expected an integer, got many"), "\(error)")
        }
    }

    /// A compare's summary.json: snake_case now, camelCase before; both read.
    func testSummariesAreSnakeCaseAndOldOnesRead() throws {
        let old = #"{"name": "bn=sync", "losses": [{"step": 1, "loss": 2.5}], "summary": {"worldSize": 2, "globalBatch": 64, "steps": 10,"#
            + #" "epochs": 1.0, "skippedSteps": 0, "finalTrainLoss": "nan", "testAccuracy": 0.5, "wallSeconds": 3, "samplesPerSecond": 100,"#
            + #" "communicationShare": 0.1, "parameterHashes": ["ab"], "accuracyPerEpoch": [0.5], "evaluatedEpochs": [1]}}"#
        let result = try JSONDecoder.ddptrain().decode(VariantResult.self, from: Data(old.utf8))
        XCTAssertEqual(result.summary.globalBatch, 64)
        XCTAssertEqual(result.summary.parameterHashes, ["ab"])
        XCTAssertTrue(result.summary.finalTrainLoss.isNaN)
        let written = String(decoding: try JSONEncoder.ddptrain().encode(result), as: UTF8.self)
        XCTAssertTrue(written.contains(#""global_batch":64"#) && written.contains(#""parameter_hashes":["ab"]"#)
                      && written.contains(#""final_train_loss":"nan""#), written)
        XCTAssertNil(written.range(of: #""[a-z]+[A-Z]"#, options: .regularExpression), written)
        let again = try JSONDecoder.ddptrain().decode(VariantResult.self, from: Data(written.utf8))
        XCTAssertEqual(again.summary.evaluatedEpochs, [1])
    }

    /// 5% of the run, rounded up, at most 200: a 16-step run warms up for 1 step, not 200.
    func testDefaultWarmupIsAShareOfTheRun() {
        XCTAssertEqual(TrainConfig.defaultWarmupSteps(totalSteps: 1), 1)
        XCTAssertEqual(TrainConfig.defaultWarmupSteps(totalSteps: 16), 1)
        XCTAssertEqual(TrainConfig.defaultWarmupSteps(totalSteps: 40), 2)
        XCTAssertEqual(TrainConfig.defaultWarmupSteps(totalSteps: 41), 3)
        XCTAssertEqual(TrainConfig.defaultWarmupSteps(totalSteps: 1000), 50)
        XCTAssertEqual(TrainConfig.defaultWarmupSteps(totalSteps: 4000), 200)
        XCTAssertEqual(TrainConfig.defaultWarmupSteps(totalSteps: 4690), 200)
        XCTAssertEqual(TrainConfig.defaultWarmupSteps(totalSteps: 1_000_000), 200)
    }
}
