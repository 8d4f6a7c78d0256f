import Foundation
import XCTest

/// What a new user meets first (issue 18): run dirs that never collide, schedules that say
/// what they do, one spelling of JSON keys, errors without Open MPI's banners, --version.
final class EverydayUseTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-everyday-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    func path(_ name: String) -> String { scratch.appendingPathComponent(name).path }

    /// Synthetic data (2048 samples), the mlp, 2 ranks of 16: 64 steps per epoch.
    let small = ["--dataset", "synthetic", "--model", "mlp", "--per-rank-batch", "16", "--eval-every", "0", "--log-every", "1000"]

    /// `mpirun -n ranks ddptrain args` started in `directory` (relative run dirs land there).
    func run(in directory: String, ranks: Int = 2, _ args: [String], launcher: [String]? = nil,
             environment: [String: String] = [:]) throws -> MPIRun.Result {
        let mpirun = launcher ?? ["mpirun", "-n", String(ranks), "--oversubscribe", "--bind-to", "none", "-x", "OPENBLAS_NUM_THREADS"]
        var env = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OPENBLAS_NUM_THREADS": "1",
                   "DDPTRAIN_PROGRESS": "lines"]
        for (key, value) in environment { env[key] = value }
        let r = try Background("/usr/bin/env", ["-C", directory] + mpirun + [MPIRun.binary] + args, environment: env).wait(timeout: 120)
        XCTAssertFalse(r.timedOut, r.stderr)
        return r
    }

    func json(_ file: String) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file))) as? [String: Any], file)
    }

    /// Every key of a JSON value, nested ones too, is snake_case (lower case, digits, _ and .).
    func keysNotSnakeCase(_ value: Any) -> [String] {
        switch value {
        case let object as [String: Any]:
            return object.flatMap { key, inner in
                (key.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "_" || $0 == "." } ? [] : [key]) + keysNotSnakeCase(inner)
            }
        case let array as [Any]: return array.flatMap(keysNotSnakeCase)
        default: return []
        }
    }

    // MARK: Run dirs

    /// Defect: a second `train` with the default run dir failed ("runs/latest already holds
    /// checkpoints"). Now each run gets a new folder under runs/, said at the start and the
    /// end, and runs/latest names the newest; --resume auto alone continues it.
    func testEveryDefaultRunGetsANewRunDir() throws {
        let work = path("work")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        var dirs: [String] = []
        for _ in 0..<2 {
            let r = try run(in: work, ["train", "--steps", "4"] + small)
            XCTAssertEqual(r.status, 0, r.stderr)
            let said = r.stdout.components(separatedBy: "\n").filter { $0.hasPrefix("run dir: runs/") }
            XCTAssertEqual(said.count, 2, "said at the start and the end: \(r.stdout)")
            XCTAssertEqual(Set(said).count, 1, r.stdout)
            let dir = String(try XCTUnwrap(said.first).dropFirst("run dir: ".count))
            XCTAssertTrue(FileManager.default.fileExists(atPath: work + "/" + dir + "/checkpoints/step-00000004.safetensors"), dir)
            XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: work + "/runs/latest"),
                           String(dir.dropFirst("runs/".count)), "runs/latest names the newest run")
            dirs.append(dir)
        }
        XCTAssertNotEqual(dirs[0], dirs[1])
        // --resume auto without --run-dir continues the run runs/latest names.
        let resumed = try run(in: work, ["train", "--steps", "6", "--resume", "auto"] + small)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("resumed from \(dirs[1])/checkpoints/step-00000004.safetensors at step 4"), resumed.stdout)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: work + "/runs").filter { !$0.hasPrefix(".") }.count, 3,
                       "two run dirs and the link")
    }

    /// A default run that fails on its input leaves no empty folder behind, and runs/latest
    /// still names the last run that started.
    func testAFailedDefaultRunLeavesNoFolder() throws {
        let work = path("failed")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let r = try run(in: work, ["train", "--global-batch", "4096"] + small.filter { $0 != "--per-rank-batch" && $0 != "16" })
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: work + "/runs")) ?? [], [], "no folder left")
    }

    /// Defect: `compare` silently wrote over an earlier comparison. Now a folder that holds
    /// one is refused unless resuming (exit 65), and --resume auto keeps the finished variants.
    func testCompareRefusesAnOccupiedFolder() throws {
        let args = ["compare", "--steps", "2", "--vary", "bn=sync,local", "--run-dir", path("cmp")] + small
        let first = try MPIRun.run(ranks: 2, args, timeout: 120)
        XCTAssertEqual(first.status, 0, first.stderr)
        let report = try Data(contentsOf: URL(fileURLWithPath: path("cmp/report.md")))
        let again = try MPIRun.run(ranks: 2, args, timeout: 120)
        XCTAssertEqual(again.status, 65, again.stderr)
        XCTAssertTrue(again.stderr.contains("run dir \(path("cmp")) holds another comparison (variants); continue it with --resume auto, "
                                            + "or choose another --run-dir"), again.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path("cmp/report.md"))), report, "nothing overwritten")
        let resumed = try MPIRun.run(ranks: 2, args + ["--resume", "auto"], timeout: 120)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("bn=sync: finished earlier, kept"), resumed.stdout)
    }

    // MARK: Schedules

    /// Defect: the warm-up was 200 steps whatever the run's length, so a 40-step run trained
    /// at a fraction of --lr while the first line said "lr 0.1". Now it is 5% of the run (at
    /// most 200), and the first line says the peak and when it comes.
    func testWarmupIsAShareOfTheRunAndTheFirstLineSaysThePeak() throws {
        let r = try MPIRun.run(ranks: 2, ["train", "--steps", "40", "--schedule", "constant", "--run-dir", path("warm")] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("sgd lr 0.1 constant with 2 warm-up steps: peak lr 0.1 at step 2"), r.stdout)
        let rows = try String(contentsOfFile: path("warm/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .map { try XCTUnwrap(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        XCTAssertEqual(rows.count, 40)
        XCTAssertEqual(try XCTUnwrap(rows[0]["lr"] as? Double), 0.05, accuracy: 1e-7)
        XCTAssertEqual(try XCTUnwrap(rows[1]["lr"] as? Double), 0.1, accuracy: 1e-7)
        // Epochs count from 1 in files as on screen.
        XCTAssertEqual(rows[0]["epoch"] as? Int, 1)
        // config.json records the warm-up as resolved.
        let resolved = try XCTUnwrap(try json(path("warm/config.json"))["resolved"] as? [String: Any])
        XCTAssertEqual(resolved["warmup_steps"] as? Int, 2)
        XCTAssertEqual(try json(path("warm/config.json"))["warmup_steps"] as? Int, 2)
        // An explicit --warmup-steps wins; one that covers most of the run is said.
        let long = try MPIRun.run(ranks: 2, ["train", "--steps", "10", "--warmup-steps", "8", "--schedule", "constant",
                                             "--run-dir", path("long")] + small)
        XCTAssertEqual(long.status, 0, long.stderr)
        XCTAssertTrue(long.stdout.contains("with 8 warm-up steps: peak lr 0.1 at step 8"), long.stdout)
        XCTAssertTrue(long.stderr.contains("warning: --warmup-steps 8 covers 80% of this run's 10 steps: the learning rate reaches --lr 0.1 only at step 8"),
                      long.stderr)
    }

    /// Defect: extending a finished run (`--resume auto --steps 40` after 20 steps) changed the
    /// cosine's length and made the rate jump without a word. Now the resume says so; the same
    /// command resumes without a word, bit for bit (CheckpointTests).
    func testAResumeThatChangesTheScheduleSaysSo() throws {
        let first = try MPIRun.run(ranks: 2, ["train", "--steps", "20", "--run-dir", path("extend")] + small)
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertFalse(first.stderr.contains("schedule changes"), first.stderr)
        let same = try MPIRun.run(ranks: 2, ["train", "--steps", "20", "--resume", "auto", "--run-dir", path("extend")] + small)
        XCTAssertEqual(same.status, 0, same.stderr)
        XCTAssertFalse(same.stderr.contains("schedule changes"), same.stderr)
        let longer = try MPIRun.run(ranks: 2, ["train", "--steps", "40", "--resume", "auto", "--run-dir", path("extend")] + small)
        XCTAssertEqual(longer.status, 0, longer.stderr)
        XCTAssertTrue(longer.stderr.contains("warning: the learning-rate schedule changes on resume: \(path("extend"))/checkpoints/step-00000020.safetensors "
                                             + "was planned as 20 steps of cosine with 1 warm-up step, this run is 40 steps of cosine with 2 warm-up steps; "
                                             + "at step 20 the learning rate goes from 0.0 to 0.05"), longer.stderr)
    }

    // MARK: JSON files

    /// Defect: config.json held the options as given (`epochs: 10` for a --steps run, no
    /// world size or batches) in the flags' spelling, `train --json` camelCase. Now every key
    /// is snake_case and config.json holds what the run resolved.
    func testJSONIsSnakeCaseAndConfigHoldsResolvedValues() throws {
        let r = try MPIRun.run(ranks: 2, ["train", "--steps", "30", "--global-batch", "33", "--json", "--run-dir", path("json")]
                                   + small.filter { $0 != "--per-rank-batch" && $0 != "16" })
        XCTAssertEqual(r.status, 0, r.stderr)
        let summary = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        XCTAssertEqual(keysNotSnakeCase(summary), [])
        XCTAssertEqual(summary["global_batch"] as? Int, 33)
        XCTAssertEqual(summary["run_dir"] as? String, path("json"))
        let config = try json(path("json/config.json"))
        XCTAssertEqual(keysNotSnakeCase(config), [])
        XCTAssertEqual(config["global_batch"] as? Int, 33)
        XCTAssertEqual(config["threads"] as? Int, 1)
        let resolved = try XCTUnwrap(config["resolved"] as? [String: Any])
        XCTAssertEqual(resolved["world_size"] as? Int, 2)
        XCTAssertEqual(resolved["global_batch"] as? Int, 33)
        XCTAssertEqual(resolved["per_rank_batch"] as? Int, 17)
        XCTAssertEqual(resolved["per_rank_batch_min"] as? Int, 16)
        XCTAssertEqual(resolved["threads"] as? Int, 1)
        XCTAssertEqual(resolved["total_steps"] as? Int, 30)
        XCTAssertEqual(resolved["steps_per_epoch"] as? Int, 63)
        XCTAssertEqual(resolved["warmup_steps"] as? Int, 2)
        XCTAssertEqual(try XCTUnwrap(resolved["epochs"] as? Double), 30.0 / 63, accuracy: 1e-12)

        // inspect --json: numbers as numbers, the configuration as an object.
        let checkpoint = path("json/checkpoints/step-00000030.safetensors")
        let inspected = try Background(MPIRun.binary, ["inspect", "--json", checkpoint]).wait(timeout: 30)
        XCTAssertEqual(inspected.status, 0, inspected.stderr)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(inspected.stdout.utf8)) as? [String: Any])
        let metadata = try XCTUnwrap(object["metadata"] as? [String: Any])
        XCTAssertEqual(metadata["step"] as? Int, 30)
        XCTAssertEqual(metadata["world_size"] as? Int, 2)
        XCTAssertEqual(metadata["seed"] as? Int, 0)
        XCTAssertNotNil(metadata["normalize.std"] as? Double)
        XCTAssertEqual((metadata["config"] as? [String: Any])?["global_batch"] as? Int, 33)
        XCTAssertEqual(keysNotSnakeCase(object), [])
    }

    /// A checkpoint of an earlier version (its configuration in the flags' spelling) still
    /// resumes, and its configuration is still read: the same warm-up (an explicit one, which
    /// the default would not give) resumes without a word, another --bn is refused.
    func testACheckpointWithTheOldKeysResumes() throws {
        let flags = ["--steps", "8", "--checkpoint-every", "4", "--warmup-steps", "2", "--run-dir", path("old")] + small
        let first = try MPIRun.run(ranks: 2, ["train"] + flags)
        XCTAssertEqual(first.status, 0, first.stderr)
        let checkpoint = path("old/checkpoints/step-00000004.safetensors")
        let file = try SafeTensorsHeader.metadata(checkpoint)
        let config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(file["config"]).utf8)) as? [String: Any])
        var kebab: [String: Any] = [:]
        for (key, value) in config { kebab[key.replacingOccurrences(of: "_", with: "-")] = value }
        let oldKeys = String(decoding: try JSONSerialization.data(withJSONObject: kebab, options: [.sortedKeys]), as: UTF8.self)
        XCTAssertTrue(oldKeys.contains("\"per-rank-batch\":16") && oldKeys.contains("\"warmup-steps\":2"), oldKeys)
        let old = path("old.safetensors")
        try CheckpointEdit.rewrite(checkpoint, to: old, metadata: ["config": oldKeys])
        let resumed = try MPIRun.run(ranks: 2, ["train", "--resume", old] + flags)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("resumed from \(old) at step 4"), resumed.stdout)
        XCTAssertFalse(resumed.stderr.contains("schedule changes"), resumed.stderr)
        let refused = try MPIRun.run(ranks: 2, ["train", "--bn", "local", "--resume", old] + flags)
        XCTAssertEqual(refused.status, 65, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("was trained with --bn sync, this run uses local"), refused.stderr)
    }

    // MARK: Errors

    /// Defect: an input error that every rank found alike (a global batch larger than the
    /// data) ended in MPI_Abort: the message once per rank, then Open MPI's banner. Now the
    /// ranks agree, rank 0 says it once, and all leave with 65; launch/mpirun (-q) adds no
    /// banner of Open MPI's.
    func testAnAgreedInputErrorEndsWithoutOpenMPIsBanner() throws {
        let args = ["train", "--global-batch", "4096", "--run-dir", path("big")] + small.filter { $0 != "--per-rank-batch" && $0 != "16" }
        let message = "ddptrain: error on ranks 0,1: the global batch (4096) is larger than the training set (2048 samples)"
        let plain = try MPIRun.run(ranks: 2, args, timeout: 60)
        XCTAssertEqual(plain.status, 65, plain.stderr)
        XCTAssertEqual(plain.stderr.components(separatedBy: message).count, 2, plain.stderr)
        XCTAssertFalse(plain.stderr.contains("MPI_ABORT"), plain.stderr)

        let launcher = MPIRun.repoRoot.appendingPathComponent("launch/mpirun").path
        let quiet = try run(in: scratch.path, args, launcher: [launcher, "-n", "2"])
        XCTAssertEqual(quiet.status, 65, quiet.stderr)
        XCTAssertEqual(quiet.stderr, message + "\n", "nothing but ddptrain's message")
        // So is a usage error found before MPI starts (rank 0 alone reports it, status 64).
        let usage = try run(in: scratch.path, ["train", "--lr", "-1"], launcher: [launcher, "-n", "2"])
        XCTAssertEqual(usage.status, 64, usage.stderr)
        XCTAssertTrue(usage.stderr.hasPrefix("Error: --lr must be a positive number, got -1.0\n"), usage.stderr)
        XCTAssertFalse(usage.stderr.contains("Primary job") || usage.stderr.contains("mpirun detected"), usage.stderr)
    }

    /// Negative numbers are values: `--batch -1` says what is wrong with -1, not "Missing
    /// value"; plural forms are right; --version prints the one version.
    func testNegativeNumbersPluralsAndVersion() throws {
        for (args, expected) in [(["train", "--lr", "-1"], "--lr must be a positive number, got -1.0"),
                                 (["train", "--warmup-steps", "-3"], "--warmup-steps must be between 0 and 2147483647, got -3"),
                                 (["microbench", "--batch", "-1"], "--batch must be 1 to 1024, got -1"),
                                 (["init", "--seed", "-1", "--out", path("x.safetensors")], "The value '-1' is invalid for '--seed <seed>'")] {
            let r = try Background(MPIRun.binary, args).wait(timeout: 30)
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(expected), "\(args): \(r.stderr)")
            XCTAssertFalse(r.stderr.contains("Missing value"), "\(args): \(r.stderr)")
        }
        let one = try MPIRun.run(ranks: 1, ["train", "--steps", "1", "--threads", "1", "--run-dir", path("one")] + small)
        XCTAssertEqual(one.status, 0, one.stderr)
        XCTAssertTrue(one.stdout.contains("batch 16 (shards of 16), 1 compute thread per rank, bn sync, 1 step, sgd lr 0.1 cosine with 1 warm-up step"), one.stdout)
        XCTAssertTrue(one.stdout.contains("done: 1 step (0.01 epochs)"), one.stdout)

        let version = try Background(MPIRun.binary, ["--version"]).wait(timeout: 30)
        XCTAssertEqual(version.status, 0, version.stderr)
        let source = try String(contentsOf: MPIRun.repoRoot.appendingPathComponent("Sources/DDPTrain/Version.swift"), encoding: .utf8)
        let declared = try XCTUnwrap(source.components(separatedBy: "static let current = \"").dropFirst().first?.components(separatedBy: "\"").first)
        XCTAssertEqual(version.stdout, declared + "\n")
        let config = try json(path("one/config.json"))
        XCTAssertEqual(config["ddptrain_version"] as? String, declared)
    }
}

/// The metadata of a safetensors file, read as the format describes it.
enum SafeTensorsHeader {
    static func metadata(_ path: String) throws -> [String: String] {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let length = Int(bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        let header = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + length)])) as? [String: Any])
        return try XCTUnwrap(header["__metadata__"] as? [String: String])
    }
}
