import Foundation
import XCTest

/// Several "hosts" on one machine: cluster/netns/up builds network namespaces behind a
/// bridge (10.77.0.0/24, only inside them), Open MPI starts a daemon in each through an rsh
/// agent that runs `ip netns exec`, and the ranks talk over TCP. Every command on a host runs
/// with that host's own TMPDIR (`on`), as on real nodes. Needs root; skipped otherwise.
final class MultiHostTests: XCTestCase {
    let hosts = 3
    var prefix = ""
    var dir = ""
    var scratch: URL!
    var mpirunArgs: [String] = []
    let launcher = MPIRun.repoRoot.appendingPathComponent("launch/train").path
    let environment = ["DDPTRAIN_BIN": MPIRun.binary, "OPENBLAS_NUM_THREADS": "1", "DDPTRAIN_PROGRESS": "lines"]

    static func command(_ path: String, _ args: [String], timeout: Double = 30) throws -> MPIRun.Result {
        try Background(path, args).wait(timeout: timeout)
    }

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("multi-host tests build network namespaces (ip netns add): they need root") }
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/sbin/ip") else {
            throw XCTSkip("multi-host tests need the 'ip' command (apt-get install iproute2)")
        }
        guard FileManager.default.isExecutableFile(atPath: MPIRun.binary) else {
            throw XCTSkip("no release binary at \(MPIRun.binary): run launch/test (or swift build -c release)")
        }
        prefix = "dt\(getpid() % 100_000)"
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-netns-\(prefix)").path
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-hosts-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        let up = try Self.command(script("up"), ["--prefix", prefix, "--dir", dir, String(hosts)])
        guard up.status == 0 else {
            _ = try? Self.command(script("down"), ["--prefix", prefix, "--dir", dir])
            XCTFail("cluster/netns/up failed (status \(up.status)\(up.timedOut ? ", timed out" : "")): \(up.stderr)")
            throw CancellationError()
        }
        mpirunArgs = try String(contentsOfFile: dir + "/mpirun.args", encoding: .utf8).split(separator: "\n").map(String.init)
    }

    override func tearDownWithError() throws {
        if !prefix.isEmpty {
            let down = try Self.command(script("down"), ["--prefix", prefix, "--dir", dir])
            XCTAssertEqual(down.status, 0, "cluster/netns/down: \(down.stderr)")
        }
        if let scratch { try? FileManager.default.removeItem(at: scratch) }
    }

    func script(_ name: String) -> String { MPIRun.repoRoot.appendingPathComponent("cluster/netns/\(name)").path }
    func runDir(_ name: String) -> String { scratch.appendingPathComponent(name).path }
    func ns(_ i: Int) -> String { "\(prefix)-h\(i)" }

    /// launch/train started on the first host, with the hosts' mpirun options.
    func launchAcrossHosts(_ trainArgs: [String], maxRestarts: Int = 0, startTimeout: Int = 60) throws -> Background {
        try Background(dir + "/on", ["0", launcher, "-n", String(hosts), "--max-restarts", String(maxRestarts),
                                        "--restart-delay", "0", "--start-timeout", String(startTimeout)] + mpirunArgs + ["--"] + trainArgs,
                       environment: environment)
    }

    func testTrainingAcrossHostsMatchesOneHost() throws {
        // Each rank really is in its own namespace.
        let where_ = try Background(dir + "/on", ["0", "mpirun", "-n", String(hosts)] + mpirunArgs + ["ip", "netns", "identify"],
                                    environment: ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]).wait(timeout: 30)
        XCTAssertFalse(where_.timedOut, "mpirun across the hosts did not end within 30 s: \(where_.stderr)")
        XCTAssertEqual(where_.status, 0, where_.stderr)
        XCTAssertEqual(Set(where_.stdout.split(separator: "\n").map(String.init)), Set((0..<hosts).map(ns)), where_.stdout)

        let common = ["--model", "mlp", "--train-samples", "480", "--eval-every", "0", "--global-batch", "48", "--steps", "30",
                      "--log-every", "10", "--bn", "sync", "--dropout", "0.2"]
        let one = try MPIRun.run(ranks: hosts, ["train"] + common + ["--run-dir", runDir("one-host")], timeout: 120)
        XCTAssertEqual(one.status, 0, one.stderr)
        let r = try launchAcrossHosts(common + ["--run-dir", runDir("hosts")]).wait(timeout: 120)
        XCTAssertFalse(r.timedOut, r.stderr)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("(\(hosts) ranks x 16, shards of 16)"), r.stdout)
        let a = try Checkpoints.newest(runDir: runDir("one-host")), b = try Checkpoints.newest(runDir: runDir("hosts"))
        XCTAssertTrue(a.hasSuffix("step-00000030.safetensors") && b.hasSuffix("step-00000030.safetensors"), "\(a) \(b)")
        let difference = try Checkpoints.relativeDifference(a, b)
        XCTAssertLessThanOrEqual(difference, 1e-5)
        let bitwise = try Checkpoints.tensorBytes(a) == Checkpoints.tensorBytes(b)
        print("\(hosts) hosts over TCP vs one host: largest relative difference \(difference), bitwise equal: \(bitwise); \(String(format: "%.1f", r.seconds)) s")
    }

    /// A host whose link goes down mid-run (a cable pulled: packets silently dropped) ends
    /// the job in bounded time, through the TCP keepalive launch/mpirun sets on Open MPI's
    /// control connections, and the launcher names the lost host. Its restart cannot start
    /// a daemon on the lost host: --start-timeout ends that attempt too.
    func testLostHostEndsTheJobInBoundedTime() throws {
        let job = try launchAcrossHosts(["--model", "mlp", "--train-samples", "480", "--eval-every", "0", "--global-batch", "48",
                                         "--steps", "20000", "--log-every", "100", "--checkpoint-every", "10", "--run-dir", runDir("lost")],
                                        maxRestarts: 1, startTimeout: 15)
        XCTAssertTrue(Background.waitUntil(timeout: 60) { Checkpoints.count(runDir: runDir("lost")) > 0 }, "no checkpoint appeared: \(job.err.snapshot())")
        let lost = hosts - 1
        let down = try Self.command("/usr/bin/env", ["ip", "-n", "\(prefix)-sw", "link", "set", "p\(lost)", "down"])
        XCTAssertEqual(down.status, 0, down.stderr)
        let cut = Date()
        let ended = Background.waitUntil(timeout: 90) { job.err.snapshot().contains("launch/train: attempt 1 failed") }
        let seconds = Date().timeIntervalSince(cut)
        let r = job.wait(timeout: 60)
        XCTAssertTrue(ended, "the job did not end within 90 s of the link going down: \(r.stderr)")
        XCTAssertLessThan(seconds, 45, "the job took \(seconds) s to end")
        XCTAssertFalse(r.timedOut, "the restart hung: \(r.stderr)")
        XCTAssertNotEqual(r.status, 0)
        // Usually Open MPI's daemon keepalive fires first and names the host; on a loaded
        // machine a rank's own TCP connection may fail first, and the cause is then the MPI
        // error of the rank that noticed. Either way the cause is named.
        let namedHost = r.stderr.contains("Open MPI lost a host:") && r.stderr.contains("on node 10.77.0.\(10 + lost)")
        let namedRankError = r.stderr.contains("failed on rank") || r.stderr.contains("Open MPI lost communication")
        XCTAssertTrue(namedHost || namedRankError, r.stderr)
        XCTAssertTrue(r.stderr.contains("launch/train: attempt 2 has not started training after 15 s (--start-timeout)"), r.stderr)
        XCTAssertTrue(r.stderr.contains("giving up after 1 restart(s)"), r.stderr)
        print("link of host \(lost) down: job ended in \(String(format: "%.1f", seconds)) s; launcher done after \(String(format: "%.1f", r.seconds)) s in all")
    }

    /// --continue-on-fewer-hosts: a host lost mid-run (its rank stopped at a known step, then
    /// its link cut) ends the attempt; the restart runs on the two hosts left with 2 ranks,
    /// resumes from the last checkpoint, and ends with the bytes of a 3-rank run that never
    /// lost a host (virtual shards: the same bits at any world size).
    func testContinuesOnTheHostsLeftBitForBit() throws {
        let common = ["--model", "mlp", "--train-samples", "480", "--eval-every", "0", "--per-rank-batch", "16", "--steps", "400",
                      "--log-every", "100", "--checkpoint-every", "20", "--bn", "sync", "--dropout", "0.2"]
        let straight = try MPIRun.run(ranks: hosts, ["train"] + common + ["--run-dir", runDir("straight")], timeout: 120)
        XCTAssertEqual(straight.status, 0, straight.stderr)
        let lost = hosts - 1
        let job = try Background(dir + "/on", ["0", launcher, "-n", String(hosts), "--max-restarts", "1", "--restart-delay", "0",
                                               "--start-timeout", "60", "--continue-on-fewer-hosts", "-x", "DDPTRAIN_INJECT_STOP"]
                                    + mpirunArgs + ["--"] + common + ["--run-dir", runDir("fewer")],
                                 environment: environment.merging(["DDPTRAIN_INJECT_STOP": "\(lost):150"]) { $1 })
        // Rank 2 stops itself at step 150, after the checkpoint of step 140.
        XCTAssertTrue(Background.waitUntil(timeout: 60) {
            Checkpoints.names(runDir: self.runDir("fewer")).last == "step-00000140.safetensors"
        }, "no checkpoint of step 140 appeared: \(job.err.snapshot())")
        let down = try Self.command("/usr/bin/env", ["ip", "-n", "\(prefix)-sw", "link", "set", "p\(lost)", "down"])
        XCTAssertEqual(down.status, 0, down.stderr)
        let r = job.wait(timeout: 180)
        XCTAssertFalse(r.timedOut, r.stderr)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("--continue-on-fewer-hosts: host 10.77.0.\(10 + lost) lost; continuing on the 2 slot(s) left with 2 rank(s) (was 3)"),
                      r.stderr)
        XCTAssertTrue(r.stderr.contains("--global-batch 48"), "the per-rank batch became the global batch: \(r.stderr)")
        XCTAssertTrue(r.stdout.contains("resumed from"), r.stdout)
        let a = try Checkpoints.newest(runDir: runDir("straight")), b = try Checkpoints.newest(runDir: runDir("fewer"))
        XCTAssertTrue(a.hasSuffix("step-00000400.safetensors") && b.hasSuffix("step-00000400.safetensors"), "\(a) \(b)")
        XCTAssertEqual(try Checkpoints.tensorBytes(b), try Checkpoints.tensorBytes(a), "continued on 2 hosts: not the bytes of the 3-host run")
    }
}
