import Foundation
import XCTest

/// Config files, model files and option values that are missing, hostile or out of range,
/// through the real binary: every rank ends in bounded time with a message naming the file
/// or option, the value and the rank, and exit 64 (usage) or 65 (input); never a hang, a
/// crash or an integer-overflow trap.
final class ConfigInputTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    func write(_ text: String, _ name: String) throws -> String {
        let path = scratch.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        return path
    }

    var train: [String] {
        ["train", "--dataset", "synthetic", "--synthetic-samples", "64", "--steps", "2", "--per-rank-batch", "4", "--model", "mlp",
         "--eval-every", "0", "--run-dir", scratch.appendingPathComponent("run").path]
    }

    /// mpirun with its own arguments per rank (MPMD: `-n 1 ddptrain A : -n 1 ddptrain B`), so
    /// that one rank can be given a file that another does not see.
    func runPerRank(_ perRank: [[String]], workingDirectories: [String]? = nil, timeout: Double = 30) throws -> MPIRun.Result {
        guard FileManager.default.isExecutableFile(atPath: MPIRun.binary) else {
            throw XCTSkip("no release binary at \(MPIRun.binary): run launch/test (or swift build -c release)")
        }
        var args = ["mpirun", "--oversubscribe", "--bind-to", "none", "-x", "OPENBLAS_NUM_THREADS"]
        for (rank, rankArgs) in perRank.enumerated() {
            if rank > 0 { args.append(":") }
            args += ["-n", "1"] + (workingDirectories.map { ["-wdir", $0[rank]] } ?? []) + [MPIRun.binary] + rankArgs
        }
        let env = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OPENBLAS_NUM_THREADS": "1"]
        return try Background("/usr/bin/env", args, environment: env).wait(timeout: timeout)
    }

    func expect(_ r: MPIRun.Result, status: Int32, mentions: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(r.timedOut, "hung:\n\(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.status, status, r.stderr, file: file, line: line)
        for text in mentions {
            XCTAssertTrue(r.stderr.contains(text), "stderr lacks '\(text)':\n\(r.stderr)", file: file, line: line)
        }
        XCTAssertFalse(r.stderr.contains("Fatal error") || r.stderr.contains("Backtrace"), "crash trace:\n\(r.stderr)", file: file, line: line)
    }

    /// The config file was read before MPI started: rank 1 failed and left rank 0 waiting.
    func testConfigFileMissingOnOneRankEndsEveryRank() throws {
        let present = try write("lr: 0.05\n", "present.yaml")
        let absent = scratch.appendingPathComponent("absent.yaml").path
        let r = try runPerRank([train + ["--config", present], train + ["--config", absent]])
        expect(r, status: 65, mentions: ["error on rank 1: \(absent): cannot read the config file", "No such file or directory"])
    }

    func testConfigFileThatIsAFIFOOnOneRankEndsEveryRank() throws {
        let present = try write("lr: 0.05\n", "present.yaml")
        let fifo = scratch.appendingPathComponent("fifo.yaml").path
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let r = try runPerRank([train + ["--config", present], train + ["--config", fifo]])
        expect(r, status: 65, mentions: ["error on rank 1: \(fifo): the config file is not a regular file"])
    }

    /// Each rank reads its own copy of the files: copies that differ (a stale config on one
    /// node) would make the ranks run different collectives, so every rank stops, naming them.
    func testConfigOrModelThatDiffersBetweenRanksEndsEveryRank() throws {
        let one = try write("lr: 0.05\n", "one.yaml"), other = try write("lr: 0.06\n", "other.yaml")
        let r = try runPerRank([train + ["--config", one], train + ["--config", other]])
        expect(r, status: 65, mentions: ["the configuration differs between ranks (rank 1 against rank 0): lr is 0.05 on rank 0, 0.06 on rank 1"])

        // The same relative path names another file on each rank, as on two nodes' disks.
        let a = scratch.appendingPathComponent("node-a").path, b = scratch.appendingPathComponent("node-b").path
        for (folder, hidden) in [(a, 10), (b, 12)] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try "name: m\nlayers:\n  - flatten\n  - {type: linear, out: \(hidden)}\n  - relu\n  - {type: linear, out: 10}\n"
                .write(toFile: folder + "/model.yaml", atomically: false, encoding: .utf8)
        }
        let m = try runPerRank([train + ["--model", "model.yaml"], train + ["--model", "model.yaml"]], workingDirectories: [a, b])
        expect(m, status: 65, mentions: ["model model.yaml differs between ranks (rank 1 against rank 0): layer 1 is", "linear out=10 on rank 0, linear out=12 on rank 1"])
    }

    func testModelFileMissingOnOneRankEndsEveryRank() throws {
        // The same relative path on both ranks, found on rank 0's "disk" only.
        let a = scratch.appendingPathComponent("has-it").path, b = scratch.appendingPathComponent("lacks-it").path
        for folder in [a, b] { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) }
        try "layers: [flatten, {type: linear, out: 10}]\n".write(toFile: a + "/model.yaml", atomically: false, encoding: .utf8)
        let r = try runPerRank([train + ["--model", "model.yaml"], train + ["--model", "model.yaml"]], workingDirectories: [a, b])
        expect(r, status: 65, mentions: ["error on rank 1: model 'model.yaml' is neither a preset"])
    }

    /// A rank with a command line of its own reported nothing and exited 0 before MPI
    /// started, leaving rank 0 waiting for it in MPI_Init.
    func testUsageErrorOnARankWithItsOwnCommandLineEndsEveryRank() throws {
        let r = try runPerRank([train, train + ["--lr", "-1"]])
        expect(r, status: 64, mentions: ["error on rank 1, which has a command line of its own", "--lr must be a positive number, got -1"])
    }

    /// Yams recursed once per level (SIGSEGV at 100000) and expanded aliases without bound.
    func testHostileConfigAndModelFiles() throws {
        let deep = try write("lr: " + String(repeating: "[", count: 100_000) + "\n", "deep.yaml")
        expect(try MPIRun.run(ranks: 2, train + ["--config", deep], timeout: 30), status: 65,
               mentions: ["error on ranks 0,1: \(deep): line 1: lists and maps are nested more than 64 levels deep"])
        let deepModel = try write(String(repeating: "{\"layers\": [", count: 50_000) + "\n", "deep.json")
        expect(try MPIRun.run(ranks: 2, train + ["--model", deepModel], timeout: 30), status: 65,
               mentions: ["\(deepModel): line 1: lists and maps are nested more than 64 levels deep"])
        // A "billion laughs": 9 levels of 9 aliases to the level below, 9^9 strings once expanded.
        var laughs = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        for level in 1...9 { laughs += "a\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 9).joined(separator: ", ") + "]\n" }
        let config = try write(laughs, "laughs-config.yaml")
        expect(try MPIRun.run(ranks: 2, train + ["--config", config], timeout: 30), status: 65,
               mentions: ["\(config): line 1: aliases (*name) and anchors (&name) are not supported"])
        let big = try write("layers: [flatten, {type: linear, out: 10}]\n# " + String(repeating: "x", count: 1 << 20) + "\n", "big.yaml")
        expect(try MPIRun.run(ranks: 2, train + ["--model", big], timeout: 30), status: 65,
               mentions: ["\(big): the model file is", "the limit is 1048576 bytes"])
    }

    /// Negative numbers reach validation; values beyond Float32 or 32-bit counts are refused
    /// before MPI starts (usage, 64) when on the command line, and name the file (65) in it.
    func testOptionValuesOutOfRange() throws {
        expect(try MPIRun.run(ranks: 2, train + ["--lr", "-1"], timeout: 30), status: 64, mentions: ["--lr must be a positive number, got -1"])
        expect(try MPIRun.run(ranks: 2, train + ["--lr", "1e308"], timeout: 30), status: 64, mentions: ["--lr 1e+308 is outside Float32's range"])
        expect(try MPIRun.run(ranks: 2, train + ["--per-rank-batch", "4611686018427387904"], timeout: 30), status: 64,
               mentions: ["--per-rank-batch must be between 1 and 2147483647, got 4611686018427387904"])
        expect(try MPIRun.run(ranks: 2, train + ["--synthetic-samples", "1000000000000"], timeout: 30), status: 64,
               mentions: ["--synthetic-samples must be between 1 and 2147483647, got 1000000000000"])
        let config = try write("lr: 1e308\n", "lr.yaml")
        expect(try MPIRun.run(ranks: 2, train + ["--config", config], timeout: 30), status: 65,
               mentions: ["error on ranks 0,1: \(config): --lr 1e+308 is outside Float32's range"])
    }

    /// An 8.6e9-parameter model aborted in allocation; now it is refused with the numbers.
    func testModelTooLargeForThisMachine() throws {
        let huge = try write("""
            layers:
              - flatten
              - {type: linear, out: 65536}
              - {type: linear, out: 65536}
              - {type: linear, out: 65536}
              - {type: linear, out: 10}
            """, "huge.yaml")
        let r = try MPIRun.run(ranks: 2, train + ["--model", huge], timeout: 30)
        expect(r, status: 65, mentions: ["model huge needs", "8642166794 parameters", "available"])
    }
}
