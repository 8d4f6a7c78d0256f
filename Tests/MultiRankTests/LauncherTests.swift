import Foundation
import XCTest

/// launch/train: a killed rank ends the job quickly with a message naming it, the launcher
/// restarts with --resume auto and ends bitwise where an uninterrupted run ends (I4, I5);
/// failures that would repeat are not retried; the restart budget is respected.
final class LauncherTests: XCTestCase {
    var scratch: URL!
    let launcher = MPIRun.repoRoot.appendingPathComponent("launch/train").path
    let environment = ["DDPTRAIN_BIN": MPIRun.binary, "OPENBLAS_NUM_THREADS": "1", "DDPTRAIN_PROGRESS": "lines"]

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-launch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        guard FileManager.default.isExecutableFile(atPath: MPIRun.binary) else {
            throw XCTSkip("no release binary at \(MPIRun.binary): run launch/test (or swift build -c release)")
        }
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    func runDir(_ name: String) -> String { scratch.appendingPathComponent(name).path }

    /// 512 samples, 2 ranks x 16: 16 steps per epoch; a run of a few seconds.
    let common = ["--model", "mlp", "--train-samples", "512", "--eval-every", "0", "--per-rank-batch", "16",
                  "--log-every", "100", "--steps", "600", "--checkpoint-every", "25"]

    func testKilledRankIsNamedAndTheRestartEndsBitwiseLikeAnUninterruptedRun() throws {
        let reference = try MPIRun.run(ranks: 2, ["train"] + common + ["--run-dir", runDir("straight")], timeout: 180)
        XCTAssertEqual(reference.status, 0, reference.stderr)

        // A random rank stops itself at a random step after the first checkpoint (step 25),
        // so the job is certainly still running when the kill comes, however fast the
        // machine (600 steps of this MLP take well under a second on an idle one); then
        // kill -9 a random rank: the stopped one, or the one waiting for it in the allreduce.
        let stopRank = Int.random(in: 0...1), stopStep = Int.random(in: 26...590)
        let job = try Background(launcher, ["-n", "2", "--max-restarts", "2", "--restart-delay", "0", "-x", "DDPTRAIN_INJECT_STOP", "--"]
                                    + common + ["--run-dir", runDir("killed")],
                                 environment: environment.merging(["DDPTRAIN_INJECT_STOP": "\(stopRank):\(stopStep)"]) { $1 })
        var ranks: [Int32] = []
        let stopped = Background.waitUntil(timeout: 60) {
            ranks = Processes.descendants(of: job.pid).filter { Processes.name(of: $0) == "ddptrain" }
            return ranks.contains { Processes.state(of: $0) == "T" }
        }
        XCTAssertTrue(stopped, "no rank stopped at step \(stopStep): \(job.err.snapshot())")
        XCTAssertEqual(ranks.count, 2, "the ranks under the launcher: \(ranks)")
        let victim = try XCTUnwrap(ranks.randomElement())
        let victimRank = try XCTUnwrap(Processes.mpiRank(of: victim))
        XCTAssertEqual(kill(victim, SIGKILL), 0)
        let killed = Date()
        let noticed = Background.waitUntil(timeout: 60) { job.err.snapshot().contains("launch/train: attempt 1 failed") }
        let secondsToEnd = Date().timeIntervalSince(killed)
        let r = job.wait(timeout: 180)

        XCTAssertTrue(noticed, "the job did not end after the kill: \(r.stderr)")
        XCTAssertLessThan(secondsToEnd, 30, "the job took \(secondsToEnd) s to end after kill -9")
        XCTAssertFalse(r.timedOut, r.stderr)
        XCTAssertEqual(r.status, 0, r.stderr)
        // Open MPI names the lost rank, and the launcher's log line carries it.
        XCTAssertTrue(r.stderr.contains("launch/train: attempt 1 failed after") &&
                      r.stderr.contains("Open MPI: process rank \(victimRank) on node") &&
                      r.stderr.contains("exited on signal 9"), r.stderr)
        XCTAssertTrue(r.stderr.contains("restart 1 of 2") && r.stderr.contains("attempt 2 finished"), r.stderr)
        XCTAssertTrue(r.stdout.contains("resumed from \(runDir("killed"))/checkpoints/step-"), r.stdout)
        let log = try String(contentsOfFile: runDir("killed") + "/launch.log", encoding: .utf8)
        XCTAssertTrue(log.contains("exited on signal 9"), log)

        let straight = try Checkpoints.newest(runDir: runDir("straight")), resumed = try Checkpoints.newest(runDir: runDir("killed"))
        XCTAssertTrue(straight.hasSuffix("step-00000600.safetensors") && resumed.hasSuffix("step-00000600.safetensors"))
        XCTAssertEqual(try Checkpoints.tensorBytes(resumed), try Checkpoints.tensorBytes(straight),
                       "the restarted run's final tensors differ from the uninterrupted run's")
        print("kill -9 of rank \(victimRank): job ended in \(String(format: "%.1f", secondsToEnd)) s; restarted run total \(String(format: "%.1f", r.seconds)) s")
    }

    /// --collective-timeout: a rank that stops making progress (SIGSTOP: alive, silent, its
    /// connections open, which no transport notices) ends the job once a step has taken
    /// longer than the timeout, with a restartable status that says so.
    func testStuckRankEndsTheJobAfterTheCollectiveTimeout() throws {
        let job = try Background(launcher, ["-n", "2", "--max-restarts", "0", "--"] + common
                                    + ["--steps", "100000", "--collective-timeout", "3", "--run-dir", runDir("stuck")], environment: environment)
        XCTAssertTrue(Background.waitUntil(timeout: 60) { Checkpoints.count(runDir: runDir("stuck")) > 0 }, "no checkpoint appeared")
        // launch/mpirun runs mpirun as a child of its own (to pass stop signals on).
        let mpirun = try XCTUnwrap(Processes.descendants(of: job.pid).first { Processes.name(of: $0) == "mpirun" }, "no mpirun under the launcher")
        let victim = try XCTUnwrap(Processes.children(of: mpirun, named: "ddptrain").randomElement())
        XCTAssertEqual(kill(victim, SIGSTOP), 0)
        let stopped = Date()
        let ended = Background.waitUntil(timeout: 60) { job.err.snapshot().contains("launch/train: attempt 1 failed") }
        let seconds = Date().timeIntervalSince(stopped)
        let r = job.wait(timeout: 30)
        kill(victim, SIGKILL)  // in case it outlived the job
        XCTAssertTrue(ended, "the job did not end: \(r.stderr)")
        XCTAssertLessThan(seconds, 20, "the job took \(seconds) s to end with a 3 s timeout")
        XCTAssertEqual(r.status, 75, r.stderr)
        XCTAssertTrue(r.stderr.contains("more than --collective-timeout 3 s: a rank or host is probably lost or stuck; ending the job"), r.stderr)
        XCTAssertTrue(r.stderr.contains("launch/train: attempt 1 failed") && r.stderr.contains("exit status 75"), r.stderr)
        XCTAssertTrue(r.stderr.contains("giving up after 0 restart(s)"), r.stderr)
        print("SIGSTOP of a rank with --collective-timeout 3: job ended in \(String(format: "%.1f", seconds)) s")
    }

    /// The whole job suspended (Ctrl-Z, a suspended Slurm job, a paused VM) and resumed
    /// after more than --collective-timeout: the time stopped is nobody's step running long,
    /// and the run goes on (it ended with 75, a false failure).
    func testWholeJobSuspendedLongerThanTheTimeoutGoesOn() throws {
        let job = try Background(launcher, ["-n", "2", "--max-restarts", "0", "--"] + common
                                    + ["--steps", "100000", "--collective-timeout", "3", "--run-dir", runDir("suspended")], environment: environment)
        XCTAssertTrue(Background.waitUntil(timeout: 60) { Checkpoints.count(runDir: runDir("suspended")) > 0 }, "no checkpoint appeared")
        let mpirun = try XCTUnwrap(Processes.descendants(of: job.pid).first { Processes.name(of: $0) == "mpirun" }, "no mpirun under the launcher")
        let ranks = Processes.children(of: mpirun, named: "ddptrain")
        XCTAssertEqual(ranks.count, 2)
        for rank in ranks { XCTAssertEqual(kill(rank, SIGSTOP), 0) }
        Thread.sleep(forTimeInterval: 6)
        for rank in ranks { XCTAssertEqual(kill(rank, SIGCONT), 0) }
        Thread.sleep(forTimeInterval: 4)
        XCTAssertFalse(job.err.snapshot().contains("more than --collective-timeout"), job.err.snapshot())
        XCTAssertEqual(kill(job.pid, SIGTERM), 0)  // a stop on request: status 79
        let r = job.wait(timeout: 60)
        XCTAssertEqual(r.status, 79, r.stderr)
    }

    func testInputErrorsAreNotRestarted() throws {
        for (args, status, mention) in [
            (["--data-dir", scratch.appendingPathComponent("nowhere").path], Int32(65), "not found"),
            (["--lr=-1"], Int32(64), "--lr must be a positive number"),
            (["--collective-timeout=-1"], Int32(64), "--collective-timeout must be 0 (off) or a number of seconds"),
        ] {
            let job = try Background(launcher, ["-n", "2", "--max-restarts", "3", "--restart-delay", "0", "--", "--model", "mlp",
                                                "--steps", "4", "--run-dir", runDir("bad")] + args, environment: environment)
            let r = job.wait(timeout: 60)
            XCTAssertEqual(r.status, status, r.stderr)
            XCTAssertTrue(r.stderr.contains(mention), r.stderr)
            XCTAssertTrue(r.stderr.contains("launch/train: not restarting: exit status \(status) is a failure that would repeat"), r.stderr)
            XCTAssertEqual(r.stderr.components(separatedBy: "launch/train: attempt ").count - 1, 2, "one attempt, started and failed: \(r.stderr)")
        }
    }

    func testRestartBudgetIsRespected() throws {
        // The fault hits step 5 again after every resume from the checkpoint at step 4.
        let job = try Background(launcher, ["-n", "2", "--max-restarts", "2", "--restart-delay", "0", "-x", "DDPTRAIN_INJECT_FAULT", "--",
                                            "--model", "mlp", "--train-samples", "512", "--eval-every", "0", "--steps", "10",
                                            "--per-rank-batch", "16", "--checkpoint-every", "4", "--run-dir", runDir("budget")],
                                 environment: environment.merging(["DDPTRAIN_INJECT_FAULT": "1:5"]) { $1 })
        let r = job.wait(timeout: 120)
        XCTAssertEqual(r.status, 1, r.stderr)
        for attempt in 1...3 { XCTAssertTrue(r.stderr.contains("launch/train: attempt \(attempt) failed"), r.stderr) }
        // The failing rank is named by ddptrain's own line. Open MPI's "MPI_ABORT was invoked
        // on rank 1" banner (which the launcher also quotes) is not printed every time when
        // the job is torn down quickly, so it is not required here.
        XCTAssertTrue(r.stderr.contains("error on rank 1 of 2: injected fault at step 5"), r.stderr)
        XCTAssertTrue(r.stderr.contains("launch/train: giving up after 2 restart(s)"), r.stderr)
        XCTAssertFalse(r.stderr.contains("attempt 4"), r.stderr)
    }

    /// A stop request during the restart delay: no further attempt.
    func testStopDuringTheRestartDelayStartsNoFurtherAttempt() throws {
        let job = try Background(launcher, ["-n", "2", "--max-restarts", "2", "--restart-delay", "60", "-x", "DDPTRAIN_INJECT_FAULT", "--",
                                            "--model", "mlp", "--train-samples", "512", "--eval-every", "0", "--steps", "10",
                                            "--per-rank-batch", "16", "--checkpoint-every", "4", "--run-dir", runDir("delay")],
                                 environment: environment.merging(["DDPTRAIN_INJECT_FAULT": "1:5"]) { $1 })
        XCTAssertTrue(Background.waitUntil(timeout: 60) { job.err.snapshot().contains("launch/train: restart 1 of 2 in 60 s") }, job.err.snapshot())
        XCTAssertEqual(kill(job.pid, SIGTERM), 0)
        let r = job.wait(timeout: 30)
        XCTAssertFalse(r.timedOut, "the restart delay was not cut short: \(r.stderr)")
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("launch/train: stopped by SIGTERM before restart 1; not restarting"), r.stderr)
        XCTAssertFalse(r.stderr.contains("attempt 2"), r.stderr)
    }

    /// SIGHUP to launch/train (its terminal closed) is a stop request like SIGTERM: the ranks
    /// stop with a checkpoint, nothing of the job is left running.
    func testHangupStopsTheJobWithACheckpoint() throws {
        let job = try Background(launcher, ["-n", "2", "--max-restarts", "2", "--restart-delay", "0", "-x", "DDPTRAIN_INJECT_HOLD", "--",
                                            "--model", "mlp", "--train-samples", "512", "--eval-every", "0", "--steps", "40",
                                            "--per-rank-batch", "16", "--run-dir", runDir("hangup")],
                                 environment: environment.merging(["DDPTRAIN_INJECT_HOLD": "0:13"]) { $1 })
        XCTAssertTrue(Background.waitUntil(timeout: 60) { Processes.heldRank(in: job.err.snapshot(), stepIndex: 13) != nil }, job.err.snapshot())
        let tree = Processes.descendants(of: job.pid)
        XCTAssertEqual(kill(job.pid, SIGHUP), 0)
        let r = job.wait(timeout: 60)
        XCTAssertEqual(r.status, 79, r.stderr)
        XCTAssertTrue(r.stderr.contains("stopped on request (SIGUSR1) at step 14 of 40"), r.stderr)
        XCTAssertTrue(Checkpoints.names(runDir: runDir("hangup")).contains("step-00000014.safetensors"))
        XCTAssertTrue(Background.waitUntil(timeout: 5) { tree.allSatisfy { Processes.name(of: $0) == nil } },
                      "processes left: \(tree.filter { Processes.name(of: $0) != nil })")
    }

    /// --continue-on-fewer-hosts counts a lost host's slots out of the hostfile or --host list
    /// as Open MPI names hosts (no user@, no domain for a name, addresses whole), and reads a
    /// hostfile's last line without a final newline. The functions of launch/train, run alone.
    func testLostHostSlotsAreCountedAsOpenMPINamesHosts() throws {
        let hostfile = scratch.appendingPathComponent("hosts").path
        try "node1.cluster.example slots=2\nroot@node2 slots=1\n# a comment\n10.0.0.3 slots=1".write(toFile: hostfile, atomically: false, encoding: .utf8)
        let script = """
            source <(sed -n '/^short_host() {/,/^}/p;/^count_slots() {/,/^}/p' "$1")
            count_slots file "$2" node1; count_slots file "$2" node2; count_slots file "$2" 10.0.0.3; count_slots file "$2" node9
            count_slots list 'a.b.c:2,b,10.1.1.1' a; count_slots list 'a.b.c:2,b,10.1.1.1' 10.1.1.1
            """
        let r = try Background("/bin/bash", ["-c", script, "bash", launcher, hostfile]).wait(timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "4 2\n4 3\n4 3\n4 4\n4 2\n4 3\n")
    }

    /// launch/mpirun runs mpirun through perl (to block SIGTERM in it): perl says nothing, even
    /// where the locale variables name a locale this machine lacks (as ssh from a Mac sends).
    func testLaunchMpirunAddsNothingToTheOutput() throws {
        let mpirun = MPIRun.repoRoot.appendingPathComponent("launch/mpirun").path
        let r = try Background(mpirun, ["-n", "1", "/bin/echo", "ok"],
                               environment: ["LC_CTYPE": "UTF-8", "LANG": "xx_YY.UTF-8", "LC_ALL": ""]).wait(timeout: 60)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "ok")
        XCTAssertEqual(r.stderr, "")
    }
}
