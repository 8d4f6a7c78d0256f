import Foundation
import SafeTensors
import XCTest

/// Checkpoints and resume (I4, I6), through the real binary.
final class CheckpointTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-ckpt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    func runDir(_ name: String) -> String { scratch.appendingPathComponent(name).path }

    /// 512 training samples, per-rank batch 32 on 2 ranks: 8 steps per epoch.
    func train(ranks: Int = 2, _ extra: [String], run: String, environment: [String: String] = [:],
               timeout: Double = 120) throws -> MPIRun.Result {
        let r = try MPIRun.run(ranks: ranks, trainArguments(extra, run: run), timeout: timeout, environment: environment)
        XCTAssertFalse(r.timedOut, r.stderr)
        return r
    }

    func trainArguments(_ extra: [String], run: String) -> [String] {
        ["train", "--model", "mlp", "--train-samples", "512", "--eval-every", "0", "--log-every", "4", "--run-dir", runDir(run)] + extra
    }

    /// `mpirun ddptrain args` as root without the capabilities that let root read any file,
    /// so that file permissions apply (the tests run as root).
    func runWithoutPermissionBypass(ranks: Int, _ args: [String], timeout: Double = 120) throws -> MPIRun.Result {
        let dropped = "-dac_override,-dac_read_search"
        let mpirun = ["mpirun", "-n", String(ranks), "--oversubscribe", "--bind-to", "none", "-x", "OPENBLAS_NUM_THREADS"]
        return try Background("/usr/bin/setpriv", ["--inh-caps=" + dropped, "--bounding-set=" + dropped, "/usr/bin/env"]
                                  + mpirun + [MPIRun.binary] + args,
                              environment: ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                                            "OPENBLAS_NUM_THREADS": "1"]).wait(timeout: timeout)
    }

    func checkpoints(_ run: String) -> [String] { Checkpoints.names(runDir: runDir(run)) }
    func tensorBytes(_ path: String) throws -> [String: [UInt8]] { try Checkpoints.tensorBytes(path) }
    func lastCheckpoint(_ run: String) throws -> String { try Checkpoints.newest(runDir: runDir(run)) }

    func testNamingKeepAndContents() throws {
        let r = try train(["--steps", "20", "--per-rank-batch", "16", "--checkpoint-every", "4", "--keep", "2"], run: "keep")
        XCTAssertEqual(r.status, 0, r.stderr)
        // 16 steps per epoch: checkpoints at 4, 8, 12, 16 (also epoch end), 20 (end); the newest 2 stay.
        XCTAssertEqual(checkpoints("keep"), ["step-00000016.safetensors", "step-00000020.safetensors"])
        let file = try SafeTensorsFile(path: try lastCheckpoint("keep"))
        XCTAssertEqual(file.checksumVerified, true)
        let m = file.metadata
        XCTAssertEqual(m["step"], "20")
        XCTAssertEqual(m["epoch"], "1")
        XCTAssertEqual(m["position_in_epoch"], "4")
        XCTAssertEqual(m["world_size"], "2")
        XCTAssertEqual(m["global_batch"], "32")
        XCTAssertEqual(m["normalize.mean"], "0.286")
        XCTAssertEqual(m["normalize.std"], "0.353")
        XCTAssertNotNil(m["config"])
        XCTAssertEqual(m["steps_per_epoch"], "16")
        XCTAssertEqual(m["optimizer_steps"], "20")
        XCTAssertEqual(m["skipped_steps"], "0")
        XCTAssertEqual(m["consecutive_skipped_steps"], "0")
        // PyTorch's nn.Sequential names for the mlp preset, with optimizer state apart.
        let names = Set(file.tensors.map(\.name))
        let model: Set<String> = ["1.weight", "2.weight", "2.bias", "2.running_mean", "2.running_var", "2.num_batches_tracked",
                                  "5.weight", "6.weight", "6.bias", "6.running_mean", "6.running_var", "6.num_batches_tracked",
                                  "8.weight", "8.bias"]
        XCTAssertEqual(names.filter { !$0.hasPrefix("optim.") }, model)
        XCTAssertTrue(names.contains("optim.1.weight.momentum_buffer"))
        XCTAssertEqual(file.tensor(named: "2.num_batches_tracked")?.dtype, .i64)
        XCTAssertEqual(try file.values(of: "2.num_batches_tracked", as: Int64.self), [20])
        XCTAssertEqual(file.tensor(named: "1.weight")?.shape, [256, 784])
    }

    /// I4: an interrupted run resumed from its checkpoint ends with the same bytes as an
    /// uninterrupted one: at an epoch boundary and in the middle of an epoch.
    func testBitwiseResume() throws {
        let common = ["--epochs", "2", "--per-rank-batch", "32", "--checkpoint-every", "3", "--bn", "sync"]
        XCTAssertEqual(try train(common, run: "straight").status, 0)
        let reference = try tensorBytes(try lastCheckpoint("straight"))
        for (name, crashStep) in [("epoch-boundary", 8), ("mid-epoch", 7)] {
            // The crash at step k (0-based) leaves the checkpoint written after the last multiple of 3 or the epoch end.
            let crashed = try train(common, run: name, environment: ["DDPTRAIN_INJECT_FAULT": "1:\(crashStep)"])
            XCTAssertNotEqual(crashed.status, 0)
            let resumed = try train(common + ["--resume", "auto"], run: name)
            XCTAssertEqual(resumed.status, 0, resumed.stderr)
            XCTAssertTrue(resumed.stdout.contains("resumed from"), resumed.stdout)
            XCTAssertEqual(try tensorBytes(try lastCheckpoint(name)), reference, "\(name): resumed run differs")
        }
    }

    /// I4 with compute threads: 2 ranks of 2 threads, local batch norm (whose running
    /// statistics are averaged at checkpoints and copied into every replica), crash
    /// mid-epoch, resume: the same bytes as the uninterrupted run.
    func testBitwiseResumeWithComputeThreads() throws {
        let common = ["--epochs", "1", "--per-rank-batch", "32", "--checkpoint-every", "3", "--bn", "local", "--threads", "2"]
        XCTAssertEqual(try train(common, run: "threads-straight").status, 0)
        let crashed = try train(common, run: "threads-crash", environment: ["DDPTRAIN_INJECT_FAULT": "0:5"])
        XCTAssertNotEqual(crashed.status, 0)
        let resumed = try train(common + ["--resume", "auto"], run: "threads-crash")
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("resumed from"), resumed.stdout)
        XCTAssertEqual(try tensorBytes(try lastCheckpoint("threads-crash")), try tensorBytes(try lastCheckpoint("threads-straight")))
    }

    /// Another world size with the same global batch continues the same run, bit for bit
    /// (virtual shards): the resume at 4 ranks names no batch option and keeps the
    /// checkpoint's global batch and shard size.
    func testResumeOnAnotherWorldSize() throws {
        let common = ["--steps", "30", "--checkpoint-every", "10", "--dropout", "0.2", "--threads", "1",
                      "--lr", "0.05", "--schedule", "constant", "--warmup-steps", "0"]
        XCTAssertEqual(try train(ranks: 2, common + ["--global-batch", "32"], run: "ref").status, 0)
        XCTAssertNotEqual(try train(ranks: 2, common + ["--global-batch", "32"], run: "moved", environment: ["DDPTRAIN_INJECT_FAULT": "0:10"]).status, 0)
        let resumed = try train(ranks: 4, common + ["--resume", "auto"], run: "moved")
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("batch 32"), resumed.stdout)
        XCTAssertEqual(try tensorBytes(try lastCheckpoint("moved")), try tensorBytes(try lastCheckpoint("ref")),
                       "resumed at 4 ranks: not the bytes of the 2-rank run")
        let config = try String(contentsOf: scratch.appendingPathComponent("moved/config.json"), encoding: .utf8)
        XCTAssertTrue(config.contains("\"shard_size\":16"), config)
        // Another global batch is refused unless allowed.
        let refused = try train(ranks: 2, common + ["--global-batch", "64", "--resume", "auto"], run: "moved")
        // Another shard size is refused with the one to use.
        let reshard = try train(ranks: 2, common + ["--shard-size", "8", "--resume", "auto"], run: "moved")
        XCTAssertEqual(reshard.status, 65, reshard.stderr)
        XCTAssertTrue(reshard.stderr.contains("was trained with --shard-size 16, this run uses 8: run with --shard-size 16 (or leave it out)"), reshard.stderr)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("global batch 32, this run uses 64; pass --allow-batch-change"), refused.stderr)
    }

    /// I6: every kind of damage is detected, named, and never loaded.
    func testDamagedCheckpointsAreDetected() throws {
        let common = ["--steps", "8", "--per-rank-batch", "16", "--checkpoint-every", "4"]
        XCTAssertEqual(try train(common, run: "base").status, 0)
        let good = try lastCheckpoint("base")
        let original = try Data(contentsOf: URL(fileURLWithPath: good))
        let headerLength = Int(original.prefix(8).withUnsafeBytes { $0.load(as: UInt64.self) })

        func damaged(_ name: String, _ transform: (inout Data) -> Void) throws -> String {
            var data = original
            transform(&data)
            let path = scratch.appendingPathComponent("\(name).safetensors").path
            try data.write(to: URL(fileURLWithPath: path))
            return path
        }
        let cases: [(String, String, (inout Data) -> Void)] = [
            ("truncated", "truncated", { $0 = $0.prefix($0.count - 1000) }),
            ("flipped", "checksum", { $0[8 + headerLength + 100] ^= 0x10 }),
            ("notjson", "JSON", { $0[8] = UInt8(ascii: "#") }),
        ]
        for (name, mention, transform) in cases {
            let path = try damaged(name, transform)
            let r = try train(common + ["--resume", path], run: "base")
            XCTAssertNotEqual(r.status, 0, name)
            XCTAssertTrue(r.stderr.contains(path) && r.stderr.contains(mention), "\(name): \(r.stderr)")
        }
        // Another dataset, another normalization, another model.
        let otherData = try train(common + ["--resume", good, "--dataset", "synthetic"], run: "base")
        XCTAssertTrue(otherData.stderr.contains("\(good): was trained on dataset 'fashion-mnist'"), otherData.stderr)
        let renormalized = try rewriteMetadata(of: good, key: "normalize.std", value: "0.5",
                                               to: scratch.appendingPathComponent("renormalized.safetensors").path)
        let otherNorm = try train(common + ["--resume", renormalized], run: "base")
        XCTAssertTrue(otherNorm.stderr.contains("\(renormalized): normalization mean 0.286, std 0.5 differs"), otherNorm.stderr)
        let modelFile = scratch.appendingPathComponent("model.yaml")
        try "layers: [flatten, {type: linear, out: 10}]".write(to: modelFile, atomically: false, encoding: .utf8)
        XCTAssertEqual(try train(["--steps", "2", "--per-rank-batch", "16", "--model", modelFile.path], run: "filemodel").status, 0)
        try "layers: [flatten, {type: linear, out: 20}, {type: linear, out: 10}]".write(to: modelFile, atomically: false, encoding: .utf8)
        // The model file changed under the same name: a sound checkpoint of another model is
        // refused (not skipped as damage, which would start over in a run dir of another run).
        let changed = try train(["--steps", "4", "--per-rank-batch", "16", "--model", modelFile.path, "--resume", "auto"], run: "filemodel")
        XCTAssertNotEqual(changed.status, 0)
        XCTAssertTrue(changed.stderr.contains("step-00000002.safetensors: was trained as another model than '\(modelFile.path)' now describes: "
                                              + "layer 1 was Linear(in_features=784, out_features=10, bias=True), is now Linear(in_features=784, out_features=20, bias=True)"), changed.stderr)

        // --resume auto skips a damaged newest file and takes the one before.
        let files = checkpoints("base")
        XCTAssertEqual(files, ["step-00000004.safetensors", "step-00000008.safetensors"])
        var newest = original
        newest[8 + headerLength + 5] ^= 0xFF
        try newest.write(to: URL(fileURLWithPath: good))
        let auto = try train(["--steps", "10", "--per-rank-batch", "16", "--checkpoint-every", "4", "--resume", "auto"], run: "base")
        XCTAssertEqual(auto.status, 0, auto.stderr)
        XCTAssertTrue(auto.stderr.contains("skipping damaged checkpoint: \(good)"), auto.stderr)
        XCTAssertTrue(auto.stdout.contains("resumed from \(runDir("base"))/checkpoints/step-00000004.safetensors at step 4"), auto.stdout)
    }

    /// A checkpoint that cannot be read is not a damaged one (DESIGN, "Checkpoints"):
    /// `--resume auto` stops with the reason (exit 65) instead of skipping it, starting over
    /// and pruning the good files later. A FIFO or a directory under a checkpoint's name is
    /// refused at once, never blocks.
    func testCheckpointThatCannotBeReadStopsAutoResume() throws {
        XCTAssertEqual(try train(["--steps", "8", "--per-rank-batch", "16", "--checkpoint-every", "4"], run: "unreadable").status, 0)
        let newest = try lastCheckpoint("unreadable")
        let older = runDir("unreadable") + "/checkpoints/step-00000004.safetensors"
        let olderBytes = try Data(contentsOf: URL(fileURLWithPath: older))
        let saved = scratch.appendingPathComponent("saved.safetensors").path
        XCTAssertEqual(rename(newest, saved), 0)
        let resume = ["--steps", "12", "--per-rank-batch", "16", "--checkpoint-every", "4", "--keep", "1", "--resume", "auto"]
        func assertStops(_ r: MPIRun.Result, _ reason: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertFalse(r.timedOut, "blocked: \(r.stderr)", file: file, line: line)
            XCTAssertEqual(r.status, 65, r.stderr, file: file, line: line)
            XCTAssertTrue(r.stderr.contains("\(newest): \(reason)"), r.stderr, file: file, line: line)
            XCTAssertFalse(r.stdout.contains("resumed from"), r.stdout, file: file, line: line)
            XCTAssertEqual(try? Data(contentsOf: URL(fileURLWithPath: older)), olderBytes, "nothing pruned", file: file, line: line)
        }
        try FileManager.default.createDirectory(atPath: newest, withIntermediateDirectories: false)
        assertStops(try MPIRun.run(ranks: 2, trainArguments(resume, run: "unreadable"), timeout: 60), "not a regular file (a directory)")
        try FileManager.default.removeItem(atPath: newest)
        XCTAssertEqual(mkfifo(newest, 0o644), 0)
        assertStops(try MPIRun.run(ranks: 2, trainArguments(resume, run: "unreadable"), timeout: 60), "not a regular file (a FIFO)")
        XCTAssertEqual(unlink(newest), 0)
        XCTAssertEqual(rename(saved, newest), 0)
        XCTAssertEqual(chmod(newest, 0), 0)
        assertStops(try runWithoutPermissionBypass(ranks: 2, trainArguments(resume, run: "unreadable")),
                    "open failed: Permission denied (errno \(EACCES))")
        XCTAssertEqual(checkpoints("unreadable"), ["step-00000004.safetensors", "step-00000008.safetensors"])
    }

    /// A checkpoints folder that cannot be listed stops `--resume auto` (65) naming it:
    /// taken for an empty one, the run would start over and cut metrics.jsonl.
    func testCheckpointsFolderThatCannotBeListedStopsAutoResume() throws {
        let common = ["--steps", "4", "--per-rank-batch", "16", "--checkpoint-every", "4"]
        XCTAssertEqual(try train(common, run: "unlisted").status, 0)
        let folder = runDir("unlisted") + "/checkpoints"
        let metrics = runDir("unlisted") + "/metrics.jsonl"
        let metricsBytes = try Data(contentsOf: URL(fileURLWithPath: metrics))
        XCTAssertEqual(chmod(folder, 0), 0)
        defer { chmod(folder, 0o755) }
        let r = try runWithoutPermissionBypass(ranks: 2, trainArguments(common + ["--steps", "8", "--resume", "auto"], run: "unlisted"), timeout: 60)
        XCTAssertFalse(r.timedOut, "blocked: \(r.stderr)")
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains("\(folder): cannot list the checkpoints folder: opendir failed: Permission denied (errno \(EACCES))"), r.stderr)
        XCTAssertFalse(r.stderr.contains("starting fresh"), r.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: metrics)), metricsBytes, "metrics.jsonl untouched")
    }

    /// Files ddptrain did not write (`step-final.safetensors`, `step-00000010-best...`) are
    /// never resumed from, however their names sort.
    func testAutoResumeIgnoresFilesDdptrainDidNotWrite() throws {
        let common = ["--steps", "8", "--per-rank-batch", "16", "--checkpoint-every", "4"]
        XCTAssertEqual(try train(common, run: "user-files").status, 0)
        let folder = runDir("user-files") + "/checkpoints"
        // Sound checkpoints of this very run, of step 4, under names the user chose.
        for name in ["step-final.safetensors", "step-00000010-best.safetensors"] {
            try FileManager.default.copyItem(atPath: folder + "/step-00000004.safetensors", toPath: folder + "/" + name)
        }
        let r = try train(["--steps", "12", "--per-rank-batch", "16", "--checkpoint-every", "4", "--keep", "1", "--resume", "auto"], run: "user-files")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("resumed from \(folder)/step-00000008.safetensors at step 8"), r.stdout)
        XCTAssertEqual(checkpoints("user-files").sorted(),
                       ["step-00000010-best.safetensors", "step-00000012.safetensors", "step-final.safetensors"])
    }

    /// 8 steps with a checkpoint every 4 (512 samples, global batch 32: 16 steps per epoch).
    let stepsToEdit = ["--steps", "8", "--per-rank-batch", "16", "--checkpoint-every", "4"]

    /// A run of `stepsToEdit`: its newest checkpoint, and a copy of it as it was to edit from.
    func checkpointAndItsCopy(run: String) throws -> (newest: String, original: String) {
        XCTAssertEqual(try train(stepsToEdit, run: run).status, 0)
        let newest = try lastCheckpoint(run)
        let original = scratch.appendingPathComponent("original-\(run).safetensors").path
        try FileManager.default.copyItem(atPath: newest, toPath: original)
        return (newest, original)
    }

    /// --allow-batch-change: metadata that passes the reader's checks but overflows when
    /// continued with the new batch is damage, skipped by `auto` before anything is loaded.
    /// With the same batch, other steps per epoch mean another dataset size: refused.
    func testBatchChangeOverflowIsSkippedAndOtherStepsPerEpochRefused() throws {
        let (newest, original) = try checkpointAndItsCopy(run: "overflow")
        // Position (2^40 - 1) * global batch (2^31 - 1) overflows Int.
        let last = (1 << 40) - 1
        try CheckpointEdit.rewrite(original, to: newest, metadata: [
            "step": String(last), "epoch": "0", "position_in_epoch": String(last), "steps_per_epoch": String(1 << 40),
            "global_batch": String(Int32.max),
        ])
        let r = try train(["--steps", "4", "--global-batch", "64", "--resume", "auto", "--allow-batch-change"], run: "overflow")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("skipping damaged checkpoint: \(newest): damaged metadata: epoch 0, position \(last) of global batch \(Int32.max) "
                                        + "overflow when continued with global batch 64"), r.stderr)
        XCTAssertTrue(r.stdout.contains("resumed from \(runDir("overflow"))/checkpoints/step-00000004.safetensors at step 2"), r.stdout)

        let otherSize = scratch.appendingPathComponent("other-size.safetensors").path
        try CheckpointEdit.rewrite(original, to: otherSize, metadata: ["steps_per_epoch": "9"])
        let refused = try train(["--steps", "12", "--per-rank-batch", "16", "--resume", otherSize], run: "overflow")
        XCTAssertEqual(refused.status, 65, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("\(otherSize): has 9 steps per epoch at global batch 32, this run has 16: the dataset has another size"),
                      refused.stderr)
    }

    /// A recorded configuration is checked as the flags are: a checkpoint whose config says
    /// shard size 0 or 2^62 (edited, checksum fixed) is damage, skipped by `auto`, refused by
    /// name, never a trap in the sampler.
    func testRecordedConfigurationOutOfRangeIsDamage() throws {
        let (newest, original) = try checkpointAndItsCopy(run: "config-range")
        let config = try XCTUnwrap(try SafeTensorsFile(path: original).metadata["config"])
        XCTAssertTrue(config.contains("\"shard_size\":16"), config)
        for bad in ["0", String(1 << 62)] {
            try CheckpointEdit.rewrite(original, to: newest, metadata: ["config": config.replacingOccurrences(of: "\"shard_size\":16", with: "\"shard_size\":\(bad)")])
            let named = try train(["--steps", "6", "--per-rank-batch", "16", "--resume", newest], run: "config-range")
            XCTAssertEqual(named.status, 65, named.stderr)
            XCTAssertTrue(named.stderr.contains("--shard-size must be between 1 and 2147483647, got \(bad)"), named.stderr)
            let r = try train(["--steps", "6", "--per-rank-batch", "16", "--resume", "auto"], run: "config-range")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stderr.contains("skipping damaged checkpoint: \(newest): damaged metadata 'config': --shard-size must be between 1 and 2147483647, got \(bad)"),
                          r.stderr)
            // Resumed at step 4, the damaged step 8 was set aside; the next case puts a copy back.
            XCTAssertFalse(FileManager.default.fileExists(atPath: newest))
            try FileManager.default.copyItem(atPath: original, toPath: newest)
        }
    }

    /// Damage that passes a checksum (the file was edited, or written by a run that
    /// diverged): metadata out of range and non-finite weights, buffers or optimizer state.
    /// `--resume auto` skips such a file with a warning that names the key or the tensor
    /// and index; named directly (--resume, --init-from, eval) it stops with that reason.
    func testCheckedDamageIsSkippedByAutoAndRefusedByName() throws {
        let (newest, original) = try checkpointAndItsCopy(run: "edited")
        let poisoned = scratch.appendingPathComponent("poisoned.safetensors").path
        try CheckpointEdit.rewrite(original, to: poisoned) { name, bytes in
            if name == "5.weight" { CheckpointEdit.setFloat(&bytes, at: 3, to: .nan) }
        }
        let cases: [(String, [String: String], (String, inout [UInt8]) -> Void)] = [
            ("damaged metadata 'epoch': '4611686018427387904'", ["epoch": "4611686018427387904"], { _, _ in }),
            ("damaged metadata 'step': '9223372036854775807'", ["step": "9223372036854775807"], { _, _ in }),
            ("damaged: tensor 5.weight holds a non-finite value (nan) at index 3", [:], { name, bytes in
                if name == "5.weight" { CheckpointEdit.setFloat(&bytes, at: 3, to: .nan) }
            }),
            ("damaged: tensor 2.running_var holds a non-finite value (inf) at index 0", [:], { name, bytes in
                if name == "2.running_var" { CheckpointEdit.setFloat(&bytes, at: 0, to: .infinity) }
            }),
            ("damaged: tensor optim.8.bias.momentum_buffer holds a non-finite value (-inf) at index 1", [:], { name, bytes in
                if name == "optim.8.bias.momentum_buffer" { CheckpointEdit.setFloat(&bytes, at: 1, to: -.infinity) }
            }),
            // No training writes a negative variance; evaluated, it makes every output NaN.
            ("damaged: tensor 2.running_var holds a negative variance (-2.0) at index 5", [:], { name, bytes in
                if name == "2.running_var" { CheckpointEdit.setFloat(&bytes, at: 5, to: -2) }
            }),
        ]
        for (message, metadata, edit) in cases {
            try CheckpointEdit.rewrite(original, to: newest, metadata: metadata, tensors: edit)
            let r = try train(stepsToEdit + ["--resume", "auto"], run: "edited")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stderr.contains("skipping damaged checkpoint: \(newest): \(message)"), r.stderr)
            XCTAssertTrue(r.stdout.contains("resumed from \(runDir("edited"))/checkpoints/step-00000004.safetensors at step 4"), r.stdout)
        }
        // Each damaged file that auto passed over was moved aside on resume, not deleted
        // (and not left where the next --resume auto would meet it again).
        let checkpoints = runDir("edited") + "/checkpoints"
        let setAside = try FileManager.default.contentsOfDirectory(atPath: checkpoints).filter { $0.hasPrefix("superseded-") }.sorted()
        XCTAssertEqual(setAside, ["superseded-after-step-00000004"] + (2...cases.count).map { "superseded-after-step-00000004-\($0)" })
        let lastCase = checkpoints + "/superseded-after-step-00000004-\(cases.count)/step-00000008.safetensors"
        let inspect = try MPIRun.run(ranks: 1, ["inspect", lastCase])
        XCTAssertEqual(inspect.status, 1, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("problem: tensor 2.running_var holds a negative variance (-2.0) at index 5"), inspect.stdout)
        let named = try train(["--steps", "12", "--per-rank-batch", "16", "--resume", poisoned], run: "edited")
        XCTAssertEqual(named.status, 65, named.stderr)
        XCTAssertTrue(named.stderr.contains("\(poisoned): damaged: tensor 5.weight holds a non-finite value (nan) at index 3"), named.stderr)
        let initFrom = try train(["--steps", "2", "--per-rank-batch", "16", "--init-from", poisoned], run: "init-from")
        XCTAssertEqual(initFrom.status, 65, initFrom.stderr)
        XCTAssertTrue(initFrom.stderr.contains("\(poisoned): damaged: tensor 5.weight holds a non-finite value"), initFrom.stderr)
        let eval = try MPIRun.run(ranks: 2, ["eval", "--checkpoint", poisoned])
        XCTAssertEqual(eval.status, 65, eval.stderr)
        XCTAssertTrue(eval.stderr.contains("\(poisoned): damaged: tensor 5.weight holds a non-finite value"), eval.stderr)
    }

    /// Format version 1 (its checksum covers the data only) still resumes; a version 2 file
    /// with only that checksum does not.
    func testVersion1CheckpointStillResumes() throws {
        XCTAssertEqual(try train(["--steps", "4", "--per-rank-batch", "16"], run: "v1").status, 0)
        let version1 = scratch.appendingPathComponent("version1.safetensors").path
        try CheckpointEdit.rewrite(try lastCheckpoint("v1"), to: version1, metadata: ["format_version": "1"], checksum: .dataOnly)
        let r = try train(["--steps", "6", "--per-rank-batch", "16", "--resume", version1], run: "v1")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("resumed from \(version1) at step 4"), r.stdout)
        let weak = scratch.appendingPathComponent("weak.safetensors").path
        try CheckpointEdit.rewrite(try lastCheckpoint("v1"), to: weak, checksum: .dataOnly)
        let refused = try train(["--steps", "8", "--per-rank-batch", "16", "--resume", weak], run: "v1")
        XCTAssertEqual(refused.status, 65, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("\(weak): damaged: format version 2 needs the whole-file checksum ddptrain.file_crc32"),
                      refused.stderr)
    }

    /// `inspect` reports what is wrong with a file that cannot be read or is damaged, and
    /// fails; it never blocks on a FIFO nor reads a huge file.
    func testInspectReportsHostileFilesWithoutBlocking() throws {
        XCTAssertEqual(try train(["--steps", "2", "--per-rank-batch", "16"], run: "hostile").status, 0)
        let good = try lastCheckpoint("hostile")
        func path(_ name: String) -> String { scratch.appendingPathComponent(name + ".safetensors").path }
        XCTAssertEqual(mkfifo(path("fifo"), 0o644), 0)
        try FileManager.default.createDirectory(atPath: path("directory"), withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: good, toPath: path("sparse"))
        let size = try XCTUnwrap(try FileManager.default.attributesOfItem(atPath: good)[.size] as? Int)
        XCTAssertEqual(truncate(path("sparse"), 1 << 40), 0)
        var notJSON = try Data(contentsOf: URL(fileURLWithPath: good))
        notJSON[8] = UInt8(ascii: "#")
        try notJSON.write(to: URL(fileURLWithPath: path("notjson")))
        let cases = [("fifo", "not a regular file (a FIFO), so it cannot be read as a safetensors file\n"),
                     ("directory", "not a regular file (a directory), so it cannot be read as a safetensors file\n"),
                     ("sparse", "trailing garbage: \((1 << 40) - size) bytes after the end of the data section\n"),
                     ("notjson", "header is not valid JSON: it does not start with '{'\n"),
                     ("missing", "open failed: No such file or directory (errno \(ENOENT))\n")]
        // inspect needs no MPI: the binary runs alone.
        for (name, message) in cases {
            for json in [false, true] {
                let r = try Background(MPIRun.binary, ["inspect", path(name)] + (json ? ["--json"] : [])).wait(timeout: 30)
                XCTAssertFalse(r.timedOut, "\(name): blocked")
                XCTAssertEqual(r.status, 1, name)
                XCTAssertEqual(r.stderr, "ddptrain inspect: \(path(name)): \(message)", name)
            }
        }
        // A file that reads and passes its checksum is shown with its problems, and fails.
        try CheckpointEdit.rewrite(good, to: path("poisoned"), metadata: ["epoch": "4611686018427387904"]) { name, bytes in
            if name == "5.weight" { CheckpointEdit.setFloat(&bytes, at: 3, to: .nan) }
        }
        let shown = try Background(MPIRun.binary, ["inspect", path("poisoned")]).wait(timeout: 30)
        XCTAssertEqual(shown.status, 1, shown.stderr)
        XCTAssertTrue(shown.stdout.contains("checksum: ok (whole file)"), shown.stdout)
        XCTAssertTrue(shown.stdout.contains("problem: tensor 5.weight holds a non-finite value (nan) at index 3\n"), shown.stdout)
        XCTAssertTrue(shown.stdout.contains("problem: damaged metadata 'epoch': '4611686018427387904' is not a whole number"), shown.stdout)

        try FileManager.default.copyItem(atPath: good, toPath: path("unreadable"))
        XCTAssertEqual(chmod(path("unreadable"), 0), 0)
        let dropped = "-dac_override,-dac_read_search"
        let r = try Background("/usr/bin/setpriv", ["--inh-caps=" + dropped, "--bounding-set=" + dropped, MPIRun.binary,
                                                    "inspect", path("unreadable")]).wait(timeout: 30)
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "ddptrain inspect: \(path("unreadable")): open failed: Permission denied (errno \(EACCES))\n")
    }

    /// A failed write (disk full) stops the job with a clear message and keeps earlier files.
    func testDiskFullKeepsEarlierCheckpoints() throws {
        let mountPoint = scratch.appendingPathComponent("small")
        try FileManager.default.createDirectory(at: mountPoint, withIntermediateDirectories: true)
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=5m", "tmpfs", mountPoint.path]
        try mount.run()
        mount.waitUntilExit()
        guard mount.terminationStatus == 0 else { throw XCTSkip("cannot mount a small tmpfs here (needs root)") }
        defer {
            let umount = Process()
            umount.executableURL = URL(fileURLWithPath: "/bin/umount")
            umount.arguments = [mountPoint.path]
            try? umount.run()
            umount.waitUntilExit()
        }
        // Each mlp checkpoint (parameters and momentum) is about 1.9 MB: two fit, the third does not.
        let run = mountPoint.appendingPathComponent("run").path
        let r = try MPIRun.run(ranks: 2, ["train", "--model", "mlp", "--train-samples", "512", "--eval-every", "0", "--steps", "12",
                                          "--per-rank-batch", "16", "--checkpoint-every", "2", "--keep", "5", "--run-dir", run], timeout: 60)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("step-00000006.safetensors") && r.stderr.contains("No space left on device"), r.stderr)
        let left = try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints").sorted()
        XCTAssertEqual(left, ["step-00000002.safetensors", "step-00000004.safetensors"])
        for name in left { XCTAssertEqual(try SafeTensorsFile(path: run + "/checkpoints/" + name).checksumVerified, true) }
    }

    func testInspect() throws {
        XCTAssertEqual(try train(["--steps", "2", "--per-rank-batch", "16"], run: "inspect").status, 0)
        let path = try lastCheckpoint("inspect")
        let text = try MPIRun.run(ranks: 1, ["inspect", path])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("checksum: ok"), text.stdout)
        XCTAssertTrue(text.stdout.contains("1.weight") && text.stdout.contains("[256, 784]") && text.stdout.contains("F32"), text.stdout)
        let json = try MPIRun.run(ranks: 1, ["inspect", path, "--json"])
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(object["checksum_ok"] as? Bool, true)
        // Numbers as numbers (the safetensors header holds them as text).
        XCTAssertEqual((object["metadata"] as? [String: Any])?["step"] as? Int, 2)
    }

    /// A copy of a checkpoint with one metadata value changed and a checksum that holds.
    func rewriteMetadata(of path: String, key: String, value: String, to output: String) throws -> String {
        try CheckpointEdit.rewrite(path, to: output, metadata: [key: value])
        return output
    }

    /// PyTorch loads a checkpoint into the equivalent nn.Sequential with strict=True and,
    /// evaluating the test set itself, counts the same correct samples as `ddptrain eval`.
    func testPyTorchLoadsCheckpointAndAgrees() throws {
        let python = ProcessInfo.processInfo.environment["DDPTRAIN_TORCH_PYTHON"] ?? "/opt/ddptrain-peers/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw XCTSkip("no PyTorch at \(python) (bash ../shared/peers/setup.sh installs it; or set DDPTRAIN_TORCH_PYTHON)")
        }
        XCTAssertEqual(try train(["--steps", "6", "--per-rank-batch", "16"], run: "torch").status, 0)
        let path = try lastCheckpoint("torch")
        let script = """
        import gzip, json, sys
        import numpy as np, torch, torch.nn as nn
        from safetensors import safe_open
        from safetensors.torch import load_file
        state = {k: v for k, v in load_file(sys.argv[1]).items() if not k.startswith("optim.")}
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
                              nn.Linear(256, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))
        model.load_state_dict(state, strict=True)
        model.eval()
        with safe_open(sys.argv[1], "np") as f:
            meta = f.metadata()
        d = "/usr/share/datasets/fashion-mnist"
        x = np.frombuffer(gzip.open(d + "/t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
        y = np.frombuffer(gzip.open(d + "/t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
        x = (torch.tensor(x, dtype=torch.float32) / 255 - float(meta["normalize.mean"])) / float(meta["normalize.std"])
        with torch.no_grad():
            logits = model(x)
        loss = nn.functional.cross_entropy(logits, torch.tensor(y, dtype=torch.long)).item()
        print(json.dumps({"correct": int((logits.argmax(1).numpy() == y).sum()), "loss": loss}))
        """
        let scriptPath = scratch.appendingPathComponent("load.py")
        try script.write(to: scriptPath, atomically: false, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [scriptPath.path, path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let torch = try XCTUnwrap(try JSONSerialization.jsonObject(with: out.fileHandleForReading.readDataToEndOfFile()) as? [String: Any])
        let ours = try MPIRun.run(ranks: 2, ["eval", "--checkpoint", path, "--json"])
        let eval = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(ours.stdout.utf8)) as? [String: Any], ours.stderr)
        XCTAssertEqual(torch["correct"] as? Int, eval["correct"] as? Int)
        XCTAssertEqual(try XCTUnwrap(torch["loss"] as? Double), try XCTUnwrap(eval["loss"] as? Double), accuracy: 1e-5)
    }

    /// A fresh run refuses a run dir that holds another run's checkpoints.
    func testFreshRunRefusesARunDirWithCheckpoints() throws {
        XCTAssertEqual(try train(["--steps", "2", "--per-rank-batch", "16"], run: "used").status, 0)
        let again = try train(["--steps", "3", "--per-rank-batch", "16", "--lr", "0.01"], run: "used")
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.stderr.contains("run dir \(runDir("used")) already holds checkpoints") && again.stderr.contains("--resume auto"), again.stderr)
        XCTAssertEqual(checkpoints("used"), ["step-00000002.safetensors"], "the old run's files are untouched")
        // Another seed (another data order) is another run too.
        let reseeded = try train(["--steps", "3", "--per-rank-batch", "16", "--seed", "5", "--resume", "auto"], run: "used")
        XCTAssertTrue(reseeded.stderr.contains("was trained with --seed 0, this run uses 5"), reseeded.stderr)
    }

    /// --allow-batch-change continues after the same number of samples seen.
    func testBatchChangeContinuesAfterTheSamplesSeen() throws {
        // 512 samples, global batch 32: 16 steps per epoch; one epoch, then batch 64 for the second.
        XCTAssertEqual(try train(["--epochs", "1", "--global-batch", "32"], run: "batch").status, 0)
        let r = try train(["--epochs", "2", "--global-batch", "64", "--resume", "auto", "--allow-batch-change", "--json"], run: "batch")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("global batch 32 -> 64: step 16 (epoch 2, 0 samples into it) continues as step 8"), r.stderr)
        let summary = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((r.stdout.split(separator: "\n").last ?? "").utf8)) as? [String: Any])
        XCTAssertEqual(summary["steps"] as? Int, 16)
    }

    /// A model trained without batch norm (--bn none) evaluates with the same layer list.
    func testEvalOfABatchNormFreeCheckpoint() throws {
        XCTAssertEqual(try train(["--steps", "3", "--per-rank-batch", "16", "--bn", "none"], run: "nobn").status, 0)
        let r = try MPIRun.run(ranks: 2, ["eval", "--checkpoint", try lastCheckpoint("nobn"), "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"samples\":10000"), r.stdout)
    }
}
