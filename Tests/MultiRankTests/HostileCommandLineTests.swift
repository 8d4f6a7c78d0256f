import Foundation
import XCTest

/// Classes of hostile or unlucky input a probe found (2026-12-03), each run against the real
/// binary: output paths that name something else than a new file or the command's own
/// earlier output, counters and steps at the edge of Int64, numbers no measurement can take,
/// repeated keys, empty lists, errors that did not name their cause, and the temporary files
/// a killed run leaves.
final class HostileCommandLineTests: ScratchFolderTestCase {

    /// `ddptrain args` without MPI (plot, init, inspect, microbench, summary).
    func run(_ args: [String]) throws -> MPIRun.Result {
        let r = try Background(MPIRun.binary, args).wait(timeout: 120)
        XCTAssertFalse(r.timedOut, "\(args): \(r.stderr)")
        return r
    }

    func contents(_ file: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: file)) }

    func makeFIFO(_ name: String) throws -> String {
        let fifo = path(name)
        XCTAssertEqual(mkfifo(fifo, 0o644), 0, "mkfifo \(fifo)")
        return fifo
    }

    func isFIFO(_ file: String) -> Bool {
        var info = stat()
        return lstat(file, &info) == 0 && info.st_mode & S_IFMT == S_IFIFO
    }

    /// A short training run of the mlp on synthetic data with a checkpoint at step 4.
    func train(_ run: String, _ extra: [String] = []) throws -> MPIRun.Result {
        try MPIRun.run(ranks: 1, ["train", "--dataset", "synthetic", "--model", "mlp", "--train-samples", "256", "--per-rank-batch", "16",
                                  "--steps", "4", "--checkpoint-every", "4", "--eval-every", "0", "--run-dir", run] + extra)
    }

    // MARK: Output paths

    /// `plot --out`, `init --out` and `bench --step-log` write atomically (a rename over the
    /// path): a FIFO or a link there is refused and stays; an existing regular file is
    /// replaced only if the command wrote it (an earlier page, init file or step log) or with
    /// --force, so a run's metrics.jsonl or a checkpoint is never lost to a mistyped path.
    func testOutputsReplaceOnlyTheirOwnFiles() throws {
        let runDir = path("run")
        let trained = try train(runDir)
        XCTAssertEqual(trained.status, 0, trained.stderr)
        let metrics = runDir + "/metrics.jsonl", checkpoint = runDir + "/checkpoints/step-00000004.safetensors"
        let metricsBefore = try contents(metrics), checkpointBefore = try contents(checkpoint)

        // plot: the run's own files and a FIFO are refused, exit 64, untouched.
        for target in [metrics, checkpoint] {
            let r = try run(["plot", runDir, "--out", target])
            XCTAssertEqual(r.status, 64, r.stderr)
            XCTAssertTrue(r.stderr.contains("--out \(target) exists and is not a page plot wrote; give --force to replace it"), r.stderr)
        }
        let fifo = try makeFIFO("page.html")
        let refused = try run(["plot", runDir, "--out", fifo, "--force"])
        XCTAssertEqual(refused.status, 64, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("--out \(fifo) is a FIFO; the output may replace only a regular file"), refused.stderr)
        XCTAssertTrue(isFIFO(fifo))
        let link = path("link.html")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: metrics)
        let linked = try run(["plot", runDir, "--out", link])
        XCTAssertEqual(linked.status, 64, linked.stderr)
        XCTAssertTrue(linked.stderr.contains("is a symbolic link"), linked.stderr)
        XCTAssertEqual(try contents(metrics), metricsBefore)
        XCTAssertEqual(try contents(checkpoint), checkpointBefore)
        // Its own page is written again, as often as asked (RUN_DIR/plot.html also when an
        // earlier version wrote it, without the generator tag); another file only with --force.
        try Data("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>old</title>\n".utf8)
            .write(to: URL(fileURLWithPath: runDir + "/plot.html"))
        for _ in 0..<2 { XCTAssertEqual(try run(["plot", runDir]).status, 0) }
        XCTAssertTrue(try String(contentsOfFile: runDir + "/plot.html", encoding: .utf8).contains("content=\"ddptrain plot\""))
        let page = path("notes.txt")
        try Data("my notes\n".utf8).write(to: URL(fileURLWithPath: page))
        XCTAssertEqual(try run(["plot", runDir, "--out", page]).status, 64)
        XCTAssertEqual(try contents(page), Data("my notes\n".utf8))
        XCTAssertEqual(try run(["plot", runDir, "--out", page, "--force"]).status, 0)
        XCTAssertTrue(try String(contentsOfFile: page, encoding: .utf8).hasPrefix("<!DOCTYPE html>"))

        // init: a checkpoint is not replaced without --force; an init file is.
        let overwrite = try run(["init", "--model", "mlp", "--out", checkpoint])
        XCTAssertEqual(overwrite.status, 64, overwrite.stderr)
        XCTAssertTrue(overwrite.stderr.contains("--out \(checkpoint) exists and is not a file init wrote"), overwrite.stderr)
        XCTAssertEqual(try contents(checkpoint), checkpointBefore)
        let initFile = path("init.safetensors")
        XCTAssertEqual(try run(["init", "--model", "mlp", "--out", initFile]).status, 0)
        XCTAssertEqual(try run(["init", "--model", "mlp", "--seed", "1", "--out", initFile]).status, 0)
        let initFIFO = try makeFIFO("f.safetensors")
        XCTAssertEqual(try run(["init", "--model", "mlp", "--out", initFIFO, "--force"]).status, 64)
        XCTAssertTrue(isFIFO(initFIFO))
        let copy = path("copy.safetensors")
        try FileManager.default.copyItem(atPath: checkpoint, toPath: copy)
        XCTAssertEqual(try run(["init", "--model", "mlp", "--out", copy, "--force"]).status, 0)

        // bench: a FIFO and a file that is not a step log are refused; a step log is replaced.
        let bench = ["bench", "--dataset", "synthetic", "--model", "mlp", "--train-samples", "256", "--per-rank-batch", "8",
                     "--untimed-steps", "0", "--timed-steps", "2"]
        let logFIFO = try makeFIFO("steps.jsonl")
        let toFIFO = try MPIRun.run(ranks: 1, bench + ["--step-log", logFIFO])
        XCTAssertEqual(toFIFO.status, 64, toFIFO.stderr)
        XCTAssertTrue(toFIFO.stderr.contains("--step-log \(logFIFO) is a FIFO"), toFIFO.stderr)
        XCTAssertTrue(isFIFO(logFIFO))
        let toMetrics = try MPIRun.run(ranks: 1, bench + ["--step-log", metrics])
        XCTAssertEqual(toMetrics.status, 64, toMetrics.stderr)
        XCTAssertEqual(try contents(metrics), metricsBefore)
        let log = path("steps.log")
        for _ in 0..<2 {
            let r = try MPIRun.run(ranks: 1, bench + ["--step-log", log])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        XCTAssertEqual(try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").count, 2)
    }

    // MARK: Numbers at the edge

    /// A state dict whose num_batches_tracked is Int64.max (a counter only) starts a run:
    /// the count stays at its largest value instead of trapping on overflow.
    func testACounterAtInt64MaxDoesNotTrap() throws {
        let initFile = path("init.safetensors"), edited = path("huge.safetensors")
        XCTAssertEqual(try run(["init", "--model", "fmnist-cnn", "--out", initFile]).status, 0)
        var counters = 0
        try CheckpointEdit.rewrite(initFile, to: edited) { name, bytes in
            guard name.hasSuffix("num_batches_tracked") else { return }
            counters += 1
            bytes = withUnsafeBytes(of: Int64.max.littleEndian) { Array($0) }
        }
        XCTAssertEqual(counters, 3)
        let runDir = path("run")
        let r = try MPIRun.run(ranks: 2, ["train", "--dataset", "synthetic", "--model", "fmnist-cnn", "--train-samples", "64",
                                          "--per-rank-batch", "8", "--steps", "2", "--eval-every", "0", "--init-from", edited,
                                          "--run-dir", runDir])
        XCTAssertEqual(r.status, 0, r.stderr)
        let shown = try run(["inspect", "--json", runDir + "/checkpoints/step-00000002.safetensors"])
        XCTAssertEqual(shown.status, 0, shown.stderr)
    }

    /// A metrics row with a step near 2^62 draws (one x value whose neighbour is 1024 away).
    func testPlotOfAHugeStep() throws {
        let runDir = path("run")
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        let row = #"{"accuracy":0.5,"backward_s":0.001,"clipped":false,"comm_s":0.001,"compute_s":0.002,"data_s":0.001,"epoch":1,"#
            + #""forward_s":0.001,"grad_norm":1,"kind":"step","loss":0.5,"lr":0.1,"optimizer_s":0.001,"samples":64,"skipped":false,"#
            + #""step":4611686018427387904,"time":1796315209.0}"#
        try Data((row + "\n").utf8).write(to: URL(fileURLWithPath: runDir + "/metrics.jsonl"))
        let r = try run(["plot", runDir])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(try String(contentsOfFile: runDir + "/plot.html", encoding: .utf8).contains("<svg"))
    }

    /// microbench refuses what it cannot measure: a batch past its limit, thread counts
    /// that do not fit, measurements that would not end.
    func testMicrobenchRefusesNumbersItCannotTake() throws {
        for (args, message) in [(["--batch", "9223372036854775807"], "--batch must be 1 to 1024"),
                                (["--batch", "1099511627776"], "--batch must be 1 to 1024"),
                                (["--threads", "9223372036854775807"], "--threads must be 1 to 1024"),
                                (["--seconds", "inf"], "--seconds must be more than 0 and at most 3600"),
                                (["--seconds", "1e309"], "--seconds must be more than 0 and at most 3600"),
                                (["--seconds", "nan"], "--seconds must be more than 0 and at most 3600")] {
            let r = try run(["microbench", "--only", "linear"] + args)
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(message), "\(args): \(r.stderr)")
        }
    }

    // MARK: Files and lists

    /// A key given twice in one map of a config or model file (YAML or JSON) is refused,
    /// naming the file, the line and the key, where the last one silently won.
    func testRepeatedKeysAreRefused() throws {
        let files = [("dup.yaml", "lr: 0.1\nseed: 3\nlr: 0.5\n", "line 3: key 'lr' is given twice in one map (first at line 1)"),
                     ("dup.json", "{\"lr\": 0.1,\n \"lr\": 0.7}\n", "line 2: key 'lr' is given twice in one map (first at line 1)")]
        for (name, text, message) in files {
            try Data(text.utf8).write(to: URL(fileURLWithPath: path(name)))
            let r = try MPIRun.run(ranks: 1, ["train", "--config", path(name), "--dataset", "synthetic", "--steps", "1"])
            XCTAssertEqual(r.status, 65, r.stderr)
            XCTAssertTrue(r.stderr.contains("\(path(name)): \(message)"), r.stderr)
        }
        let model = path("model.yaml")
        try Data("layers:\n  - {type: linear, out: 10, out: 20}\n".utf8).write(to: URL(fileURLWithPath: model))
        let summary = try run(["summary", "--model", model])
        XCTAssertNotEqual(summary.status, 0, summary.stdout)
        XCTAssertTrue(summary.stderr.contains("key 'out' is given twice in one map"), summary.stderr)
    }

    /// A bad per-layer init in a model file is an error that names the file and the layer,
    /// from summary and init too (init: 65, bad input).
    func testABadLayerInitNamesTheFileAndLayer() throws {
        let model = path("init.yaml")
        try Data("layers:\n  - flatten\n  - {type: linear, out: 10, init: \"constant:1e39\"}\n".utf8).write(to: URL(fileURLWithPath: model))
        let expected = "\(model): layer 1 (linear): 'init':"
        let summary = try run(["summary", "--model", model])
        XCTAssertNotEqual(summary.status, 0)
        XCTAssertTrue(summary.stderr.contains(expected), summary.stderr)
        let initialized = try run(["init", "--model", model, "--out", path("x.safetensors")])
        XCTAssertEqual(initialized.status, 65, initialized.stderr)
        XCTAssertTrue(initialized.stderr.contains(expected), initialized.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("x.safetensors")))
    }

    /// `compare --vary lr=,,` names no value: refused, where it trained nothing and exited 0.
    func testAVaryWithoutValuesIsRefused() throws {
        for vary in ["lr=,,", "lr=0.1,,0.2", "lr=,"] {
            let r = try MPIRun.run(ranks: 1, ["compare", "--dataset", "synthetic", "--train-samples", "64", "--steps", "1",
                                              "--per-rank-batch", "8", "--eval-every", "0", "--vary", vary, "--run-dir", path("cmp")])
            XCTAssertNotEqual(r.status, 0, vary)
            XCTAssertTrue(r.stderr.contains("--vary lr: values must be distinct and non-empty"), "\(vary): \(r.stderr)")
        }
    }

    // MARK: Resuming

    /// Resuming a run without the --seed it was trained with names the seed (synthetic data
    /// depends on it, and so its normalization), not the normalization it changes.
    func testAResumeWithAnotherSeedNamesTheSeed() throws {
        let runDir = path("run")
        XCTAssertEqual(try train(runDir, ["--seed", "5"]).status, 0)
        let r = try MPIRun.run(ranks: 1, ["train", "--dataset", "synthetic", "--model", "mlp", "--train-samples", "256",
                                          "--per-rank-batch", "16", "--steps", "6", "--eval-every", "0", "--resume", "auto",
                                          "--run-dir", runDir])
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains("seed"), r.stderr)
        XCTAssertFalse(r.stderr.contains("normalization mean"), r.stderr)
    }

    /// The temporary files a run killed while writing leaves (SIGKILL, the OOM killer) are
    /// removed when the run dir is next locked for a run, and the user is told; others stay.
    func testAResumeRemovesTheTemporaryFilesOfAKilledRun() throws {
        let runDir = path("run")
        XCTAssertEqual(try train(runDir).status, 0)
        let left = [runDir + "/checkpoints/.step-00000008.safetensors.tmp.0123456789abcdef", runDir + "/.metrics.jsonl.tmp.fedcba9876543210"]
        let kept = [runDir + "/checkpoints/.step-00000008.safetensors.tmp.notours", runDir + "/notes.tmp.0123456789abcdef"]
        for file in left + kept { try Data("partial".utf8).write(to: URL(fileURLWithPath: file)) }
        let r = try MPIRun.run(ranks: 1, ["train", "--dataset", "synthetic", "--model", "mlp", "--train-samples", "256",
                                          "--per-rank-batch", "16", "--steps", "6", "--eval-every", "0", "--resume", "auto",
                                          "--run-dir", runDir])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("removed 2 temporary files a killed run left"), r.stderr)
        for file in left { XCTAssertFalse(FileManager.default.fileExists(atPath: file), file) }
        for file in kept { XCTAssertTrue(FileManager.default.fileExists(atPath: file), file) }
    }
}

/// The second probe's classes: names and files a run dir holds that were planted or left
/// behind, launcher values, a comparison's folders, a full standard output, rank variables
/// left in a shell.
final class HostileRunFilesTests: ScratchFolderTestCase {

    let tiny = ["--dataset", "synthetic", "--model", "mlp", "--train-samples", "256", "--per-rank-batch", "16", "--eval-every", "0"]

    /// An event file named for the largest time leaves no later name: the resume stops with
    /// an error naming the folder (65), where `newest + 1` trapped (132).
    func testAnEventFileAtTheLargestTimeIsRefused() throws {
        let runDir = path("run")
        XCTAssertEqual(try MPIRun.run(ranks: 1, ["train", "--steps", "2", "--run-dir", runDir] + tiny).status, 0)
        let planted = runDir + "/tensorboard/events.out.tfevents.\(Int.max).vm"
        try Data().write(to: URL(fileURLWithPath: planted))
        let r = try MPIRun.run(ranks: 1, ["train", "--steps", "4", "--resume", "auto", "--run-dir", runDir] + tiny)
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains("\(runDir)/tensorboard: an event file is named for time \(Int.max)"), r.stderr)
    }

    /// Commands that never start MPI report their errors even with a rank variable left in
    /// the environment; a rank variable without its launcher's size beside it is no rank.
    /// A real rank other than 0 stays quiet, srun --mpi=pmix's too (PMIX_RANK, no PMIX_SIZE).
    func testAStrayRankVariableDoesNotSilenceErrors() throws {
        // No size variables of a Slurm step this test may run in.
        let noStep = ["SLURM_STEP_NUM_TASKS": "", "SLURM_NTASKS": ""]
        for environment in [["SLURM_PROCID": "1"], ["OMPI_COMM_WORLD_RANK": "3"], ["PMI_RANK": "1", "PMI_SIZE": "1"]] {
            let env = environment.merging(noStep) { a, _ in a }
            let summary = try Background(MPIRun.binary, ["summary", "--model", path("missing.yaml")], environment: env).wait(timeout: 30)
            XCTAssertNotEqual(summary.status, 0, "\(environment)")
            XCTAssertTrue(summary.stderr.contains("missing.yaml"), "\(environment): \(summary.stderr)")
            let train = try Background(MPIRun.binary, ["train", "--lr", "-1"], environment: env).wait(timeout: 30)
            XCTAssertEqual(train.status, 64, "\(environment): \(train.stderr)")
            XCTAssertTrue(train.stderr.contains("--lr must be a positive number"), "\(environment): \(train.stderr)")
        }
        for rank in [["PMIX_RANK": "1", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"], ["OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"]] {
            let train = try Background(MPIRun.binary, ["train", "--lr", "-1"], environment: rank).wait(timeout: 30)
            XCTAssertEqual(train.status, 0, "\(rank): \(train.stderr)")
            XCTAssertEqual(train.stderr, "", "\(rank)")
        }
    }

    /// Standard output that cannot take the output (a full disk: /dev/full) is an error, 74,
    /// not a success with an empty file.
    func testAFullStandardOutputIsAnError() throws {
        let initFile = path("init.safetensors")
        XCTAssertEqual(try Background(MPIRun.binary, ["init", "--model", "mlp", "--out", initFile]).wait(timeout: 30).status, 0)
        for args in [["inspect", initFile], ["summary", "--model", "mlp"]] {
            let r = try Background("/bin/sh", ["-c", "exec \"$0\" \"$@\" > /dev/full", MPIRun.binary] + args).wait(timeout: 30)
            XCTAssertEqual(r.status, 74, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("cannot write the standard output: No space left on device"), "\(args): \(r.stderr)")
        }
    }

    /// Two --vary values that make one folder name are refused before anything trains, and a
    /// variant folder that is a link is refused rather than trained through.
    func testCompareRefusesVariantsThatShareOrLeaveTheirFolder() throws {
        try FileManager.default.createDirectory(atPath: path("m"), withIntermediateDirectories: true)
        for file in ["m/x.yaml", "m_x.yaml"] {
            try Data("layers:\n  - flatten\n  - {type: linear, out: 10}\n".utf8).write(to: URL(fileURLWithPath: path(file)))
        }
        let shared = try MPIRun.run(ranks: 1, ["compare", "--steps", "1", "--vary", "model=\(path("m/x.yaml")),\(path("m_x.yaml"))",
                                               "--run-dir", path("cmp")] + tiny.filter { $0 != "mlp" && $0 != "--model" })
        XCTAssertEqual(shared.status, 64, shared.stderr)
        XCTAssertTrue(shared.stderr.contains("would share the folder variants/"), shared.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("cmp/variants")))

        let other = path("other")
        XCTAssertEqual(try MPIRun.run(ranks: 1, ["train", "--steps", "1", "--run-dir", other] + tiny).status, 0)
        let config = try Data(contentsOf: URL(fileURLWithPath: other + "/config.json"))
        let first = try MPIRun.run(ranks: 1, ["compare", "--steps", "1", "--vary", "lr=0.1,0.2", "--run-dir", path("cl")] + tiny)
        XCTAssertEqual(first.status, 0, first.stderr)
        try FileManager.default.removeItem(atPath: path("cl/variants/lr=0.2"))
        try FileManager.default.createSymbolicLink(atPath: path("cl/variants/lr=0.2"), withDestinationPath: other)
        let linked = try MPIRun.run(ranks: 1, ["compare", "--steps", "1", "--vary", "lr=0.1,0.2", "--resume", "auto",
                                               "--run-dir", path("cl")] + tiny)
        XCTAssertEqual(linked.status, 65, linked.stderr)
        XCTAssertTrue(linked.stderr.contains("variants/lr=0.2 is a symbolic link, not a variant's folder"), linked.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: other + "/config.json")), config)
    }

    /// A finished variant whose summary.json was lost (a kill between its last checkpoint and
    /// that file) is resumed with no step left to train; its row still has its loss and
    /// accuracy, from its metrics, where it read "diverged".
    func testAFinishedVariantWithoutItsSummaryKeepsItsRow() throws {
        let args = ["compare", "--steps", "4", "--eval-every", "1", "--vary", "lr=0.1,0.2", "--run-dir", path("cs")]
            + tiny.filter { $0 != "--eval-every" && $0 != "0" }
        let first = try MPIRun.run(ranks: 1, args)
        XCTAssertEqual(first.status, 0, first.stderr)
        let report = try String(contentsOfFile: path("cs/report.md"), encoding: .utf8)
        try FileManager.default.removeItem(atPath: path("cs/variants/lr=0.2/summary.json"))
        let again = try MPIRun.run(ranks: 1, args + ["--resume", "auto"])
        XCTAssertEqual(again.status, 0, again.stderr)
        let resumed = try String(contentsOfFile: path("cs/report.md"), encoding: .utf8)
        let row = { (text: String) in text.split(separator: "\n").first { $0.hasPrefix("| lr=0.2 ") }.map(String.init) ?? "" }
        XCTAssertFalse(row(resumed).contains("diverged"), resumed)
        // The same loss and accuracy columns as the first report's (the time columns differ).
        XCTAssertEqual(row(resumed).split(separator: "|").prefix(4), row(report).split(separator: "|").prefix(4), resumed)
    }

    /// launch/train appends to launch.log only as a regular file of its own: a FIFO there
    /// (which blocked it for good) or a link (which wrote outside the run dir) is refused, 65.
    /// launch/mpirun refuses a rank count that is not a whole number from 1 up, 64, which
    /// launch/train does not retry.
    func testLaunchersRefuseOddLogsAndCounts() throws {
        let launcher = MPIRun.repoRoot.appendingPathComponent("launch/train").path
        let env = ["DDPTRAIN_BIN": MPIRun.binary]
        let runDir = path("run")
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        XCTAssertEqual(mkfifo(runDir + "/launch.log", 0o644), 0)
        let fifo = try Background(launcher, ["-n", "1", "--", "--steps", "1", "--run-dir", runDir] + tiny, environment: env).wait(timeout: 60)
        XCTAssertFalse(fifo.timedOut, "blocked on the FIFO")
        XCTAssertEqual(fifo.status, 65, fifo.stderr)
        XCTAssertTrue(fifo.stderr.contains("launch.log exists and is not a regular file"), fifo.stderr)
        for count in ["abc", "0", "-2", "99999999999999999999"] {
            let r = try Background(launcher, ["-n", count, "--max-restarts", "2", "--", "--steps", "1", "--run-dir", path("n\(count)")] + tiny,
                                   environment: env).wait(timeout: 60)
            XCTAssertEqual(r.status, 64, "\(count): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("the rank count (-n, or SLURM_NTASKS) must be a whole number from 1 to 1048576, got '\(count)'"), r.stderr)
            XCTAssertFalse(r.stderr.contains("attempt 2"), r.stderr)
        }
        let restarts = try Background(launcher, ["--max-restarts", "99999999999999999999", "-n", "1", "--", "--steps", "1"], environment: env)
            .wait(timeout: 30)
        XCTAssertEqual(restarts.status, 64, restarts.stderr)
    }
}

/// A test case with a folder of its own, made before each test and removed after it.
class ScratchFolderTestCase: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-\(type(of: self))-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    func path(_ name: String) -> String { scratch.appendingPathComponent(name).path }
}
