import Foundation
import SafeTensors
import XCTest

/// The distributed invariants, checked by running the real binary under mpirun.
final class TrainTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-train-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    /// A short real run on a slice of Fashion-MNIST.
    func train(ranks: Int, _ extra: [String], run: String, timeout: Double = 120, environment: [String: String] = [:]) throws -> (MPIRun.Result, [String: Any]) {
        let args = ["train", "--train-samples", "512", "--eval-every", "0", "--json", "--log-every", "5",
                    "--run-dir", scratch.appendingPathComponent(run).path] + extra
        let r = try MPIRun.run(ranks: ranks, args, timeout: timeout, environment: environment)
        XCTAssertFalse(r.timedOut, "train timed out: \(r.stderr)")
        let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let json = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? [:]
        return (r, json)
    }

    /// The run's last checkpoint.
    func finalCheckpoint(run: String) throws -> String {
        try Checkpoints.newest(runDir: scratch.appendingPathComponent(run).path)
    }

    /// Final parameters and buffers (Float32, optimizer state left out), for exact comparison.
    func finalTensors(run: String) throws -> [String: [Float]] {
        let file = try SafeTensorsFile(path: try finalCheckpoint(run: run))
        var out: [String: [Float]] = [:]
        for t in file.tensors where t.dtype == .f32 && !t.name.hasPrefix("optim.") {
            out[t.name] = try file.values(of: t.name, as: Float.self)
        }
        return out
    }

    /// Checkpoints.relativeDifference of two runs' last checkpoints.
    func relativeDifference(_ a: String, _ b: String) throws -> Double {
        try Checkpoints.relativeDifference(try finalCheckpoint(run: a), try finalCheckpoint(run: b))
    }

    // I1: replicas are bitwise identical at the end, on 2 and 4 ranks, with both BN modes.
    func testReplicasAgreeBitwise() throws {
        for (ranks, bn) in [(2, "sync"), (4, "local")] {
            let (r, json) = try train(ranks: ranks, ["--model", "mlp", "--steps", "12", "--per-rank-batch", "16", "--bn", bn,
                                                     "--check-replicas", "4"], run: "i1-\(ranks)")
            XCTAssertEqual(r.status, 0, r.stderr)
            let hashes = try XCTUnwrap(json["parameter_hashes"] as? [String], r.stdout)
            XCTAssertEqual(hashes.count, ranks)
            XCTAssertEqual(Set(hashes).count, 1, "replicas differ: \(hashes)")
        }
    }

    // I2: the same configuration gives the same bits at any world size and thread count.
    // Global batch 48 in shards of 4: 12 shards, which 1, 2, 3 and 4 ranks and 2 threads
    // divide. Sync-BN, dropout, weight decay and clipping by norm, 40 steps (resnet8 and its
    // max-pool-free residual blocks, fmnist-cnn and its max pooling, whose near-ties flipped
    // under rounding differences before virtual shards); group:2 the same. Local BN, whose
    // statistics are a rank's, changes with the world size (it is meant to).
    func testSameBitsAtAnyWorldSizeAndThreadCount() throws {
        for model in ["fmnist-cnn", "resnet8"] {
            let common = ["--model", model, "--steps", "40", "--global-batch", "48", "--shard-size", "4", "--dropout", "0.25",
                          "--weight-decay", "5e-4", "--clip-norm", "1", "--lr", "0.05", "--seed", "11"]
            for bn in ["sync", "group:2"] {
                var reference: [String: [UInt8]]?
                for (ranks, threads) in [(1, 1), (2, 1), (4, 1), (1, 2), (3, 1)] {
                    let run = "\(model)-\(bn)-\(ranks)x\(threads)"
                    let (r, json) = try train(ranks: ranks, common + ["--bn", bn, "--threads", String(threads), "--check-replicas", "1"],
                                              run: run, timeout: 300)
                    XCTAssertEqual(r.status, 0, r.stderr)
                    XCTAssertEqual(Set(json["parameter_hashes"] as? [String] ?? []).count, 1, "\(run): replicas differ (I1)")
                    // Every tensor of the checkpoint: parameters, buffers, counters, optimizer state.
                    let tensors = try Checkpoints.tensorBytes(try finalCheckpoint(run: run))
                    if let reference {
                        XCTAssertTrue(tensors == reference, "\(run): not the bits of 1 rank x 1 thread")
                    } else {
                        reference = tensors
                    }
                }
            }
            let (local, _) = try train(ranks: 4, common + ["--bn", "local", "--threads", "1"], run: "\(model)-local-4")
            XCTAssertEqual(local.status, 0, local.stderr)
            XCTAssertGreaterThan(try relativeDifference("\(model)-sync-1x1", "\(model)-local-4"), 1e-2,
                                 "\(model): local BN should differ clearly from the 1-rank run")
        }
    }

    // A run stopped at 4 ranks and resumed at 2 (the shard size kept from the checkpoint)
    // ends with the bytes of the run that never stopped; so does one resumed at 3 ranks with
    // 2 threads each.
    func testResumeAtAnotherWorldSizeContinuesBitForBit() throws {
        let common = ["--model", "fmnist-cnn", "--steps", "24", "--global-batch", "24", "--dropout", "0.25", "--lr", "0.05",
                      "--checkpoint-every", "5", "--seed", "3", "--threads", "1"]
        let (whole, _) = try train(ranks: 4, common, run: "whole")
        XCTAssertEqual(whole.status, 0, whole.stderr)
        for (ranks, threads) in [(2, 1), (3, 2)] {
            let run = "resumed-\(ranks)"
            let (failed, _) = try train(ranks: 4, common, run: run, environment: ["DDPTRAIN_INJECT_FAULT": "1:13"])
            XCTAssertNotEqual(failed.status, 0, "the injected fault ends the first attempt")
            let (resumed, _) = try train(ranks: ranks, common.filter { $0 != "--threads" && $0 != "1" } + ["--threads", String(threads), "--resume", "auto"],
                                         run: run)
            XCTAssertEqual(resumed.status, 0, resumed.stderr)
            XCTAssertTrue(resumed.stderr.contains("at step 10"), resumed.stderr)
            XCTAssertTrue(try finalTensors(run: run) == finalTensors(run: "whole"), "\(ranks) x \(threads) after 4 x 1: not the bits of the whole run")
        }
    }

    /// Warnings found while setting up are said once, by rank 0, before training: options that
    /// do not apply, and more threads than the node has cores.
    func testSetupWarningsAreSaid() throws {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let (r, _) = try train(ranks: 2, ["--model", "lenet5", "--steps", "2", "--per-rank-batch", "8", "--dropout", "0.1",
                                          "--optimizer", "adam", "--momentum", "0.5", "--threads", String(cores)], run: "warnings")
        XCTAssertEqual(r.status, 0, r.stderr)
        for expected in ["--dropout: model lenet5 has no dropout layer", "--momentum applies to --optimizer sgd only",
                         "2 ranks x \(cores) compute thread\(cores == 1 ? "" : "s") on this node's \(cores) core\(cores == 1 ? "" : "s")"] {
            XCTAssertEqual(r.stderr.components(separatedBy: expected).count - 1, 1, "'\(expected)' once in: \(r.stderr)")
        }
    }

    // I3: uneven blocks give the exact global-batch gradient, bit for bit; an empty block
    // contributes nothing at all (4 ranks with one empty block equal 1 and 3 ranks).
    func testUnevenAndEmptySlicesMatchOneRank() throws {
        func common(_ batch: Int, _ shard: Int, _ steps: Int) -> [String] {
            ["--model", "mlp", "--steps", String(steps), "--global-batch", String(batch), "--shard-size", String(shard), "--dropout", "0",
             "--lr", "0.05", "--schedule", "constant", "--warmup-steps", "0", "--no-shuffle"]
        }
        // Global batch 10 in shards of 3 (3, 3, 3, 1) on 4 ranks, one shard each.
        XCTAssertEqual(try train(ranks: 1, common(10, 3, 8), run: "uneven-1").0.status, 0)
        let (uneven, json) = try train(ranks: 4, common(10, 3, 8), run: "uneven-4")
        XCTAssertEqual(uneven.status, 0, uneven.stderr)
        XCTAssertEqual(json["steps"] as? Int, 8)
        XCTAssertTrue(try finalTensors(run: "uneven-1") == finalTensors(run: "uneven-4"))
        // Global batch 18 in shards of 2: 9 shards, which no block of 3 ranks holds as one
        // subtree (blocks 0..<3, 3..<6, 6..<9: two pieces each), nor 2 ranks x 3 threads.
        XCTAssertEqual(try train(ranks: 1, common(18, 2, 8) + ["--threads", "1"], run: "pieces-1").0.status, 0)
        for (ranks, threads) in [(3, 1), (2, 3)] {
            let (r, _) = try train(ranks: ranks, common(18, 2, 8) + ["--threads", String(threads)], run: "pieces-\(ranks)x\(threads)")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(try finalTensors(run: "pieces-1") == finalTensors(run: "pieces-\(ranks)x\(threads)"), "\(ranks) x \(threads)")
        }
        // Global batch 3 in shards of 1 on 4 ranks: blocks of 1, 1, 1, 0.
        for ranks in [1, 3, 4] { XCTAssertEqual(try train(ranks: ranks, common(3, 1, 4), run: "empty-\(ranks)").0.status, 0) }
        XCTAssertTrue(try finalTensors(run: "empty-1") == finalTensors(run: "empty-4"))
        XCTAssertEqual(try finalTensors(run: "empty-3"), try finalTensors(run: "empty-4"))
    }

    // Non-finite gradients: every rank skips the same step and the replicas stay equal.
    func testNonFiniteGradientIsSkippedOnEveryRank() throws {
        let (r, json) = try train(ranks: 2, ["--model", "mlp", "--steps", "6", "--per-rank-batch", "8"], run: "nan",
                                  environment: ["DDPTRAIN_INJECT_NAN": "1:2"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(json["skipped_steps"] as? Int, 1)
        // Injected at step index 2: the third step, named as metrics.jsonl and checkpoints number it.
        XCTAssertTrue(r.stderr.contains("step 3: non-finite gradient or loss; step skipped"), r.stderr)
        XCTAssertEqual(Set(json["parameter_hashes"] as? [String] ?? []).count, 1)
        XCTAssertEqual(try skippedSteps(run: "nan"), [3])
    }

    /// The steps metrics.jsonl marks as skipped.
    func skippedSteps(run: String) throws -> [Int] {
        let metrics = try String(contentsOf: scratch.appendingPathComponent(run + "/metrics.jsonl"), encoding: .utf8)
        return try metrics.split(separator: "\n").compactMap { line in
            let record = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return record?["skipped"] as? Bool == true ? record?["step"] as? Int : nil
        }
    }

    /// Every tensor of a run's last checkpoint (optimizer state and counters included), as bits.
    func allTensorBits(run: String) throws -> [String: [UInt64]] {
        let file = try SafeTensorsFile(path: try finalCheckpoint(run: run))
        var out: [String: [UInt64]] = [:]
        for t in file.tensors {
            switch t.dtype {
            case .f32: out[t.name] = try file.values(of: t.name, as: Float.self).map { UInt64($0.bitPattern) }
            case .i64: out[t.name] = try file.values(of: t.name, as: Int64.self).map { UInt64(bitPattern: $0) }
            default: XCTFail("unexpected dtype \(t.dtype) of \(t.name)")
            }
        }
        return out
    }

    // A skipped step leaves no trace: a NaN in one rank's input at step 1 makes that step's
    // batch statistics (sync-BN: every rank's) non-finite; the step is skipped, and the
    // checkpoint after it holds the same bits, parameters, running statistics,
    // num_batches_tracked and optimizer state, as a run that stopped before it. Once with
    // the poison in the forward (input), once in the gradient only, with both BN modes.
    func testSkippedStepLeavesNoTrace() throws {
        let common = ["--model", "mlp", "--per-rank-batch", "8", "--schedule", "constant", "--warmup-steps", "0"]
        for bn in ["sync", "local"] {
            let (before, _) = try train(ranks: 2, common + ["--bn", bn, "--steps", "1"], run: "trace-\(bn)-1")
            XCTAssertEqual(before.status, 0, before.stderr)
            let expected = try allTensorBits(run: "trace-\(bn)-1")
            XCTAssertNotNil(expected["2.running_var"])
            for variable in ["DDPTRAIN_INJECT_NAN_INPUT", "DDPTRAIN_INJECT_NAN"] {
                let run = "trace-\(bn)-\(variable)"
                let (r, json) = try train(ranks: 2, common + ["--bn", bn, "--steps", "2"], run: run, environment: [variable: "1:1"])
                XCTAssertEqual(r.status, 0, r.stderr)
                XCTAssertEqual(json["skipped_steps"] as? Int, 1, r.stderr)
                let tensors = try allTensorBits(run: run)
                for name in expected.keys.sorted() {
                    XCTAssertEqual(tensors[name], expected[name], "\(bn), \(variable): \(name) changed in a skipped step")
                }
                let runningVar = try SafeTensorsFile(path: try finalCheckpoint(run: run)).values(of: "2.running_var", as: Float.self)
                XCTAssertTrue(runningVar.allSatisfy { $0.isFinite }, "\(bn), \(variable): running_var not finite")
            }
        }
    }

    // Local batch norm: the running statistics averaged before a checkpoint come from the
    // ranks that normalized samples. A global batch of 2 on 3 ranks gives slices 1, 1, 0:
    // the third rank's statistics never moved, and the result equals 2 ranks', bit for bit.
    func testLocalStatisticsAverageLeavesOutEmptyRanks() throws {
        // All batch norms spatial, so a slice of 1 sample has more than one value per channel.
        let model = scratch.appendingPathComponent("small-cnn.yaml")
        try "name: small-cnn\nlayers:\n  - {type: conv2d, out: 4, kernel: 3, padding: 1, bias: false}\n  - batchnorm\n  - relu\n  - {type: maxpool2d, kernel: 2}\n  - flatten\n  - {type: linear, out: 10}\n"
            .write(to: model, atomically: false, encoding: .utf8)
        let common = ["--model", model.path, "--global-batch", "2", "--steps", "3", "--bn", "local", "--no-shuffle", "--threads", "1"]
        for ranks in [2, 3] {
            let (r, _) = try train(ranks: ranks, common, run: "local-avg-\(ranks)")
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let two = try finalTensors(run: "local-avg-2"), three = try finalTensors(run: "local-avg-3")
        XCTAssertNotNil(two["1.running_var"])
        XCTAssertEqual(three["1.running_mean"], two["1.running_mean"], "3 ranks with an empty one vs 2 ranks")
        XCTAssertEqual(three["1.running_var"], two["1.running_var"], "3 ranks with an empty one vs 2 ranks")
        XCTAssertEqual(three, two)
    }

    func testConsecutiveNonFiniteStepsStopTheJob() throws {
        let (r, _) = try train(ranks: 2, ["--model", "mlp", "--steps", "20", "--per-rank-batch", "8", "--max-skipped-steps", "3"],
                               run: "nan-stop", environment: ["DDPTRAIN_INJECT_NAN": "0:4+"])
        XCTAssertEqual(r.status, 70, r.stderr)
        // Every rank knows it at the same step: said once, by rank 0, and no MPI_Abort.
        // Step indexes 4, 5, 6 are steps 5, 6 and 7, each logged as skipped, the last one too.
        XCTAssertEqual(r.stderr.components(separatedBy: "stopping at step 7: 3 consecutive steps had non-finite gradients").count, 2, r.stderr)
        for step in 5...7 { XCTAssertTrue(r.stderr.contains("step \(step): non-finite gradient or loss; step skipped"), r.stderr) }
        XCTAssertEqual(try skippedSteps(run: "nan-stop"), [5, 6, 7])
        XCTAssertFalse(r.stderr.contains("MPI_ABORT"), r.stderr)
        XCTAssertLessThan(r.seconds, 30)
    }

    // By default a replica divergence is found before the next checkpoint is written (every
    // checkpoint checks the replicas first), reported once, and every rank leaves together
    // with status 1 (a restart from the last good checkpoint may cure a bit flip).
    func testDivergenceIsFoundBeforeACheckpointIsWritten() throws {
        let (r, _) = try train(ranks: 2, ["--model", "mlp", "--steps", "8", "--per-rank-batch", "8", "--checkpoint-every", "4"],
                               run: "diverge-default", environment: ["DDPTRAIN_INJECT_DIVERGENCE": "1:5"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderr.components(separatedBy: "stopping: replicas diverged at step 8").count, 2, "reported once: \(r.stderr)")
        XCTAssertFalse(r.stderr.contains("MPI_ABORT"), r.stderr)
        let written = try FileManager.default.contentsOfDirectory(atPath: scratch.appendingPathComponent("diverge-default/checkpoints").path)
        XCTAssertEqual(written.filter { $0.hasSuffix(".safetensors") }, ["step-00000004.safetensors"], "no checkpoint of diverged replicas")
    }

    // Evaluation is exact and independent of the world size, per class too.
    func testEvaluationEqualsOneRankEvaluation() throws {
        let (trained, _) = try train(ranks: 2, ["--model", "mlp", "--steps", "5", "--per-rank-batch", "16"], run: "eval")
        XCTAssertEqual(trained.status, 0, trained.stderr)
        let dir = scratch.appendingPathComponent("eval/checkpoints")
        let last = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted().last)
        var results: [[String: Any]] = []
        // Ranks, and compute threads per rank: each thread takes its part of every batch.
        for (ranks, threads) in [(1, 1), (3, 1), (4, 1), (2, 3)] {
            let r = try MPIRun.run(ranks: ranks, ["eval", "--checkpoint", dir.appendingPathComponent(last).path, "--json",
                                                  "--threads", String(threads)])
            XCTAssertEqual(r.status, 0, r.stderr)
            let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
            results.append(try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], r.stdout))
        }
        for r in results {
            XCTAssertEqual(r["samples"] as? Int, 10000)
            XCTAssertEqual(r["correct"] as? Int, results[0]["correct"] as? Int)
            XCTAssertEqual(try XCTUnwrap(r["loss"] as? Double), try XCTUnwrap(results[0]["loss"] as? Double), accuracy: 1e-6)
            XCTAssertEqual(r["confusion_matrix"] as? [[Int]], results[0]["confusion_matrix"] as? [[Int]])
            XCTAssertEqual(r["class_accuracy"] as? [Double], results[0]["class_accuracy"] as? [Double])
        }
        // Rows: the true class (Fashion-MNIST's test set has 1000 of each); the diagonal: the correct ones.
        let matrix = try XCTUnwrap(results[0]["confusion_matrix"] as? [[Int]])
        XCTAssertEqual(matrix.map { $0.count }, Array(repeating: 10, count: 10))
        XCTAssertEqual(matrix.map { $0.reduce(0, +) }, Array(repeating: 1000, count: 10))
        XCTAssertEqual((0..<10).map { matrix[$0][$0] }.reduce(0, +), results[0]["correct"] as? Int)
        XCTAssertEqual(results[0]["class_accuracy"] as? [Double], (0..<10).map { Double(matrix[$0][$0]) / 1000 })

        let text = try MPIRun.run(ranks: 2, ["eval", "--checkpoint", dir.appendingPathComponent(last).path])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains(String(format: "\naccuracy per class:\n  0 T-shirt/top  %6.2f%% (%d of 1000)\n",
                                                  Double(matrix[0][0]) / 10, matrix[0][0])), text.stdout)
        let header = "confusion matrix (rows: true class, columns: predicted class):\n"
        let table = try XCTUnwrap(text.stdout.components(separatedBy: header).last)
        let tableRows = table.split(separator: "\n")
        XCTAssertEqual(tableRows.count, 11, table)
        XCTAssertEqual(tableRows[10].split(separator: " ").suffix(10).compactMap { Int($0) }, matrix[9], "Ankle boot's row")
    }

    // I1's watchdog: --check-replicas stops the job when a replica drifts.
    func testCheckReplicasStopsOnDivergence() throws {
        let (r, _) = try train(ranks: 4, ["--model", "mlp", "--steps", "12", "--per-rank-batch", "8", "--check-replicas", "4"],
                               run: "diverge", environment: ["DDPTRAIN_INJECT_DIVERGENCE": "2:5"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("stopping: replicas diverged at step 8: parameter hashes differ"), r.stderr)
        XCTAssertTrue(r.stderr.contains("ranks 2: "), r.stderr)
        XCTAssertEqual(r.stderr.components(separatedBy: "replicas diverged").count, 2, "reported once: \(r.stderr)")
    }

    /// CIFAR-10's binary format end to end: a few records per file, resnet8 on 3x32x32.
    func testTrainsOnCIFAR10BinaryFiles() throws {
        let dir = scratch.appendingPathComponent("cifar-10-batches-bin")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for (i, name) in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"].enumerated() {
            var data = Data()
            for record in 0..<12 {
                data.append(UInt8((record + i) % 10))
                data.append(contentsOf: (0..<3072).map { UInt8(truncatingIfNeeded: $0 &* (record + 3) &+ i) })
            }
            try data.write(to: dir.appendingPathComponent("\(name).bin"))
        }
        let (r, json) = try train(ranks: 2, ["--dataset", "cifar10", "--data-dir", scratch.path, "--train-samples", "60", "--model", "resnet8", "--steps", "3",
                                             "--per-rank-batch", "4", "--eval-every", "1"], run: "cifar")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(json["steps"] as? Int, 3)
        XCTAssertNotNil(json["test_accuracy"] as? Double)
        let config = try String(contentsOf: scratch.appendingPathComponent("cifar/config.json"), encoding: .utf8)
        XCTAssertTrue(config.contains("\"dataset\":\"cifar10\""), config)
    }

    /// Rank 0 alone speaks: plain lines when not on a terminal, a progress bar on one, the
    /// summary once; metrics.jsonl has every step with every field and a time, then the evaluation.
    func testOutputComesFromRankZeroOnly() throws {
        let args = ["train", "--model", "mlp", "--train-samples", "512", "--steps", "12", "--per-rank-batch", "8", "--log-every", "4",
                    "--eval-every", "1"]
        let plain = try MPIRun.run(ranks: 4, args + ["--run-dir", scratch.appendingPathComponent("plain").path])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        XCTAssertEqual(plain.stdout.components(separatedBy: "train: mlp on fashion-mnist").count - 1, 1, plain.stdout)
        XCTAssertEqual(plain.stdout.components(separatedBy: "\nstep ").count - 1, 3, "steps 4, 8, 12: \(plain.stdout)")
        XCTAssertEqual(plain.stdout.components(separatedBy: "done: 12 steps").count - 1, 1, plain.stdout)
        XCTAssertEqual(plain.stdout.components(separatedBy: "test accuracy").count - 1, 2, "one evaluation line and the summary")
        XCTAssertFalse(plain.stdout.contains("\r"), "no progress bar when not on a terminal")
        XCTAssertEqual(plain.stderr, "", "other ranks stay quiet")

        let bar = try MPIRun.run(ranks: 2, args + ["--run-dir", scratch.appendingPathComponent("bar").path],
                                 environment: ["DDPTRAIN_PROGRESS": "bar"])
        XCTAssertEqual(bar.status, 0, bar.stderr)
        XCTAssertTrue(bar.stdout.contains("\r[") && bar.stdout.contains("ETA") && bar.stdout.contains("samples/s"), bar.stdout)

        let metrics = try String(contentsOf: scratch.appendingPathComponent("plain/metrics.jsonl"), encoding: .utf8)
        let lines = metrics.split(separator: "\n")
        XCTAssertEqual(lines.count, 13)
        for (i, line) in lines.prefix(12).enumerated() {
            let record = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            XCTAssertEqual(record["kind"] as? String, "step")
            XCTAssertEqual(record["step"] as? Int, i + 1)
            for key in ["time", "loss", "accuracy", "lr", "grad_norm", "clipped", "skipped", "samples", "data_s", "compute_s", "comm_s", "optimizer_s"] {
                XCTAssertNotNil(record[key], "\(key) missing in \(line)")
            }
            XCTAssertEqual(record["samples"] as? Int, 32)
        }
        // The evaluation at the last step: the test set's loss and accuracy, and each class's accuracy.
        let evaluation = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(lines[12].utf8)) as? [String: Any])
        XCTAssertEqual(evaluation["kind"] as? String, "eval")
        XCTAssertEqual(evaluation["step"] as? Int, 12)
        XCTAssertEqual(evaluation["test_samples"] as? Int, 10_000)
        let accuracy = try XCTUnwrap(evaluation["test_accuracy"] as? Double)
        XCTAssertTrue(plain.stdout.contains(String(format: "test accuracy %.2f%%", accuracy * 100)), plain.stdout)
        // Fashion-MNIST's test set has 1000 samples of each class: the overall accuracy is their mean.
        let perClass = try XCTUnwrap(evaluation["class_accuracy"] as? [Double])
        XCTAssertEqual(perClass.count, 10)
        XCTAssertEqual(perClass.reduce(0, +) / 10, accuracy, accuracy: 1e-12)
        for key in ["time", "epoch", "test_loss"] { XCTAssertNotNil(evaluation[key], "\(key) missing in \(lines[12])") }
    }

    /// --config: the file's keys, and flags override them.
    func testConfigFileWithFlagsOverriding() throws {
        let file = scratch.appendingPathComponent("run.yaml")
        try "model: mlp\nsteps: 3\nper-rank-batch: 8\nlr: 0.02\nbn: local\n".write(to: file, atomically: false, encoding: .utf8)
        let (r, json) = try train(ranks: 2, ["--config", file.path, "--steps", "5"], run: "config")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(json["steps"] as? Int, 5, "the flag wins over the file")
        XCTAssertEqual(json["global_batch"] as? Int, 16)
        let config = try String(contentsOf: scratch.appendingPathComponent("config/config.json"), encoding: .utf8)
        XCTAssertTrue(config.contains("\"bn\":\"local\"") && config.contains("\"lr\":0.02") && config.contains("\"steps\":5"), config)
    }

    /// --init-from a state_dict that PyTorch saved with safetensors.torch.save_file: it loads,
    /// and the first step's loss (from the loaded weights, before any update) is PyTorch's
    /// training-mode loss on the same 32 samples.
    func testInitFromAPyTorchStateDict() throws {
        let python = ProcessInfo.processInfo.environment["DDPTRAIN_TORCH_PYTHON"] ?? "/opt/ddptrain-peers/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw XCTSkip("no PyTorch at \(python) (bash ../shared/peers/setup.sh installs it; or set DDPTRAIN_TORCH_PYTHON)")
        }
        let weights = scratch.appendingPathComponent("torch.safetensors").path
        let script = """
        import gzip, sys, numpy as np, torch, torch.nn as nn
        from safetensors.torch import save_file
        torch.manual_seed(3)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
                              nn.Linear(256, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))
        save_file(model.state_dict(), sys.argv[1])
        d = "/usr/share/datasets/fashion-mnist"
        x = np.frombuffer(gzip.open(d + "/train-images-idx3-ubyte.gz").read(), np.uint8, offset=16)[:32 * 784].reshape(32, 1, 28, 28)
        y = np.frombuffer(gzip.open(d + "/train-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)[:32]
        x = (torch.tensor(x, dtype=torch.float32) / 255 - 0.2860) / 0.3530
        model[4].p = 0.0
        model.train()
        print(nn.functional.cross_entropy(model(x), torch.tensor(y, dtype=torch.long)).item())
        """
        let scriptPath = scratch.appendingPathComponent("save.py")
        try script.write(to: scriptPath, atomically: false, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [scriptPath.path, weights]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let torchLoss = try XCTUnwrap(Double(String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)))
        let (r, _) = try train(ranks: 2, ["--model", "mlp", "--init-from", weights, "--steps", "1", "--global-batch", "32",
                                          "--no-shuffle", "--dropout", "0"], run: "torchinit")
        XCTAssertEqual(r.status, 0, r.stderr)
        let metrics = try String(contentsOf: scratch.appendingPathComponent("torchinit/metrics.jsonl"), encoding: .utf8)
        let first = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((metrics.split(separator: "\n").first ?? "").utf8)) as? [String: Any])
        XCTAssertEqual(try XCTUnwrap(first["loss"] as? Double), torchLoss, accuracy: 1e-5)
    }
}
