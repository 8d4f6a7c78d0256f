import Foundation
import SafeTensors
import XCTest

/// Stopping on request (docs/FAILURES.md): SIGTERM to launch/train or launch/mpirun, or a
/// signal to one rank, stops every rank at the next step boundary; rank 0 writes that step's
/// checkpoint, every rank exits with 79, nothing half-written is left, and --resume auto ends
/// bit for bit where an uninterrupted run ends (4 ranks, dropout on). The signals are placed
/// by DDPTRAIN_INJECT_HOLD (a rank waits at a known step for a stop signal) and DDPTRAIN_INJECT_SIGNAL
/// (a rank sends itself SIGTERM at a known place), never by timing.
final class StopTests: XCTestCase {
    var scratch: URL!
    let environment = ["DDPTRAIN_BIN": MPIRun.binary, "OPENBLAS_NUM_THREADS": "1", "DDPTRAIN_PROGRESS": "lines"]
    static let stoppedOnRequest: Int32 = 79

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-stop-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        guard FileManager.default.isExecutableFile(atPath: MPIRun.binary) else {
            throw XCTSkip("no release binary at \(MPIRun.binary): run launch/test (or swift build -c release)")
        }
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    func runDir(_ name: String) -> String { scratch.appendingPathComponent(name).path }

    /// 512 synthetic samples, 4 ranks x 16: 8 steps per epoch, 40 steps, an evaluation after
    /// each epoch; checkpoints at 8, 10, 16, 20, ...; mlp has a dropout layer (p 0.2).
    let common = ["--dataset", "synthetic", "--train-samples", "512", "--model", "mlp", "--per-rank-batch", "16",
                  "--steps", "40", "--checkpoint-every", "10", "--eval-every", "1", "--log-every", "100"]

    /// The final tensors of the uninterrupted run, computed once.
    nonisolated(unsafe) static var reference: [String: [UInt8]]?

    func uninterruptedTensors() throws -> [String: [UInt8]] {
        if let reference = Self.reference { return reference }
        let dir = runDir("straight")
        let r = try MPIRun.run(ranks: 4, ["train"] + common + ["--run-dir", dir], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        let newest = try Checkpoints.newest(runDir: dir)
        XCTAssertTrue(newest.hasSuffix("step-00000040.safetensors"), newest)
        let tensors = try Checkpoints.tensorBytes(newest)
        Self.reference = tensors
        return tensors
    }

    /// `--resume auto` in `dir` ends with the uninterrupted run's tensors, bit for bit.
    func assertResumeEndsBitwise(_ dir: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let reference = try uninterruptedTensors()
        let r = try MPIRun.run(ranks: 4, ["train"] + common + ["--run-dir", dir, "--resume", "auto"], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        let newest = try Checkpoints.newest(runDir: dir)
        XCTAssertTrue(newest.hasSuffix("step-00000040.safetensors"), newest, file: file, line: line)
        XCTAssertEqual(try Checkpoints.tensorBytes(newest), reference, "the resumed run's final tensors differ from the uninterrupted run's",
                       file: file, line: line)
    }

    /// No temporary file (`.<name>.tmp.<hex>`) anywhere in the run dir.
    func assertNoTemporaryFiles(_ dir: String, file: StaticString = #filePath, line: UInt = #line) {
        let all = (FileManager.default.enumerator(atPath: dir)?.allObjects as? [String]) ?? []
        XCTAssertEqual(all.filter { $0.contains(".tmp.") }, [], "temporary files left in the run dir", file: file, line: line)
    }

    /// The step a checkpoint records, after checking that it is intact (checksum).
    func checkpointStep(_ path: String) throws -> Int? {
        let file = try SafeTensorsFile(path: path)
        XCTAssertEqual(file.checksumVerified, true, "\(path) carries no checksum")
        return file.metadata["step"].flatMap { Int($0) }
    }

    /// The step of the last line of metrics.jsonl.
    func lastLoggedStep(_ dir: String) throws -> Int? {
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        guard let last = text.split(separator: "\n").last,
              let object = try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any] else { return nil }
        return object["step"] as? Int
    }

    /// Starts `command` whose rank 0 holds at step index 13, just before its stop vote, until
    /// a stop signal reaches it (DDPTRAIN_INJECT_HOLD), while the other ranks wait for it in
    /// the gradient allreduce; sends SIGTERM to the command once rank 0 holds. The launcher
    /// passes it on as SIGUSR1; rank 0's main thread, waiting, is the thread the kernel gives
    /// it to, so rank 0 votes to stop in step 14 and every rank stops after exactly that step.
    /// With `everyProcess`, SIGTERM goes to every process of the job at once, the command,
    /// mpirun and the ranks, as Slurm (scancel, preemption, the time limit) and systemd send
    /// it: mpirun must leave the ranks alone, and each rank takes the signal that reaches it
    /// directly and the one passed on by the launcher as one request. Checks what must hold.
    func assertSigtermStopsTheJob(_ executable: String, _ arguments: [String], dir: String, launcherLine: Bool,
                                  everyProcess: Bool = false) throws {
        let job = try Background(executable, arguments, environment: environment.merging(["DDPTRAIN_INJECT_HOLD": "0:13"]) { $1 })
        var ranks: [Int32] = []
        let held = Background.waitUntil(timeout: 60) {
            ranks = Processes.descendants(of: job.pid).filter { Processes.name(of: $0) == "ddptrain" }
            return Processes.heldRank(in: job.err.snapshot(), stepIndex: 13) != nil
        }
        XCTAssertTrue(held, "rank 0 did not hold at step 13: \(job.err.snapshot())")
        XCTAssertEqual(ranks.count, 4, "the ranks: \(ranks)")
        let tree = Processes.descendants(of: job.pid)

        if everyProcess {
            for pid in [job.pid] + tree { kill(pid, SIGTERM) }
        } else {
            XCTAssertEqual(kill(job.pid, SIGTERM), 0)
        }
        let signalled = Date()
        let r = job.wait(timeout: 60)
        let seconds = Date().timeIntervalSince(signalled)

        XCTAssertFalse(r.timedOut, r.stderr)
        XCTAssertLessThan(seconds, 10, "the job took \(seconds) s to stop")
        XCTAssertEqual(r.status, Self.stoppedOnRequest, r.stdout + r.stderr)
        XCTAssertTrue(Background.waitUntil(timeout: 5) { tree.allSatisfy { Processes.name(of: $0) == nil } },
                      "processes left: \(tree.filter { Processes.name(of: $0) != nil }.map { "\($0) \(Processes.name(of: $0) ?? "")" })")
        let stopStep = 14
        // Passed on by a launcher, the request is SIGUSR1; sent to every rank too, the
        // largest signal number any rank got first (SIGTERM, unless the launcher was faster).
        let name = ["SIGUSR1", "SIGTERM"].first { (r.stdout + r.stderr).contains("stop requested (\($0)): every rank stops at step 14") }
        XCTAssertNotNil(name, "no stop after step 14: \(r.stdout + r.stderr)")
        if !everyProcess { XCTAssertEqual(name, "SIGUSR1") }
        let signal = name ?? "SIGUSR1"
        let checkpoint = dir + "/checkpoints/step-000000\(stopStep).safetensors"
        XCTAssertEqual(try Checkpoints.newest(runDir: dir), checkpoint)
        XCTAssertEqual(try checkpointStep(checkpoint), stopStep)
        XCTAssertEqual(try lastLoggedStep(dir), stopStep)
        XCTAssertTrue(r.stderr.contains("ddptrain: stopped on request (\(signal)) at step \(stopStep) of 40: checkpoint \(checkpoint) holds it"), r.stderr)
        if launcherLine {
            XCTAssertTrue(r.stderr.contains("launch/train: attempt 1 stopped on request after"), r.stderr)
            XCTAssertTrue(r.stderr.contains("(exit status 79): not restarting"), r.stderr)
            XCTAssertFalse(r.stderr.contains("attempt 2"), r.stderr)
        }
        assertNoTemporaryFiles(dir)
        try assertResumeEndsBitwise(dir)
        print("SIGTERM to \(everyProcess ? "every process under " : "")\(URL(fileURLWithPath: executable).lastPathComponent): every rank exited \(String(format: "%.1f", seconds)) s later")
    }

    func testSigtermToLaunchTrainStopsEveryRankWithACheckpointAndResumesBitwise() throws {
        let dir = runDir("launch-train")
        let launcher = MPIRun.repoRoot.appendingPathComponent("launch/train").path
        try assertSigtermStopsTheJob(launcher, ["-n", "4", "--max-restarts", "3", "--restart-delay", "0", "-x", "DDPTRAIN_INJECT_HOLD", "--"]
                                        + common + ["--run-dir", dir], dir: dir, launcherLine: true)
    }

    /// As Slurm's scancel, preemption and time limit (and systemd) do: SIGTERM to every
    /// process of the job at once.
    func testSigtermToEveryProcessOfTheJobStopsEveryRankWithACheckpointAndResumesBitwise() throws {
        let dir = runDir("every-process")
        let launcher = MPIRun.repoRoot.appendingPathComponent("launch/train").path
        try assertSigtermStopsTheJob(launcher, ["-n", "4", "--max-restarts", "3", "--restart-delay", "0", "-x", "DDPTRAIN_INJECT_HOLD", "--"]
                                        + common + ["--run-dir", dir], dir: dir, launcherLine: true, everyProcess: true)
    }

    func testSigtermToLaunchMpirunStopsEveryRankWithACheckpointAndResumesBitwise() throws {
        let dir = runDir("launch-mpirun")
        let mpirun = MPIRun.repoRoot.appendingPathComponent("launch/mpirun").path
        try assertSigtermStopsTheJob(mpirun, ["-n", "4", "-x", "DDPTRAIN_INJECT_HOLD", MPIRun.binary, "train"] + common + ["--run-dir", dir],
                                     dir: dir, launcherLine: false)
    }

    /// SIGTERM to rank 2 just before the evaluation after step 16 (an epoch end): the
    /// evaluation finishes and is logged, the epoch's checkpoint is written as always, and the
    /// ranks stop at the next boundary without writing it again.
    func testSignalDuringEvaluationFinishesItAndStopsWithTheCheckpointOfThatStep() throws {
        let dir = runDir("eval")
        let r = try MPIRun.run(ranks: 4, ["train"] + common + ["--run-dir", dir], environment: ["DDPTRAIN_INJECT_SIGNAL": "2:16:eval"])
        XCTAssertEqual(r.status, Self.stoppedOnRequest, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("epoch 2: test loss"), r.stdout)
        XCTAssertFalse(r.stdout.contains("epoch 3: test loss"), r.stdout)
        let checkpoint = dir + "/checkpoints/step-00000016.safetensors"
        XCTAssertEqual(try Checkpoints.newest(runDir: dir), checkpoint)
        XCTAssertEqual(try checkpointStep(checkpoint), 16)
        XCTAssertEqual(try lastLoggedStep(dir), 16)
        XCTAssertTrue(r.stderr.contains("stopped on request (SIGTERM) at step 16 of 40"), r.stderr)
        assertNoTemporaryFiles(dir)
        try assertResumeEndsBitwise(dir)
    }

    /// SIGTERM to rank 0 while it writes the checkpoint of step 20 (its temporary file open):
    /// the write finishes, and the ranks stop at the next boundary with that checkpoint.
    func testSignalDuringACheckpointWriteLetsTheWriteFinish() throws {
        let dir = runDir("write")
        let r = try MPIRun.run(ranks: 4, ["train"] + common + ["--run-dir", dir], environment: ["DDPTRAIN_INJECT_SIGNAL": "0:20:checkpoint"])
        XCTAssertEqual(r.status, Self.stoppedOnRequest, r.stdout + r.stderr)
        let checkpoint = dir + "/checkpoints/step-00000020.safetensors"
        XCTAssertEqual(try Checkpoints.newest(runDir: dir), checkpoint)
        XCTAssertEqual(try checkpointStep(checkpoint), 20)
        XCTAssertEqual(try lastLoggedStep(dir), 20)
        XCTAssertTrue(r.stderr.contains("stopped on request (SIGTERM) at step 20 of 40: checkpoint \(checkpoint) holds it"), r.stderr)
        assertNoTemporaryFiles(dir)
        try assertResumeEndsBitwise(dir)
    }

    /// Rank 1 asks to stop in step index 13; while rank 0 writes the stop's checkpoint of step
    /// 14, 2 s after the ranks agreed to stop (the injection waits that long), a SIGTERM
    /// reaches it: a second request; it ends at once with 128 + 15, its temporary file
    /// removed; the checkpoints before are intact and a resume still ends bitwise.
    func testSecondSignalEndsAtOnceAndLeavesThePreviousCheckpointsIntact() throws {
        let dir = runDir("second")
        let r = try MPIRun.run(ranks: 4, ["train"] + common + ["--run-dir", dir],
                               environment: ["DDPTRAIN_INJECT_SIGNAL": "1:13:step,0:14:checkpoint"])
        XCTAssertEqual(r.status, 128 + SIGTERM, r.stdout + r.stderr)
        XCTAssertFalse(r.timedOut)
        XCTAssertEqual(Checkpoints.names(runDir: dir), ["step-00000008.safetensors", "step-00000010.safetensors"])
        XCTAssertEqual(try checkpointStep(dir + "/checkpoints/step-00000010.safetensors"), 10)
        assertNoTemporaryFiles(dir)
        try assertResumeEndsBitwise(dir)
    }

    /// Signals straight after each other, as one request reaches a rank when a scheduler
    /// signals every process of a job and the launchers pass it on (here: SIGTERM and SIGINT
    /// to rank 0 directly, and SIGTERM to launch/mpirun, which passes SIGUSR1 on), are one
    /// request: the ranks stop after step 14 with its checkpoint. A signal 2 s or more after
    /// the first is a second request: `testSecondSignalEndsAtOnceAndLeavesThePreviousCheckpointsIntact`.
    func testSignalsWithinTwoSecondsAreOneRequest() throws {
        let dir = runDir("one-request")
        let mpirun = MPIRun.repoRoot.appendingPathComponent("launch/mpirun").path
        let job = try Background(mpirun, ["-n", "4", "-x", "DDPTRAIN_INJECT_HOLD", MPIRun.binary, "train"] + common + ["--run-dir", dir],
                                 environment: environment.merging(["DDPTRAIN_INJECT_HOLD": "0:13"]) { $1 })
        var rankZero: Int32 = 0
        let held = Background.waitUntil(timeout: 60) {
            guard let pid = Processes.heldRank(in: job.err.snapshot(), stepIndex: 13) else { return false }
            rankZero = pid
            return true
        }
        XCTAssertTrue(held, "rank 0 did not hold at step 13: \(job.err.snapshot())")
        XCTAssertEqual(kill(rankZero, SIGTERM), 0)
        XCTAssertEqual(kill(rankZero, SIGINT), 0)
        XCTAssertEqual(kill(job.pid, SIGTERM), 0)
        let r = job.wait(timeout: 60)
        XCTAssertFalse(r.timedOut, r.stderr)
        XCTAssertEqual(r.status, Self.stoppedOnRequest, r.stdout + r.stderr)
        let checkpoint = dir + "/checkpoints/step-00000014.safetensors"
        XCTAssertEqual(try Checkpoints.newest(runDir: dir), checkpoint)
        XCTAssertEqual(try checkpointStep(checkpoint), 14)
        XCTAssertTrue(r.stderr.contains("at step 14 of 40: checkpoint \(checkpoint) holds it"), r.stderr)
        assertNoTemporaryFiles(dir)
        try assertResumeEndsBitwise(dir)
    }

    /// A stop request that reached launch/mpirun before mpirun had started the ranks is left
    /// in the file DDPTRAIN_STOP_FILE names: `train` stops before its first step (79), any
    /// other command ends at once (128 + SIGUSR1), as if the signal had reached them.
    func testAStopLeftByTheLauncherBeforeTheRanksStartedIsTaken() throws {
        let file = scratch.appendingPathComponent("stop-requested").path
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data()))
        let dir = runDir("left")
        let r = try MPIRun.run(ranks: 2, ["train"] + common + ["--run-dir", dir], environment: ["DDPTRAIN_STOP_FILE": file])
        XCTAssertEqual(r.status, Self.stoppedOnRequest, r.stdout + r.stderr)
        XCTAssertTrue(r.stderr.contains("stopped on request (SIGUSR1) at step 0 of 40: no step was trained"), r.stderr)
        XCTAssertEqual(Checkpoints.names(runDir: dir), [])
        let doctor = try MPIRun.run(ranks: 1, ["doctor"], environment: ["DDPTRAIN_STOP_FILE": file])
        XCTAssertEqual(doctor.status, 128 + SIGUSR1, doctor.stdout + doctor.stderr)
        let without = try MPIRun.run(ranks: 2, ["train"] + common + ["--run-dir", runDir("not-left")],
                                     environment: ["DDPTRAIN_STOP_FILE": file + ".absent"])
        XCTAssertEqual(without.status, 0, without.stderr)
    }

    /// A signal before the first step (data loaded, model initialized): nothing trained,
    /// nothing written, the same status.
    func testSignalBeforeTheFirstStepStopsWithoutACheckpoint() throws {
        let dir = runDir("start")
        let r = try MPIRun.run(ranks: 4, ["train"] + common + ["--run-dir", dir], environment: ["DDPTRAIN_INJECT_SIGNAL": "3:0:start"])
        XCTAssertEqual(r.status, Self.stoppedOnRequest, r.stdout + r.stderr)
        XCTAssertTrue(r.stderr.contains("stopped on request (SIGTERM) at step 0 of 40: no step was trained, nothing to save"), r.stderr)
        XCTAssertEqual(Checkpoints.names(runDir: dir), [])
        assertNoTemporaryFiles(dir)
    }

    /// A signal in the last step: there is no boundary left to stop at; the run finishes as
    /// usual (exit 0, final checkpoint).
    func testSignalInTheLastStepLetsTheRunFinish() throws {
        let dir = runDir("last")
        let r = try MPIRun.run(ranks: 4, ["train"] + common + ["--run-dir", dir], environment: ["DDPTRAIN_INJECT_SIGNAL": "0:39:step"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stderr.contains("ddptrain: SIGTERM received: stopping at the next step boundary with a checkpoint (a second signal, 2 s or more later, ends at once)"), r.stderr)
        XCTAssertFalse(r.stderr.contains("stopped on request"), r.stderr)
        XCTAssertEqual(try Checkpoints.tensorBytes(try Checkpoints.newest(runDir: dir)), try uninterruptedTensors())
        assertNoTemporaryFiles(dir)
    }
}
