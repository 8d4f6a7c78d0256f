import DDPTrain
import Foundation
import XCTest

/// The option table drives the flags, config files, config.json, the ranks' agreement,
/// checkpoint compatibility and --vary: these check that it covers every field and that
/// each of those paths reads it the same way.
final class TrainFlagsTests: XCTestCase {
    /// A field of TrainConfig without an entry would be neither a flag nor in config.json.
    func testEveryFieldHasExactlyOneEntryWithAKey() throws {
        let fields = Mirror(reflecting: TrainConfig()).children.count
        let keys = TrainConfig.options.compactMap(\.key)
        XCTAssertEqual(Set(keys).count, keys.count, "a key twice")
        XCTAssertEqual(keys.count, fields, "entries with a key: \(keys)")
        let names = TrainConfig.options.map(\.name)
        XCTAssertEqual(Set(names).count, names.count, "a flag twice")
        // config.json holds every key, none left out because it is nil.
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(TrainConfig().json.utf8)) as? [String: Any])
        XCTAssertEqual(Set(object.keys), Set(keys))
    }

    /// Each option's default, written as its flag's text, reads back as the default; and a
    /// value changed by a flag survives config.json and a config file in the flag spelling.
    func testEveryValueRoundTripsThroughFlagsAndFiles() throws {
        var config = TrainConfig()
        let changed: [String] = ["--dataset", "synthetic", "--train-samples", "100", "--synthetic-samples", "64", "--model", "mlp",
                                 "--epochs", "2", "--steps", "7", "--global-batch", "24", "--bn", "group:3", "--shard-size", "4", "--init", "kaiming-normal",
                                 "--optimizer", "adam", "--lr=0.01", "--lr-reference-batch", "256", "--momentum", "0",
                                 "--weight-decay", "0", "--schedule", "constant", "--warmup-steps", "3", "--clip-norm", "off",
                                 "--clip-value", "2.5", "--dropout", "0.25", "--label-smoothing", "0.1", "--seed", "18446744073709551615",
                                 "--no-shuffle", "--run-dir", "runs/a b", "--eval-every", "0", "--log-every", "3", "--init-from", "w.safetensors",
                                 "--check-replicas", "4", "--max-skipped-steps", "2", "--checkpoint-every", "5", "--keep", "1",
                                 "--resume", "auto", "--allow-batch-change", "--collective-timeout", "30", "--threads", "2"]
        config = try TrainFlags(parsing: changed).apply(to: config)
        XCTAssertEqual(config.seed, UInt64.max)
        XCTAssertNil(config.clipNorm)
        XCTAssertFalse(config.shuffle)
        XCTAssertEqual(config.runDir, "runs/a b")
        // Not changed: nesterov (not with adam), data-dir (not with synthetic), per-rank-batch (--global-batch replaces it).
        for option in TrainConfig.options where option.key != nil && !["nesterov", "data-dir", "per-rank-batch"].contains(option.name) {
            XCTAssertNotEqual(option.describe(config), option.describe(TrainConfig()), "--\(option.name) not changed by the flags above")
        }
        XCTAssertEqual(try JSONDecoder().decode(TrainConfig.self, from: Data(config.json.utf8)), config)
        // The flags' spelling in a file: the keys with - for _.
        var kebab = config.json
        for key in TrainConfig.options.compactMap(\.key) { kebab = kebab.replacingOccurrences(of: "\"\(key)\"", with: "\"\(key.replacingOccurrences(of: "_", with: "-"))\"") }
        XCTAssertEqual(try JSONDecoder().decode(TrainConfig.self, from: Data(kebab.utf8)), config)
        // Each option's text as its flag's value gives the same value back.
        for option in TrainConfig.options where option.valueName != nil {
            let text = option.describe(config).dropFirst(option.name.count + 3)
            if text == "none" { continue }  // unset, with no word for it: the flag is not given
            let again = try TrainFlags(parsing: ["--\(option.name)", String(text)]).apply(to: TrainConfig())
            XCTAssertEqual(option.describe(again), option.describe(config))
        }
    }

    func testBadCommandLinesNameTheFlag() {
        func refused(_ arguments: [String], _ message: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try TrainFlags(parsing: arguments).apply(to: TrainConfig()), file: file, line: line) { error in
                XCTAssertEqual("\(error)", message, file: file, line: line)
            }
        }
        refused(["--lrr", "1"], "unknown option '--lrr'; did you mean '--lr'?")
        refused(["--colour", "red"], "unknown option '--colour'")
        refused(["--lr"], "--lr needs a value (x)")
        refused(["--lr", "--seed", "1"], "--lr needs a value (x)")
        refused(["--nesterov=yes"], "--nesterov takes no value")
        refused(["0.1"], "unexpected argument '0.1'")
        refused(["-n", "2"], "unexpected argument '-n'")
        refused(["--lr", "fast"], "--lr: 'fast' is not a number")
        refused(["--seed", "-1"], "--seed: '-1' is not a non-negative integer")
        refused(["--bn", "global"], "--bn: 'global' is not one of sync, group:G (G a whole number of shards, at least 1), local or none")
        refused(["--bn", "group:0"], "--bn: 'group:0' is not one of sync, group:G (G a whole number of shards, at least 1), local or none")
        refused(["--clip-norm", "none"], "--clip-norm: 'none' is not a number or 'off'")
        refused(["--no-clip-norm", "--clip-norm", "1"], "give --clip-norm or --no-clip-norm, not both")
    }

    /// Values that look like flags reach the checks, which name what is wrong with them.
    func testNegativeValuesReachTheChecks() throws {
        let config = try TrainFlags(parsing: ["--lr", "-1", "--dropout=-0.5"]).apply(to: TrainConfig())
        XCTAssertEqual(config.lr, -1)
        XCTAssertThrowsError(try config.validateValues()) { XCTAssertEqual("\($0)", "--lr must be a positive number, got -1.0") }
    }

    /// A flag of one batch option replaces the file's other one; both as flags are refused.
    func testBatchFlagsOverrideTheFilesOtherBatch() throws {
        var file = TrainConfig()
        file.perRankBatch = 16
        let global = try TrainFlags(parsing: ["--global-batch", "64"]).apply(to: file)
        XCTAssertNil(global.perRankBatch)
        XCTAssertEqual(global.globalBatch, 64)
        file = global
        let perRank = try TrainFlags(parsing: ["--per-rank-batch", "8"]).apply(to: file)
        XCTAssertEqual(perRank.perRankBatch, 8)
        XCTAssertNil(perRank.globalBatch)
        let both = try TrainFlags(parsing: ["--per-rank-batch", "8", "--global-batch", "64"]).apply(to: TrainConfig())
        XCTAssertThrowsError(try both.validate()) { XCTAssertEqual("\($0)", "give --per-rank-batch or --global-batch, not both") }
        // The last of a repeated flag wins, as launchers that append flags expect.
        XCTAssertEqual(try TrainFlags(parsing: ["--lr", "1", "--lr", "0.5"]).apply(to: TrainConfig()).lr, 0.5)
    }

    /// --vary takes every option with a value but the run dir and resume, as its flag does.
    func testVaryTakesEveryValueOptionLikeItsFlag() throws {
        XCTAssertFalse(Variation.keys.contains("run-dir") || Variation.keys.contains("resume") || Variation.keys.contains("nesterov"))
        XCTAssertTrue(Variation.keys.contains("momentum") && Variation.keys.contains("label-smoothing"))
        let variants = try makeVariants(base: TrainConfig(), variations: [try Variation(parsing: "momentum=0,0.5"),
                                                                           try Variation(parsing: "clip-norm=off,1")])
        XCTAssertEqual(variants.map(\.config.momentum), [0, 0, 0.5, 0.5])
        XCTAssertEqual(variants.map(\.config.clipNorm), [nil, 1, nil, 1])
        XCTAssertThrowsError(try makeVariants(base: TrainConfig(), variations: [try Variation(parsing: "momentum=1")])) {
            XCTAssertEqual("\($0)", "--momentum must be in [0, 1), got 1.0")
        }
        XCTAssertThrowsError(try makeVariants(base: TrainConfig(), variations: [try Variation(parsing: "keep=many")])) {
            XCTAssertEqual("\($0)", "--vary keep: 'many' is not an integer")
        }
    }

    /// A resume must keep every option the table marks; the message names the flag.
    func testEveryOptionThatMustMatchOnResumeIsChecked() throws {
        let mustMatch = TrainConfig.options.filter { $0.resume == .mustMatch }.map(\.name)
        XCTAssertEqual(Set(mustMatch), ["train-samples", "bn", "optimizer", "seed", "no-shuffle"])
    }

    /// Help lists every flag with its default, in lines the argument parser keeps.
    func testHelpListsEveryFlagWithItsDefault() {
        let help = TrainFlags.help()
        for option in TrainConfig.options { XCTAssertTrue(help.contains("  --\(option.name)"), option.name) }
        XCTAssertTrue(help.contains("Base learning rate (default 0.1)."), help)
        XCTAssertTrue(help.split(separator: "\n").allSatisfy { $0.count <= 78 }, help)
    }

    /// A config file turns clipping by norm off as the flag does: `off` (which YAML reads as
    /// false), "off" quoted, or null; a number still reads as a number.
    func testConfigFilesSayOffForClipNorm() throws {
        for text in ["clip_norm: off\n", "clip-norm: \"off\"\n", "clip_norm: null\n", "clip_norm: false\n"] {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString).yaml").path
            try text.write(toFile: path, atomically: false, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: path) }
            XCTAssertNil(try TrainConfig.load(file: path).clipNorm, text)
        }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString).yaml").path
        try "clip_norm: 2\nnesterov: true\n".write(toFile: path, atomically: false, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertEqual(try TrainConfig.load(file: path).clipNorm, 2)
        try "clip_norm: true\n".write(toFile: path, atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try TrainConfig.load(file: path)) { XCTAssertTrue("\($0)".contains("key 'clip_norm': expected a number, got true"), "\($0)") }
    }

    /// Review findings: empty paths, late schedule and initializer errors, `false` as "all
    /// samples", an inverted shuffle setting, and typo hints for short names.
    func testValuesTheTableNowRefusesOrReadsRight() throws {
        for (arguments, message) in [(["--run-dir="], "--run-dir must not be empty"), (["--resume", ""], "--resume must not be empty"),
                                     (["--schedule", "warm"], "--schedule: learning-rate schedule 'warm'"),
                                     (["--init", "kaiming"], "--init: ")] {
            let config = try TrainFlags(parsing: arguments).apply(to: TrainConfig())
            XCTAssertThrowsError(try config.validateValues(), "\(arguments)") { XCTAssertTrue("\($0)".hasPrefix(message), "\($0)") }
        }
        XCTAssertThrowsError(try makeVariants(base: TrainConfig(), variations: [try Variation(parsing: "schedule=cosine,bogus")]))
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString).yaml").path
        try "train_samples: false\n".write(toFile: path, atomically: false, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertThrowsError(try TrainConfig.load(file: path)) { XCTAssertTrue("\($0)".contains("key 'train_samples'"), "\($0)") }
        try "train_samples: all\n".write(toFile: path, atomically: false, encoding: .utf8)
        XCTAssertNil(try TrainConfig.load(file: path).trainSamples)

        let unshuffled = try TrainFlags(parsing: ["--no-shuffle"]).apply(to: TrainConfig())
        XCTAssertEqual(unshuffled.settings.first { $0.name == "shuffle" }?.value, "false")
        let option = try XCTUnwrap(TrainConfig.option(named: "no-shuffle"))
        XCTAssertEqual(option.resumeMismatch(saved: unshuffled, now: TrainConfig()), "was trained with --no-shuffle, this run without it")
        XCTAssertEqual(option.resumeMismatch(saved: TrainConfig(), now: unshuffled), "was trained without --no-shuffle, this run with it")
        XCTAssertNil(option.resumeMismatch(saved: unshuffled, now: unshuffled))

        XCTAssertThrowsError(try TrainFlags(parsing: ["--x", "1"])) { XCTAssertEqual("\($0)", "unknown option '--x'") }
        XCTAssertThrowsError(try TrainFlags(parsing: ["--sed", "1"])) { XCTAssertEqual("\($0)", "unknown option '--sed'; did you mean '--seed'?") }
    }

    /// One key varied twice would name variants for values they do not train with.
    func testAKeyVariedTwiceIsRefused() throws {
        XCTAssertThrowsError(try makeVariants(base: TrainConfig(), variations: [try Variation(parsing: "lr=0.1"), try Variation(parsing: "lr=0.2,0.3")])) {
            XCTAssertEqual("\($0)", "--vary lr is given twice; give all its values in one: --vary lr=A,B,...")
        }
    }
}
