import DDPTrain
import Foundation
import XCTest

/// The run dir and metrics.jsonl against hostile contents, in one process (rank 0's part).
final class RunDirectoryUnitTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-rundir-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    func path(_ name: String) -> String { scratch.appendingPathComponent(name).path }

    func config(_ runDir: String) -> TrainConfig {
        var config = TrainConfig()
        config.runDir = runDir
        config.model = "mlp"
        return config
    }

    /// A run dir as a run that stopped after `steps` left it, with `metrics` as its metrics.jsonl.
    func stoppedRun(_ name: String, metrics: [UInt8]) throws -> RunDirectory {
        let run = RunDirectory(path: path(name))
        _ = try run.create(config: config(run.path), keepMetricsUpTo: nil)
        try Data(metrics).write(to: URL(fileURLWithPath: run.metricsPath))
        return run
    }

    func record(_ step: Int) -> [UInt8] {
        Array(#"{"accuracy":0.5,"loss":1.25,"skipped":false,"step":\#(step)}"#.utf8) + [10]
    }

    func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

    /// Resume keeps every line up to the resumed step byte for byte, lines that are not step
    /// records included (invalid UTF-8, not JSON, blank), and drops the later steps only.
    func testResumeKeepsEarlierLinesByteForByte() throws {
        let invalidUTF8 = Array(#"{"note":"caf"#.utf8) + [0xE9] + Array(#""}"#.utf8) + [10]
        let notJSON = Array("written by hand: \u{1F600} {".utf8) + [10]
        var before = record(1) + record(2) + invalidUTF8 + record(3) + notJSON + [10] + record(4)
        let after = record(5) + record(6)
        let run = try stoppedRun("resume", metrics: before + after)
        let warnings = try run.create(config: config(run.path), keepMetricsUpTo: 4)
        XCTAssertEqual(try bytes(run.metricsPath), before)
        XCTAssertEqual(warnings.count, 1, "\(warnings)")
        XCTAssertTrue(warnings[0].contains("2 lines are not a step record (line 3, 5)"), warnings[0])
        // Resuming at an earlier step drops from there, and keeps what it cannot read.
        _ = try run.create(config: config(run.path), keepMetricsUpTo: 1)
        before = record(1) + invalidUTF8 + notJSON + [10]
        XCTAssertEqual(try bytes(run.metricsPath), before)
    }

    /// A line longer than the reader holds at once is kept whole; the steps around it are judged as usual.
    func testLongLineIsKeptWithoutBeingReadWhole() throws {
        let long = [UInt8](repeating: UInt8(ascii: "x"), count: 3 << 20) + [10]
        let run = try stoppedRun("long", metrics: record(1) + long + record(2) + record(3))
        let warnings = try run.create(config: config(run.path), keepMetricsUpTo: 2)
        XCTAssertEqual(try bytes(run.metricsPath), record(1) + long + record(2))
        XCTAssertTrue(warnings.first?.contains("line 2") == true, "\(warnings)")
    }

    /// A last line cut short by a crash is kept, and ends with a line feed so the next record starts a line.
    func testUnterminatedLastLineGetsALineEnd() throws {
        let cut = Array(#"{"accuracy":0.5,"lo"#.utf8)
        let run = try stoppedRun("cut", metrics: record(1) + cut)
        let warnings = try run.create(config: config(run.path), keepMetricsUpTo: 1)
        XCTAssertEqual(try bytes(run.metricsPath), record(1) + cut + [10])
        XCTAssertTrue(warnings.contains { $0.contains("no line end") }, "\(warnings)")
    }

    /// metrics.jsonl that is a FIFO, a directory or a link stops the resume at once with its
    /// name; config.json stays as it was.
    func testMetricsThatIsNotARegularFileIsRefused() throws {
        for (kind, make) in [("a FIFO", { (p: String) in XCTAssertEqual(mkfifo(p, 0o644), 0) }),
                             ("a directory", { (p: String) in XCTAssertEqual(mkdir(p, 0o755), 0) }),
                             ("a symbolic link", { (p: String) in XCTAssertEqual(symlink("/etc/hostname", p), 0) })] {
            let run = try stoppedRun("odd-\(kind.split(separator: " ").last!)", metrics: record(1))
            try FileManager.default.removeItem(atPath: run.metricsPath)
            make(run.metricsPath)
            let configBefore = try bytes(run.configPath)
            var changed = config(run.path)
            changed.lr = 0.01
            XCTAssertThrowsError(try run.create(config: changed, keepMetricsUpTo: 1)) { error in
                XCTAssertTrue("\(error)".contains("metrics.jsonl is \(kind)"), "\(error)")
            }
            XCTAssertEqual(try bytes(run.configPath), configBefore, kind)
            XCTAssertThrowsError(try RunLog(rank: 0, logEvery: 1, json: false, metricsPath: run.metricsPath, quiet: true), kind)
        }
    }

    // A metrics.jsonl that cannot be read: RunDirectoryTests.testUnreadableMetricsStopsTheResumeAndOverwritesNothing
    // (as root, only a process without the permission-bypassing capabilities sees EACCES).

    /// A folder ddptrain did not make is refused with what it holds, and left as it was; a new,
    /// an empty, a marked and an old (unmarked) ddptrain run dir are accepted.
    func testForeignFolderIsRefusedAndOurOwnAccepted() throws {
        let foreign = path("Documents")
        try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: true)
        try Data("{\"name\": \"my app\"}\n".utf8).write(to: URL(fileURLWithPath: foreign + "/config.json"))
        try Data("hello\n".utf8).write(to: URL(fileURLWithPath: foreign + "/metrics.jsonl"))
        for resumed in [nil, 3] as [Int?] {
            XCTAssertThrowsError(try RunDirectory(path: foreign).create(config: config(foreign), keepMetricsUpTo: resumed)) { error in
                XCTAssertTrue("\(error)".contains("run dir \(foreign) is not empty and is not a ddptrain run dir (it holds config.json, metrics.jsonl"),
                              "\(error)")
            }
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: foreign).sorted(), ["config.json", "metrics.jsonl"])
        XCTAssertEqual(try bytes(foreign + "/config.json"), Array("{\"name\": \"my app\"}\n".utf8))
        XCTAssertEqual(try bytes(foreign + "/metrics.jsonl"), Array("hello\n".utf8))

        // Empty, or holding only the log launch/train appends to before ddptrain starts.
        let empty = path("empty")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        try Data("attempt 1\n".utf8).write(to: URL(fileURLWithPath: empty + "/launch.log"))
        _ = try RunDirectory(path: empty).create(config: config(empty), keepMetricsUpTo: nil)
        XCTAssertTrue(FileManager.default.fileExists(atPath: empty + "/" + RunDirectory.markerName))

        // Made before the marker: a ddptrain config.json and checkpoints/.
        let old = path("old")
        try FileManager.default.createDirectory(atPath: old + "/checkpoints", withIntermediateDirectories: true)
        try Data((config(old).json + "\n").utf8).write(to: URL(fileURLWithPath: old + "/config.json"))
        try Data(record(1) + record(2)).write(to: URL(fileURLWithPath: old + "/metrics.jsonl"))
        _ = try RunDirectory(path: old).create(config: config(old), keepMetricsUpTo: 1)
        XCTAssertEqual(try bytes(old + "/metrics.jsonl"), record(1))
        XCTAssertTrue(FileManager.default.fileExists(atPath: old + "/" + RunDirectory.markerName))
        // ... whose config.json spells the keys as the flags do (versions before snake_case).
        let kebab = path("old-kebab")
        try FileManager.default.createDirectory(atPath: kebab + "/checkpoints", withIntermediateDirectories: true)
        try Data(#"{"dataset":"synthetic","model":"mlp","run-dir":"x","seed":0,"per-rank-batch":8}"#.utf8)
            .write(to: URL(fileURLWithPath: kebab + "/config.json"))
        _ = try RunDirectory(path: kebab).create(config: config(kebab), keepMetricsUpTo: 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: kebab + "/" + RunDirectory.markerName))

        // A config.json of our keys without checkpoints/ is not enough.
        let lookalike = path("lookalike")
        try FileManager.default.createDirectory(atPath: lookalike, withIntermediateDirectories: true)
        try Data((config(lookalike).json + "\n").utf8).write(to: URL(fileURLWithPath: lookalike + "/config.json"))
        XCTAssertThrowsError(try RunDirectory(path: lookalike).create(config: config(lookalike), keepMetricsUpTo: nil))

        let file = path("plain-file")
        try Data("x".utf8).write(to: URL(fileURLWithPath: file))
        XCTAssertThrowsError(try RunDirectory(path: file).create(config: config(file), keepMetricsUpTo: nil)) { error in
            XCTAssertTrue("\(error)".contains("run dir \(file) exists and is not a directory"), "\(error)")
        }
    }

    /// A run dir locked by another open lock (another run) is refused with that run's pid and
    /// host; once that lock is gone the dir is usable at once; this process may prepare its own dir again.
    func testLockedRunDirIsInUse() throws {
        let run = try stoppedRun("locked", metrics: record(1))
        // This process holds it already (stoppedRun): prepare again succeeds.
        _ = try run.create(config: config(run.path), keepMetricsUpTo: 1)

        // Another run holds the lock: in this test, another open file description of it.
        let second = RunDirectory(path: path("second"))
        _ = try FileManager.default.createDirectory(atPath: second.path, withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: second.path + "/" + RunDirectory.markerName))
        let secondFd = open(second.path + "/.lock", O_RDWR | O_CREAT, 0o644)
        XCTAssertEqual(flock(secondFd, LOCK_EX | LOCK_NB), 0)
        let holder = Array("pid 4242 host node7\n".utf8)
        XCTAssertEqual(pwrite(secondFd, holder, holder.count, 0), holder.count)
        XCTAssertThrowsError(try second.create(config: config(second.path), keepMetricsUpTo: nil)) { error in
            XCTAssertTrue("\(error)".contains("run dir \(second.path) is in use by another run (pid 4242 on host node7)"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: second.configPath), "nothing written while locked")
        close(secondFd)  // the other run ends: its lock goes with it
        _ = try second.create(config: config(second.path), keepMetricsUpTo: nil)
        let written = String(decoding: try bytes(second.path + "/.lock"), as: UTF8.self)
        XCTAssertTrue(written.hasPrefix("pid \(getpid()) host "), written)
    }

    /// A planted link as the lock file or config.json is never followed: the target stays as it was.
    func testPlantedLinksAreNotFollowed() throws {
        let target = path("target.txt")
        try Data("precious\n".utf8).write(to: URL(fileURLWithPath: target))
        let lockLink = path("lock-link")
        try FileManager.default.createDirectory(atPath: lockLink, withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: lockLink + "/" + RunDirectory.markerName))
        XCTAssertEqual(symlink(target, lockLink + "/.lock"), 0)
        XCTAssertThrowsError(try RunDirectory(path: lockLink).create(config: config(lockLink), keepMetricsUpTo: nil)) { error in
            XCTAssertTrue("\(error)".contains("lock file"), "\(error)")
        }
        let run = try stoppedRun("config-link", metrics: record(1))
        try FileManager.default.removeItem(atPath: run.configPath)
        XCTAssertEqual(symlink(target, run.configPath), 0)
        XCTAssertThrowsError(try run.create(config: config(run.path), keepMetricsUpTo: 1)) { error in
            XCTAssertTrue("\(error)".contains("config.json is a symbolic link"), "\(error)")
        }
        XCTAssertEqual(try bytes(target), Array("precious\n".utf8))
    }

    /// The metrics log appends whole lines; a full disk stops it with a clear error and leaves
    /// the file ending with the last whole line.
    func testRunLogOnAFullDisk() throws {
        let mountPoint = path("small")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        guard run("/bin/mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", mountPoint]) == 0 else {
            throw XCTSkip("cannot mount a small tmpfs here (needs root)")
        }
        defer { _ = run("/bin/umount", [mountPoint]) }
        let metrics = mountPoint + "/metrics.jsonl"
        XCTAssertTrue(FileManager.default.createFile(atPath: metrics, contents: nil))
        let log = try RunLog(rank: 0, logEvery: 1000, json: false, metricsPath: metrics, quiet: true)
        // Fill the rest of the file system.
        let filler = open(mountPoint + "/filler", O_WRONLY | O_CREAT, 0o644)
        let block = [UInt8](repeating: 1, count: 4096)
        while write(filler, block, block.count) > 0 {}
        close(filler)
        var failure: Error?
        for step in 1...1000 where failure == nil {
            do {
                try log.step(StepRecord(step: step, epoch: 0, loss: 1, accuracy: 0.5, lr: 0.1, gradNorm: 1, clipped: false, skipped: false,
                                        samples: 32, dataSeconds: 0, forwardSeconds: 0, backwardSeconds: 0, communicationSeconds: 0,
                                        optimizerSeconds: 0), totalSteps: 1000, stepsPerEpoch: 1000)
            } catch { failure = error }
        }
        let message = "\(try XCTUnwrap(failure))"
        XCTAssertTrue(message.contains("cannot log step") && message.contains("\(metrics): cannot write: No space left on device (errno 28)"), message)
        let text = try bytes(metrics)
        XCTAssertTrue(text.isEmpty || text.last == 10, "ends with a whole line")
    }

    /// A run dir on a read-only file system is an error that names it and the reason; nothing changes.
    func testReadOnlyFileSystem() throws {
        let mountPoint = path("readonly")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        guard run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mountPoint]) == 0 else {
            throw XCTSkip("cannot mount a tmpfs here (needs root)")
        }
        // Lazily: this process keeps the run's lock file open until it ends, so a plain umount
        // would fail (busy) and leave the mount and the scratch folder behind.
        defer { _ = run("/bin/umount", ["--lazy", mountPoint]) }
        let written = try stoppedRun("readonly/run", metrics: record(1))
        // A read-only view of it (this process keeps the lock file open for writing, so the
        // file system itself cannot be remounted read-only).
        let view = path("view")
        try FileManager.default.createDirectory(atPath: view, withIntermediateDirectories: true)
        guard run("/bin/mount", ["--bind", "-o", "ro", mountPoint, view]) == 0 else { throw XCTSkip("cannot bind-mount here") }
        defer { _ = run("/bin/umount", [view]) }
        _ = run("/bin/mount", ["-o", "remount,ro,bind", view])
        let existing = RunDirectory(path: view + "/run")
        XCTAssertThrowsError(try existing.create(config: config(existing.path), keepMetricsUpTo: 1)) { error in
            XCTAssertTrue("\(error)".contains("run dir \(existing.path) is not writable: Read-only file system (errno 30)"), "\(error)")
        }
        XCTAssertEqual(try bytes(written.metricsPath), record(1))
        let new = view + "/new"
        XCTAssertThrowsError(try RunDirectory(path: new).create(config: config(new), keepMetricsUpTo: nil)) { error in
            XCTAssertTrue("\(error)".contains("run dir \(new): cannot create \(new): Read-only file system (errno 30)"), "\(error)")
        }
    }

    /// compare's charts read metrics.jsonl line by line and leave out what is not a step record.
    func testLossesLeaveOutLinesThatAreNotRecords() throws {
        let file = path("losses.jsonl")
        let skipped = Array(#"{"loss":"nan","skipped":true,"step":2}"#.utf8) + [10]
        try Data(record(1) + [0xFF, 10] + skipped + record(3)).write(to: URL(fileURLWithPath: file))
        let losses = try VariantResult.losses(metricsPath: file)
        XCTAssertEqual(losses.map(\.step), [1, 3])
        XCTAssertEqual(losses.map(\.loss), [1.25, 1.25])
    }

    func run(_ tool: String, _ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }
}
