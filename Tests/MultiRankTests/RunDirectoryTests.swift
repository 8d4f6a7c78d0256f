import Foundation
import XCTest

/// The run dir through the real binary: metrics history on resume, the lock, foreign folders.
final class RunDirectoryTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-rundir-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    func runDir(_ name: String) -> String { scratch.appendingPathComponent(name).path }

    /// 512 training samples, per-rank batch 16 on 2 ranks: 16 steps per epoch; a checkpoint every 4 steps.
    func train(_ extra: [String], run: String, environment: [String: String] = [:]) throws -> MPIRun.Result {
        let args = ["train", "--model", "mlp", "--train-samples", "512", "--eval-every", "0", "--log-every", "4",
                    "--per-rank-batch", "16", "--steps", "12", "--checkpoint-every", "4", "--run-dir", runDir(run)] + extra
        let r = try MPIRun.run(ranks: 2, args, timeout: 60, environment: environment)
        XCTAssertFalse(r.timedOut, "timed out: \(r.stderr)")
        return r
    }

    func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

    func lines(_ bytes: [UInt8]) -> [[UInt8]] { bytes.split(separator: 10, omittingEmptySubsequences: false).dropLast().map(Array.init) }

    func step(of line: [UInt8]) -> Int? {
        (try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])?["step"] as? Int
    }

    /// Defect: one invalid UTF-8 byte (or one line that is not JSON) in metrics.jsonl erased the
    /// whole history on resume. Now every line up to the resumed step stays byte for byte.
    func testResumeKeepsTheMetricsHistory() throws {
        // Stops at step 9 (0-based): the newest checkpoint is at step 8.
        let crashed = try train([], run: "history", environment: ["DDPTRAIN_INJECT_FAULT": "1:9"])
        XCTAssertNotEqual(crashed.status, 0)
        let metrics = runDir("history") + "/metrics.jsonl"
        var old = lines(try bytes(metrics))
        XCTAssertEqual(old.compactMap(step), Array(1...9))
        // A note in Latin-1 (not UTF-8) and a line that is not JSON, between the steps.
        old.insert(Array(#"{"note":"caf"#.utf8) + [0xE9] + Array(#""}"#.utf8), at: 3)
        old.insert(Array("a line by hand".utf8), at: 6)
        try Data(old.flatMap { $0 + [10] }).write(to: URL(fileURLWithPath: metrics))

        let resumed = try train(["--resume", "auto"], run: "history")
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stderr.contains("2 lines are not a step record (line 4, 7); kept as they are"), resumed.stderr)
        let now = lines(try bytes(metrics))
        let kept = old.filter { (step(of: $0) ?? 0) <= 8 }
        XCTAssertEqual(Array(now.prefix(kept.count)), kept, "the lines up to step 8, byte for byte")
        XCTAssertEqual(now.compactMap(step), Array(1...12), "steps after the checkpoint logged once, by the resumed run")
    }

    /// A metrics.jsonl that cannot be read stops the resume with its name and errno, and
    /// nothing is overwritten. The tests run as root, which reads any file: the job runs
    /// without the capabilities that bypass file permissions (setpriv), as a user's would.
    func testUnreadableMetricsStopsTheResumeAndOverwritesNothing() throws {
        let crashed = try train([], run: "unreadable", environment: ["DDPTRAIN_INJECT_FAULT": "1:9"])
        XCTAssertNotEqual(crashed.status, 0)
        let metrics = runDir("unreadable") + "/metrics.jsonl", config = runDir("unreadable") + "/config.json"
        let metricsBefore = try bytes(metrics), configBefore = try bytes(config)
        XCTAssertEqual(chmod(metrics, 0), 0)
        defer { chmod(metrics, 0o644) }
        let dropped = "-dac_override,-dac_read_search"
        let args = ["train", "--model", "mlp", "--train-samples", "512", "--eval-every", "0", "--log-every", "4",
                    "--per-rank-batch", "16", "--steps", "12", "--checkpoint-every", "4", "--lr", "0.01",
                    "--run-dir", runDir("unreadable"), "--resume", "auto"]
        let r = try Background("/usr/bin/setpriv", ["--inh-caps=" + dropped, "--bounding-set=" + dropped, "/usr/bin/env",
                                                    "mpirun", "-n", "2", "--oversubscribe", "--bind-to", "none", MPIRun.binary] + args,
                               environment: ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                                             "OPENBLAS_NUM_THREADS": "1"]).wait(timeout: 60)
        XCTAssertFalse(r.timedOut, r.stderr)
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains("\(metrics): cannot open: Permission denied (errno 13)"), r.stderr)
        chmod(metrics, 0o644)
        XCTAssertEqual(try bytes(metrics), metricsBefore)
        XCTAssertEqual(try bytes(config), configBefore)
    }

    /// metrics.jsonl that is a FIFO: the resume stops at once (it used to wait forever for a writer).
    func testMetricsFIFOStopsTheResumeAtOnce() throws {
        XCTAssertNotEqual(try train([], run: "fifo", environment: ["DDPTRAIN_INJECT_FAULT": "1:9"]).status, 0)
        let metrics = runDir("fifo") + "/metrics.jsonl"
        try FileManager.default.removeItem(atPath: metrics)
        XCTAssertEqual(mkfifo(metrics, 0o644), 0)
        let config = try bytes(runDir("fifo") + "/config.json")
        let resumed = try train(["--resume", "auto", "--lr", "0.05"], run: "fifo")
        XCTAssertEqual(resumed.status, 65, resumed.stderr)
        XCTAssertTrue(resumed.stderr.contains("run dir \(runDir("fifo")): metrics.jsonl is a FIFO"), resumed.stderr)
        XCTAssertEqual(try bytes(runDir("fifo") + "/config.json"), config, "nothing overwritten")
    }

    /// Defect: two runs in one run dir both went ahead. A run dir in use is refused at once with
    /// the pid and host of the run that holds it; evaluating its checkpoints still works.
    func testRunDirInUseIsRefused() throws {
        XCTAssertEqual(try train(["--steps", "4"], run: "busy").status, 0)
        let config = try bytes(runDir("busy") + "/config.json")
        // Another run holds the lock (here: this test process, as a run would).
        let lock = open(runDir("busy") + "/.lock", O_RDWR)
        XCTAssertGreaterThanOrEqual(lock, 0)
        defer { close(lock) }
        XCTAssertEqual(flock(lock, LOCK_EX | LOCK_NB), 0)
        let holder = Array("pid 4242 host node7\n".utf8)
        XCTAssertEqual(ftruncate(lock, 0), 0)
        XCTAssertEqual(pwrite(lock, holder, holder.count, 0), holder.count)

        let second = try train(["--resume", "auto", "--steps", "8"], run: "busy")
        XCTAssertEqual(second.status, 65, second.stderr)
        XCTAssertTrue(second.stderr.contains("run dir \(runDir("busy")) is in use by another run (pid 4242 on host node7)"), second.stderr)
        XCTAssertEqual(try bytes(runDir("busy") + "/config.json"), config)
        XCTAssertEqual(Checkpoints.names(runDir: runDir("busy")), ["step-00000004.safetensors"])

        let eval = try MPIRun.run(ranks: 2, ["eval", "--checkpoint", try Checkpoints.newest(runDir: runDir("busy")), "--json"], timeout: 60)
        XCTAssertEqual(eval.status, 0, "eval only reads a run dir: \(eval.stderr)")
    }

    /// A run that died (rank 0 or another rank) leaves no lock behind: the restart goes ahead at once.
    func testCrashedRunResumesAtOnce() throws {
        for rank in [0, 1] {
            let name = "crash-\(rank)"
            let crashed = try train([], run: name, environment: ["DDPTRAIN_INJECT_FAULT": "\(rank):6"])
            XCTAssertNotEqual(crashed.status, 0)
            let resumed = try train(["--resume", "auto"], run: name)
            XCTAssertEqual(resumed.status, 0, resumed.stderr)
            XCTAssertTrue(resumed.stdout.contains("resumed from"), resumed.stdout)
        }
        // A run dir made before the marker (config.json and checkpoints/ only) resumes too.
        try FileManager.default.removeItem(atPath: runDir("crash-0") + "/.ddptrain-run")
        try FileManager.default.removeItem(atPath: runDir("crash-0") + "/.lock")
        let old = try train(["--resume", "auto"], run: "crash-0")
        XCTAssertEqual(old.status, 0, old.stderr)
    }

    /// Defect: a folder of another program lost its config.json and metrics.jsonl. Now it is
    /// refused, for train and compare, and left exactly as it was.
    func testForeignFolderIsRefusedAndKept() throws {
        let folder = runDir("Documents")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let files = ["config.json": "{\"theme\": \"dark\"}\n", "metrics.jsonl": "{\"visits\": 3}\n", "report.md": "# my notes\n"]
        for (name, text) in files { try Data(text.utf8).write(to: URL(fileURLWithPath: folder + "/" + name)) }
        for resume in [[], ["--resume", "auto"]] {
            let r = try train(resume, run: "Documents")
            XCTAssertEqual(r.status, 65, r.stderr)
            XCTAssertTrue(r.stderr.contains("run dir \(folder) is not empty and is not a ddptrain run dir (it holds config.json, metrics.jsonl, report.md"),
                          r.stderr)
        }
        let compare = try MPIRun.run(ranks: 2, ["compare", "--model", "mlp", "--train-samples", "256", "--per-rank-batch", "32",
                                                "--steps", "2", "--eval-every", "0", "--run-dir", folder], timeout: 60)
        XCTAssertEqual(compare.status, 65, compare.stderr)
        XCTAssertTrue(compare.stderr.contains("is not a ddptrain run dir"), compare.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder).sorted(), files.keys.sorted())
        for (name, text) in files { XCTAssertEqual(try bytes(folder + "/" + name), Array(text.utf8), name) }
    }

    /// A link planted as config.json is never written through, and the run says what is wrong.
    func testPlantedLinkIsNotWrittenThrough() throws {
        XCTAssertEqual(try train(["--steps", "4"], run: "planted").status, 0)
        let target = runDir("precious.txt")
        try Data("precious\n".utf8).write(to: URL(fileURLWithPath: target))
        let config = runDir("planted") + "/config.json"
        try FileManager.default.removeItem(atPath: config)
        XCTAssertEqual(symlink(target, config), 0)
        let r = try train(["--resume", "auto", "--steps", "8"], run: "planted")
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains("config.json is a symbolic link"), r.stderr)
        XCTAssertEqual(try bytes(target), Array("precious\n".utf8))
    }

    /// A full disk while logging a step stops the job with exit 74 (as for a checkpoint) and a
    /// clear message naming the file that could not be written (metrics.jsonl or TensorBoard's
    /// events file, whichever found the disk full); metrics.jsonl ends with a whole line and
    /// the events file with a whole record, so a resume continues them.
    func testFullDiskWhileLoggingStopsWithExit74() throws {
        let mountPoint = runDir("small")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        func tool(_ path: String, _ arguments: [String]) -> Int32 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = arguments
            guard (try? process.run()) != nil else { return -1 }
            process.waitUntilExit()
            return process.terminationStatus
        }
        // 64 KiB: room for the run dir's small files and about 150 lines of metrics.
        guard tool("/bin/mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", mountPoint]) == 0 else {
            throw XCTSkip("cannot mount a small tmpfs here (needs root)")
        }
        defer { _ = tool("/bin/umount", [mountPoint]) }
        let run = mountPoint + "/run"
        // 512 steps per epoch: no checkpoint is due before the metrics fill the disk.
        let r = try MPIRun.run(ranks: 2, ["train", "--model", "mlp", "--train-samples", "8192", "--per-rank-batch", "8", "--steps", "400",
                                          "--eval-every", "0", "--run-dir", run], timeout: 60)
        XCTAssertEqual(r.status, 74, r.stderr)
        let events = try FileManager.default.contentsOfDirectory(atPath: run + "/tensorboard").map { run + "/tensorboard/" + $0 }
        XCTAssertEqual(events.count, 1)
        let full = try XCTUnwrap([run + "/metrics.jsonl", events[0]].first { r.stderr.contains("\($0): cannot write: No space left on device (errno 28)") },
                                 r.stderr)
        XCTAssertTrue(r.stderr.contains("cannot log step"), r.stderr)
        let metrics = try bytes(run + "/metrics.jsonl")
        XCTAssertEqual(metrics.last, 10)
        XCTAssertEqual(lines(metrics).compactMap(step), Array(1...lines(metrics).count), "whole records only")
        // TFRecord framing: 8 bytes of length, 4 of CRC, the data, 4 of CRC; whole records to the end.
        let framed = try bytes(events[0])
        var at = 0
        while at + 8 <= framed.count { at += 16 + framed[at..<at + 8].reversed().reduce(0) { $0 << 8 | Int($1) } }
        XCTAssertEqual(at, framed.count, "\(full) full: the events file ends with a whole record")
    }

    /// compare locks its own run dir and each variant's apart: it never waits for itself, and resumes.
    func testCompareDoesNotBlockOnItsOwnLocks() throws {
        let run = runDir("cmp")
        let args = ["compare", "--model", "mlp", "--train-samples", "256", "--per-rank-batch", "32", "--steps", "2",
                    "--eval-every", "0", "--vary", "lr=0.1,0.05", "--run-dir", run]
        let first = try MPIRun.run(ranks: 2, args, timeout: 60)
        XCTAssertEqual(first.status, 0, first.stderr)
        let again = try MPIRun.run(ranks: 2, args + ["--resume", "auto"], timeout: 60)
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/.ddptrain-run"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/variants/lr=0.1/.ddptrain-run"))
    }
}
