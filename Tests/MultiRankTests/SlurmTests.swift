import Foundation
import XCTest

/// cluster/slurm/train.sbatch through a real Slurm: cluster/slurm/up starts a one-node
/// cluster on this machine (Debian's slurmctld, slurmd and munge, which launch/setup
/// installs), the tests submit jobs with sbatch and read their ends with scontrol and
/// `sacct -c` (the job-completion log; there is no accounting database). The cluster is
/// brought down again at the end, unless it was up before the tests. Needs root.
final class SlurmTests: XCTestCase {
    /// What cluster/slurm/up said when the class started, and whether the tests started it.
    nonisolated(unsafe) static var upFailure: String?
    nonisolated(unsafe) static var startedHere = false

    var scratch: URL!
    var submitted: [String] = []

    static func script(_ name: String) -> String { MPIRun.repoRoot.appendingPathComponent("cluster/slurm/\(name)").path }

    /// A command run from the repository root (sbatch records it as the submit directory,
    /// where train.sbatch finds launch/), with this process's environment minus MPI's. Its
    /// output goes to files, not pipes: a daemon it starts may keep them open.
    @discardableResult
    static func command(_ args: [String], environment: [String: String] = [:], timeout: Double = 60) -> MPIRun.Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = args
        process.currentDirectoryURL = MPIRun.repoRoot
        var env = MPIRun.childEnvironment()
        env["PATH"] = (env["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        for (key, value) in environment { env[key] = value }
        process.environment = env
        let files = ["out", "err"].map { FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-slurm-\(UUID().uuidString).\($0)") }
        defer { for file in files { try? FileManager.default.removeItem(at: file) } }
        for file in files { FileManager.default.createFile(atPath: file.path, contents: nil) }
        let start = Date()
        do {
            process.standardOutput = try FileHandle(forWritingTo: files[0])
            process.standardError = try FileHandle(forWritingTo: files[1])
            try process.run()
        } catch {
            return MPIRun.Result(status: 127, stdout: "", stderr: "\(args[0]): \(error)", seconds: 0, timedOut: false)
        }
        let finished = Background.waitUntil(timeout: timeout) { !process.isRunning }
        if !finished { process.terminate() }
        process.waitUntilExit()
        let text = files.map { (try? String(contentsOf: $0, encoding: .utf8)) ?? "" }
        return MPIRun.Result(status: process.terminationStatus, stdout: text[0], stderr: text[1],
                             seconds: Date().timeIntervalSince(start), timedOut: !finished)
    }

    override class func setUp() {
        super.setUp()
        guard getuid() == 0 else { return }
        let up = command([script("up")], timeout: 90)
        if up.status != 0 || up.timedOut {
            upFailure = "cluster/slurm/up failed (status \(up.status)\(up.timedOut ? ", timed out after 90 s" : "")): \(up.stdout)\(up.stderr)"
        }
        startedHere = !up.stdout.contains("already up")
        print(up.stdout, terminator: "")
    }

    override class func tearDown() {
        if getuid() == 0 && startedHere {
            let down = command([script("down")], timeout: 90)
            print(down.stdout + down.stderr, terminator: "")
            if down.status != 0 { print("SlurmTests: cluster/slurm/down failed with status \(down.status)") }
        }
        super.tearDown()
    }

    override func setUpWithError() throws {
        guard getuid() == 0 else {
            throw XCTSkip("the Slurm tests start slurmctld, slurmd and munged and write /etc/slurm/slurm.conf (cluster/slurm/up): they need root")
        }
        if let failure = Self.upFailure {
            XCTFail(failure)
            throw CancellationError()
        }
        guard FileManager.default.isExecutableFile(atPath: MPIRun.binary) else {
            throw XCTSkip("no release binary at \(MPIRun.binary): run launch/test (or swift build -c release)")
        }
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-slurm-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        // Nothing of a failed test may run on: cancel its jobs, wait for their processes.
        for job in submitted where !Self.finalStates.contains(state(job)["JobState"] ?? "") {
            Self.command(["scancel", "--full", job])
        }
        for job in submitted { _ = Background.waitUntil(timeout: 60) { processes(of: job).isEmpty } }
        if let scratch { try? FileManager.default.removeItem(at: scratch) }
    }

    static let finalStates: Set<String> = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"]

    func path(_ name: String) -> String { scratch.appendingPathComponent(name).path }

    /// 512 samples, 2 ranks x 16: a run of a few seconds, checkpoints every 40 steps.
    let training = ["--model", "mlp", "--train-samples", "512", "--eval-every", "0", "--per-rank-batch", "16",
                    "--log-every", "50", "--steps", "120", "--checkpoint-every", "40"]

    /// sbatch train.sbatch on 2 tasks of one node; returns the job id.
    func submit(_ name: String, launch: String, sbatchOptions: [String] = [], environment: [String: String] = [:],
                trainArgs: [String]? = nil) throws -> String {
        var env = ["LAUNCH": launch, "RUN_DIR": path(name), "DDPTRAIN_BIN": MPIRun.binary, "MAX_RESTARTS": "0"]
        for (key, value) in environment { env[key] = value }
        let jobName = name.split(whereSeparator: { !$0.isLetter && !$0.isNumber }).joined(separator: "-")
        let r = Self.command(["sbatch", "--parsable", "--job-name=\(jobName)", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2",
                              "--cpus-per-task=1", "--time=5", "--output=\(path(name)).out", "--export=ALL"]
                             + sbatchOptions + [Self.script("train.sbatch")] + (trainArgs ?? training), environment: env)
        XCTAssertEqual(r.status, 0, "sbatch: \(r.stderr)")
        let job = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ";").first.map(String.init) ?? ""
        XCTAssertFalse(job.isEmpty, "sbatch printed no job id: \(r.stdout) \(r.stderr)")
        submitted.append(job)
        return job
    }

    /// `scontrol show job` as key=value pairs.
    func state(_ job: String) -> [String: String] {
        let r = Self.command(["scontrol", "show", "job", "-o", job])
        var fields: [String: String] = [:]
        for pair in r.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            guard let equals = pair.firstIndex(of: "=") else { continue }
            fields[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
        }
        return fields
    }

    /// Polls scontrol until the job is in one of `states` (true) or `timeout` passes (false).
    func wait(_ job: String, for states: Set<String>, timeout: Double) -> Bool {
        Background.waitUntil(timeout: timeout) { states.contains(state(job)["JobState"] ?? "") }
    }

    /// The job's lines in the job-completion log, as `sacct -c` shows them.
    func sacct(_ job: String) -> String {
        let r = Self.command(["sacct", "-c", "-j", job, "-o", "JobID,JobName,State,ExitCode,Start,End"])
        return r.stdout + r.stderr
    }

    func output(_ name: String) -> String { (try? String(contentsOfFile: path(name) + ".out", encoding: .utf8)) ?? "" }

    /// Processes that belong to the job (SLURM_JOB_ID in their environment): the batch
    /// script, launch/train, mpirun, srun, the ranks.
    func processes(of job: String) -> [Int32] {
        let needle = Array("SLURM_JOB_ID=\(job)".utf8)
        return Processes.table().map(\.pid).filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
            return data.split(separator: 0).contains { Array($0) == needle }
        }
    }

    func ranks(of job: String) -> [Int32] { processes(of: job).filter { Processes.name(of: $0) == "ddptrain" } }

    /// The step of a checkpoint file name (step-00000123.safetensors).
    func step(_ name: String) -> Int? {
        guard name.hasPrefix("step-"), name.hasSuffix(".safetensors") else { return nil }
        return Int(name.dropFirst(5).dropLast(12))
    }

    /// The same training straight through, outside Slurm: the bytes every run must end with
    /// (run once for the class).
    nonisolated(unsafe) static var reference: [String: [UInt8]]?
    func uninterrupted() throws -> [String: [UInt8]] {
        if let reference = Self.reference { return reference }
        let r = try MPIRun.run(ranks: 2, ["train"] + training + ["--run-dir", path("reference")], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        let newest = try Checkpoints.newest(runDir: path("reference"))
        XCTAssertTrue(newest.hasSuffix("step-00000120.safetensors"), newest)
        let bytes = try Checkpoints.tensorBytes(newest)
        Self.reference = bytes
        return bytes
    }

    /// A short training ends COMPLETED with exit 0 in both launch modes: Open MPI's mpirun
    /// inside the allocation (launch/train) and srun --mpi=pmix (Slurm's PMIx plugin starts
    /// the ranks, no mpirun); both end with the bytes of a run outside Slurm. The srun run's
    /// RUN_DIR has a space and a quote in its name: the per-node check must take it as data.
    func testShortTrainingCompletesWithMpirunAndWithSrunPMIx() throws {
        let reference = try uninterrupted()
        let runs = [(name: "mpirun", launch: "mpirun"), (name: "srun run's dir", launch: "srun")]
        let jobs = try runs.map { try submit($0.name, launch: $0.launch) }
        for (job, run) in zip(jobs, runs) {
            let out = { self.output(run.name) }
            XCTAssertTrue(wait(job, for: Self.finalStates, timeout: 120), "job \(job) did not end: \(state(job)) \(out())")
            let s = state(job)
            print("LAUNCH=\(run.launch):\n\(sacct(job))")
            XCTAssertEqual(s["JobState"], "COMPLETED", out())
            XCTAssertEqual(s["ExitCode"], "0:0", out())
            XCTAssertEqual(s["Restarts"], "0")
            XCTAssertTrue(sacct(job).contains("COMPLETED"), sacct(job))
            XCTAssertTrue(out().contains("2 ranks with \(run.launch)"), out())
            let newest = try Checkpoints.newest(runDir: path(run.name))
            XCTAssertTrue(newest.hasSuffix("step-00000120.safetensors"), newest)
            XCTAssertEqual(try Checkpoints.tensorBytes(newest), reference, "LAUNCH=\(run.launch) ended with other bytes than a run outside Slurm")
        }
        // srun started the ranks itself: no launch/train, no mpirun.
        XCTAssertTrue(output("mpirun").contains("launch/train: attempt 1 finished"), output("mpirun"))
        XCTAssertFalse(output("srun run's dir").contains("launch/train"), output("srun run's dir"))
    }

    /// The per-node check before training: DATA_DIR that a node cannot read ends the job at
    /// once with 65 (a configuration error: no restart, no requeue), and names the folder.
    func testUnreadableDataDirEndsTheJobWithoutRestartOrRequeue() throws {
        let missing = path("no-such-data")
        let job = try submit("nodata", launch: "srun", environment: ["DATA_DIR": missing, "MAX_RESTARTS": "2"])
        XCTAssertTrue(wait(job, for: Self.finalStates, timeout: 60), "job \(job) did not end: \(state(job))")
        let s = state(job)
        print("DATA_DIR missing:\n\(sacct(job))")
        XCTAssertEqual(s["JobState"], "FAILED", output("nodata"))
        XCTAssertEqual(s["ExitCode"], "65:0", output("nodata"))
        XCTAssertEqual(s["Restarts"], "0")
        XCTAssertTrue(output("nodata").contains("cannot read DATA_DIR \(missing)"), output("nodata"))
        XCTAssertFalse(output("nodata").contains("train:"), "training started: \(output("nodata"))")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path("nodata")).filter { $0.hasPrefix(".probe") }, [],
                       "the probe file was left in RUN_DIR")
    }

    /// Rank 0 holds at step index 50, just before its stop vote, until a stop signal reaches
    /// it (DDPTRAIN_INJECT_HOLD, in the run that did not resume); returns once it says so.
    /// Its main thread waits there, so that is the thread the kernel gives the signal to, and
    /// the ranks agree to stop after exactly step 51. With `stopOthers`, the test stops the
    /// other rank too (it waits in the allreduce, busy), so that the job waits without using
    /// CPU until `release`; returns the stopped ranks.
    @discardableResult
    func holdAtStep50(_ job: String, _ name: String, stopOthers: Bool) -> [Int32] {
        var others: [Int32] = []
        let held = Background.waitUntil(timeout: 60) {
            guard let pid = Processes.heldRank(in: output(name), stepIndex: 50) else { return false }
            let ranks = ranks(of: job)
            others = ranks.filter { $0 != pid }
            return ranks.count == 2 && others.count == 1
        }
        XCTAssertTrue(held, "rank 0 did not hold at step 50: \(state(job)) \(output(name))")
        guard stopOthers else { return [] }
        for pid in others { kill(pid, SIGSTOP) }
        return others
    }

    /// Lets the stopped ranks go on once `signal` has reached every one of them (pending in
    /// /proc/PID/status).
    func release(_ stopped: [Int32], once signal: Int32) {
        let bit = UInt64(1) << UInt64(signal - 1)
        let pending = Background.waitUntil(timeout: 30) {
            stopped.allSatisfy { pid in
                let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
                return status.split(separator: "\n").contains { line in
                    (line.hasPrefix("SigPnd:") || line.hasPrefix("ShdPnd:"))
                        && (UInt64(line.split(separator: "\t").last ?? "", radix: 16) ?? 0) & bit != 0
                }
            }
        }
        for pid in stopped { kill(pid, SIGCONT) }
        XCTAssertTrue(pending, "signal \(signal) did not reach the stopped ranks \(stopped) within 30 s")
    }

    /// The step every rank agreed to stop at: "stop requested (SIGUSR1): every rank stops at step N".
    func stopStep(_ out: String) -> Int? {
        out.split(separator: "\n").first { $0.hasPrefix("stop requested (") }
            .flatMap { $0.components(separatedBy: "every rank stops at step ").last }.flatMap { Int($0) }
    }

    /// The ranks, held at step index 50, were told to stop through SIGUSR1 to the batch script: they
    /// wrote a checkpoint of the step they were on (51: not one of the periodic ones)
    /// and exited with 79, the script requeued the job, and the requeued job resumed from
    /// that checkpoint and ended with the bytes of an uninterrupted run.
    func assertRequeuedAndResumedBitwise(_ job: String, _ name: String, reference: [String: [UInt8]]) throws {
        XCTAssertTrue(wait(job, for: Self.finalStates, timeout: 120), "job \(job) did not end: \(state(job)) \(output(name))")
        let gone = Background.waitUntil(timeout: 60) { processes(of: job).isEmpty }
        let s = state(job), out = output(name)
        print("\(name):\n\(sacct(job))")
        XCTAssertEqual(s["JobState"], "COMPLETED", out)
        XCTAssertEqual(s["ExitCode"], "0:0", out)
        XCTAssertGreaterThanOrEqual(Int(s["Restarts"] ?? "") ?? 0, 1, "the job was not requeued: \(out)")
        XCTAssertTrue(sacct(job).contains("PENDING") && sacct(job).contains("COMPLETED"), "the completion log shows no requeue: \(sacct(job))")
        XCTAssertTrue(gone, "processes of job \(job) still run: \(processes(of: job).map { "\($0) \(Processes.name(of: $0) ?? "?")" })")
        XCTAssertTrue(out.contains("the ranks checkpointed and stopped (status 79); requeueing job \(job)"), out)
        XCTAssertTrue(out.contains("train.sbatch: job \(job) (restart count 1)"), out)
        // "resumed from RUN_DIR/checkpoints/step-00000051.safetensors at step 51"
        let resumedStep = out.split(separator: "\n").first { $0.hasPrefix("resumed from ") }
            .flatMap { $0.components(separatedBy: " at step ").last }.flatMap { Int($0) }
        XCTAssertNotNil(resumedStep, "the requeued run did not resume: \(out)")
        // The step in progress when the signal came (index 50: step 51), not a periodic checkpoint.
        let stoppedAt = stopStep(out)
        XCTAssertEqual(stoppedAt, 51, "not stopped after the step in progress (51): \(out)")
        XCTAssertEqual(resumedStep, stoppedAt, "the requeued run did not resume from the stop checkpoint: \(out)")
        let newest = try Checkpoints.newest(runDir: path(name))
        XCTAssertTrue(newest.hasSuffix("step-00000120.safetensors"), newest)
        XCTAssertEqual(try Checkpoints.tensorBytes(newest), reference, "the requeued job ended with other bytes than an uninterrupted run")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path(name + "/checkpoints")).filter { !$0.hasSuffix(".safetensors") }, [],
                       "temporary files left in the checkpoint folder")
    }

    /// Near the time limit Slurm sends SIGUSR1 to the batch script (--signal=B:USR1@20 with
    /// --time=1: at the first of slurmctld's 30-second checks after 40 s remain, so 10 to
    /// 40 s after the start). train.sbatch passes it to the ranks (launch/train, launch/mpirun,
    /// mpirun), which checkpoint the step they are on and exit with 79; the script requeues
    /// the job; the requeued job resumes from that checkpoint, bitwise.
    func testTimeLimitSignalCheckpointsRequeuesAndTheRequeuedJobResumesBitwise() throws {
        let reference = try uninterrupted()
        let job = try submit("timelimit", launch: "mpirun", sbatchOptions: ["--time=1", "--signal=B:USR1@20", "--requeue"],
                             environment: ["DDPTRAIN_INJECT_HOLD": "0:50"])
        let held = holdAtStep50(job, "timelimit", stopOthers: true)
        let signalled = Background.waitUntil(timeout: 60) { output("timelimit").contains("train.sbatch: SIGUSR1") }
        XCTAssertTrue(signalled, "no SIGUSR1 within 60 s of a 1-minute job: \(state(job)) \(output("timelimit"))")
        release(held, once: SIGUSR1)
        try assertRequeuedAndResumedBitwise(job, "timelimit", reference: reference)
    }

    /// The same by hand and with LAUNCH=srun: `scancel --batch --signal=USR1 JOB` (what the
    /// time limit does) reaches the script, which passes it to srun, which passes it to the
    /// ranks; they checkpoint and exit with 79, the job is requeued and resumes, bitwise.
    func testUSR1ToTheBatchScriptStopsSrunRanksWithACheckpointAndRequeues() throws {
        let reference = try uninterrupted()
        let job = try submit("usr1-srun", launch: "srun", sbatchOptions: ["--requeue"], environment: ["DDPTRAIN_INJECT_HOLD": "0:50"])
        let held = holdAtStep50(job, "usr1-srun", stopOthers: true)
        let r = Self.command(["scancel", "--batch", "--signal=USR1", job])
        XCTAssertEqual(r.status, 0, r.stderr)
        let signalled = Background.waitUntil(timeout: 30) { output("usr1-srun").contains("train.sbatch: SIGUSR1") }
        XCTAssertTrue(signalled, "the script did not get SIGUSR1: \(state(job)) \(output("usr1-srun"))")
        release(held, once: SIGUSR1)
        try assertRequeuedAndResumedBitwise(job, "usr1-srun", reference: reference)
    }

    /// scancel: Slurm sends SIGCONT and SIGTERM to every process of the job, the ranks
    /// included, and SIGKILL KillWait seconds later. Returns the job's output once the job is
    /// CANCELLED and nothing of it runs any more, after checking that.
    func cancelAtStep50(_ name: String, launch: String) throws -> String {
        let job = try submit(name, launch: launch, environment: ["DDPTRAIN_INJECT_HOLD": "0:50"])
        holdAtStep50(job, name, stopOthers: false)
        let r = Self.command(["scancel", job])
        XCTAssertEqual(r.status, 0, r.stderr)
        let cancelled = Date()
        XCTAssertTrue(wait(job, for: Self.finalStates, timeout: 60), "job \(job) did not end: \(state(job))")
        let gone = Background.waitUntil(timeout: 60) { processes(of: job).isEmpty }
        let seconds = Date().timeIntervalSince(cancelled)
        let s = state(job), out = output(name)
        print("scancel, LAUNCH=\(launch) (all processes gone after \(String(format: "%.1f", seconds)) s):\n\(sacct(job))")
        XCTAssertTrue(gone, "processes of job \(job) still run: \(processes(of: job).map { "\($0) \(Processes.name(of: $0) ?? "?")" })")
        XCTAssertEqual(s["JobState"], "CANCELLED", out)
        XCTAssertEqual(s["Restarts"], "0", "a cancelled job was requeued: \(out)")
        XCTAssertTrue(sacct(job).contains("CANCELLED"), sacct(job))
        XCTAssertFalse(out.contains("requeueing job"), out)
        XCTAssertTrue(out.contains("SIGTERM: the job is cancelled"), out)
        // The checkpoints in place are whole: no temporary file left, the periodic ones intact.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path(name + "/checkpoints")).filter { !$0.hasSuffix(".safetensors") }, [],
                       "temporary files left in the checkpoint folder")
        XCTAssertTrue(Checkpoints.names(runDir: path(name)).contains("step-00000040.safetensors"), "\(Checkpoints.names(runDir: path(name)))")
        return out
    }

    /// scancel stops the ranks after the step they are on (index 50: step 51) with a
    /// checkpoint of it; they exit with 79; the script does not requeue; the job is CANCELLED.
    func assertScancelKeptTheStepInProgress(_ name: String, _ out: String, file: StaticString = #filePath, line: UInt = #line) {
        let stoppedAt = stopStep(out)
        XCTAssertEqual(stoppedAt, 51, "not stopped after the step in progress (51): \(out)", file: file, line: line)
        XCTAssertTrue(Checkpoints.names(runDir: path(name)).contains("step-00000051.safetensors"),
                      "no checkpoint of the step in progress: \(Checkpoints.names(runDir: path(name))) \(out)", file: file, line: line)
        XCTAssertTrue(out.contains("train.sbatch: stopped on request (status 79, after SIGTERM)"), out, file: file, line: line)
    }

    /// With srun starting the ranks, Slurm signals them and srun leaves the stop to them.
    func testScancelWithSrunStopsTheRanksWithACheckpointWithoutRequeue() throws {
        assertScancelKeptTheStepInProgress("cancel-srun", try cancelAtStep50("cancel-srun", launch: "srun"))
    }

    /// With mpirun, Slurm signals every process of the job (proctrack/linuxproc: all
    /// descendants of the batch script): the script, launch/train, launch/mpirun, mpirun and
    /// the ranks. mpirun runs with SIGTERM blocked (launch/mpirun) and leaves the ranks alone;
    /// each rank takes Slurm's SIGTERM and the launchers' SIGUSR1 as one request.
    func testScancelWithMpirunStopsTheRanksWithACheckpointWithoutRequeue() throws {
        assertScancelKeptTheStepInProgress("cancel-mpirun", try cancelAtStep50("cancel-mpirun", launch: "mpirun"))
    }
}
