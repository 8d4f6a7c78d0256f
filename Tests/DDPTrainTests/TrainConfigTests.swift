import DDPTrain
import Foundation
import XCTest

final class TrainConfigTests: XCTestCase {
    func write(_ text: String, _ name: String = "config.yaml") throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString)-\(name)").path
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testFileUsesTheFlagNamesAndKeepsDefaults() throws {
        let config = try TrainConfig.load(file: try write("model: mlp\nper-rank-batch: 64\nlr: 0.2\nbn: local\nclip-norm: 1.5\n"))
        XCTAssertEqual(config.model, "mlp")
        XCTAssertEqual(config.perRankBatch, 64)
        XCTAssertEqual(config.lr, 0.2)
        XCTAssertEqual(config.bn, .local)
        XCTAssertEqual(config.clipNorm, 1.5)
        XCTAssertEqual(config.epochs, TrainConfig().epochs)
        XCTAssertEqual(config.weightDecay, TrainConfig().weightDecay)
        let json = try TrainConfig.load(file: try write(#"{"model": "lenet5", "bn": "none", "seed": 9}"#, "c.json"))
        XCTAssertEqual(json.bn, .disabled)
        XCTAssertEqual(json.seed, 9)
    }

    func testBadFilesNameFileKeyAndValue() throws {
        let unknown = try write("modle: mlp\n")
        XCTAssertThrowsError(try TrainConfig.load(file: unknown)) { error in
            XCTAssertTrue("\(error)".hasPrefix("\(unknown): unknown key 'modle'"), "\(error)")
        }
        let wrongType = try write("epochs: many\n")
        XCTAssertThrowsError(try TrainConfig.load(file: wrongType)) { error in
            XCTAssertTrue("\(error)".contains("key 'epochs': expected an integer, got many"), "\(error)")
        }
        let badEnum = try write("bn: sometimes\n")
        XCTAssertThrowsError(try TrainConfig.load(file: badEnum)) { error in
            XCTAssertTrue("\(error)".contains("key 'bn'") && "\(error)".contains("sometimes"), "\(error)")
        }
        XCTAssertThrowsError(try TrainConfig.load(file: "/nonexistent.yaml")) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent.yaml: cannot read"), "\(error)")
        }
    }

    func testValidationNamesTheOption() {
        var c = TrainConfig()
        c.perRankBatch = 8
        c.globalBatch = 32
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("not both")) }
        c = TrainConfig()
        c.dropout = 1
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("--dropout must be in [0, 1), got 1.0")) }
        c = TrainConfig()
        c.nesterov = true
        c.optimizer = "adam"
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("--nesterov")) }
        XCTAssertNoThrow(try TrainConfig().validate())
    }

    func testGlobalBatchAndLinearScaling() {
        var c = TrainConfig()
        XCTAssertEqual(c.resolvedGlobalBatch(worldSize: 4), 128)
        c.perRankBatch = 2
        XCTAssertEqual(c.resolvedGlobalBatch(worldSize: 4), 8)
        XCTAssertEqual(c.baseLearningRate(worldSize: 4), 0.1)
        c.lrReferenceBatch = 128
        XCTAssertEqual(c.baseLearningRate(worldSize: 4), 0.1 * 8 / 128, accuracy: 1e-15)
        c.perRankBatch = nil
        c.globalBatch = 256
        XCTAssertEqual(c.baseLearningRate(worldSize: 3), 0.2, accuracy: 1e-15)
    }
}

final class CompareUnitTests: XCTestCase {
    func testVariantsAreTheCartesianProductWithOwnFolders() throws {
        var base = TrainConfig()
        base.runDir = "runs/x"
        let variants = try makeVariants(base: base, variations: [try Variation(parsing: "bn=sync,local"),
                                                                  try Variation(parsing: "per-rank-batch=2,8,32")])
        XCTAssertEqual(variants.map(\.name), ["bn=sync per-rank-batch=2", "bn=sync per-rank-batch=8", "bn=sync per-rank-batch=32",
                                              "bn=local per-rank-batch=2", "bn=local per-rank-batch=8", "bn=local per-rank-batch=32"])
        XCTAssertEqual(variants[4].config.bn, .local)
        XCTAssertEqual(variants[4].config.perRankBatch, 8)
        XCTAssertEqual(Set(variants.map(\.config.runDir)).count, 6)
        XCTAssertTrue(variants.allSatisfy { $0.config.runDir?.hasPrefix("runs/x/variants/") == true && $0.config.seed == base.seed })
    }

    func testBadVariationsAreRejected() {
        XCTAssertThrowsError(try Variation(parsing: "colour=red")) { XCTAssertTrue("\($0)".contains("unknown key 'colour'")) }
        XCTAssertThrowsError(try Variation(parsing: "bn")) { XCTAssertTrue("\($0)".contains("KEY=V1,V2")) }
        XCTAssertThrowsError(try Variation(parsing: "lr=0.1,0.1")) { XCTAssertTrue("\($0)".contains("distinct")) }
        XCTAssertThrowsError(try makeVariants(base: TrainConfig(), variations: [try! Variation(parsing: "lr=fast")])) {
            XCTAssertTrue("\($0)".contains("'fast' is not a number"))
        }
        XCTAssertThrowsError(try makeVariants(base: TrainConfig(), variations: [try! Variation(parsing: "bn=maybe")])) {
            XCTAssertTrue("\($0)".contains("'maybe' is not one of sync, group:G"))
        }
    }

    func testWindowedLossKeepsAtMostMaxPointsAndAveragesWindows() {
        let losses = (1...1000).map { (step: $0, loss: Double($0)) }
        let points = windowedLoss(losses, maxPoints: 400)
        XCTAssertEqual(points.count, 334)  // windows of 3
        XCTAssertEqual(points[0].x, 3)
        XCTAssertEqual(points[0].y, 2)
        XCTAssertEqual(windowedLoss(Array(losses.prefix(8))).count, 8)
        XCTAssertEqual(windowedLoss([(1, .nan), (2, 1)]).count, 1)
    }

    func testChartHasOneSeriesPerVariantWithLegend() {
        let chart = LineChart(title: "t", xLabel: "epoch", yLabel: "acc",
                              series: [.init(name: "a<b", points: [(1, 50), (2, 60)]), .init(name: "c", points: [(1, 40)])])
        let svg = chart.svg()
        XCTAssertEqual(svg.components(separatedBy: "<polyline class=\"series\"").count - 1, 2)
        XCTAssertTrue(svg.contains("data-variant=\"a&lt;b\" data-points=\"2\""))
        XCTAssertTrue(svg.contains(">a&lt;b</text>"), "legend entry, escaped")
        XCTAssertTrue(svg.contains(">epoch</text>") && svg.contains(">acc</text>"))
    }
}

/// Hostile config files and values: refused with the file, key or option and the value,
/// never a crash, a hang or a read of unbounded size.
extension TrainConfigTests {
    func expectLoadError(_ path: String, _ text: String, file: StaticString = #filePath, line: UInt = #line) {
        // On a background thread with a limit, so that a load that blocks fails the test
        // instead of hanging the suite.
        let done = DispatchSemaphore(value: 0)
        let outcome = LockedBox<String>()
        Thread.detachNewThread {
            do { _ = try TrainConfig.load(file: path); outcome.set("loaded without error") } catch { outcome.set("\(error)") }
            done.signal()
        }
        guard done.wait(timeout: .now() + 20) == .success else { return XCTFail("loading \(path) blocked", file: file, line: line) }
        let message = outcome.get() ?? ""
        XCTAssertTrue(message.hasPrefix(path) && message.contains(text), "\(message)", file: file, line: line)
    }

    func testOnlyRegularFilesUpToTheLimitAreRead() throws {
        let big = try write("# " + String(repeating: "x", count: 1 << 20) + "\nlr: 0.1\n")
        expectLoadError(big, "the limit is 1048576 bytes")
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString).path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        expectLoadError(folder, "not a regular file")
        // A FIFO without a writer: opening it for reading must not wait for one.
        let fifo = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString).yaml").path
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        defer { unlink(fifo) }
        expectLoadError(fifo, "not a regular file")
        let binary = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString).yaml").path
        try Data([0x6c, 0x72, 0x3a, 0x20, 0xff, 0xfe, 0x0a]).write(to: URL(fileURLWithPath: binary))
        defer { unlink(binary) }
        expectLoadError(binary, "not UTF-8 text")
    }

    func testNestingIsBoundedBeforeParsing() throws {
        // 100000 open brackets overflowed the stack in Yams' recursive composer (SIGSEGV).
        expectLoadError(try write("lr: " + String(repeating: "[", count: 100_000) + "\n"), "nested more than 64 levels")
        expectLoadError(try write(#"{"lr": "# + String(repeating: #"{"a": "#, count: 100_000) + "\n", "c.json"), "nested more than 64 levels")
        var blocks = ""
        for depth in 0..<70 { blocks += String(repeating: "  ", count: depth) + "a:\n" }
        expectLoadError(try write(blocks + String(repeating: "  ", count: 70) + "1\n"), "line 65: lists and maps are nested more than 64 levels")
        XCTAssertNoThrow(try TrainConfig.load(file: try write("lr: 0.2\nmodel: mlp\n")))
    }

    func testAnchorsAndAliasesAreRefused() throws {
        // The seed of a "billion laughs": each alias level multiplies what Yams builds.
        expectLoadError(try write("lr: &rate 0.2\nmomentum: *rate\n"), "line 1: aliases (*name) and anchors (&name) are not supported")
        expectLoadError(try write("model: mlp\nlr: *rate\n"), "line 2: aliases")
        expectLoadError(try write("a: &a [1, 2]\nb: [*a, *a]\n"), "line 1: aliases")
    }

    /// Yams' base-60 integers trap on overflow (found by fuzzing the model file; the config
    /// file goes through the same parser).
    func testTagsAndBaseSixtyNumbersAreRefused() throws {
        expectLoadError(try write("per-rank-batch: !!int 1:0:0:0:0:0:0:0:0:0:0:0\n"), "line 1: tags (!!int) are not supported")
        expectLoadError(try write("model: mlp\nsteps: 1:0:0:0:0:0:0:0:0:0:0:0\n"),
                        "line 2: base-60 numbers (1:0:0:0:0:0:0:0:0:0:0:0) are not supported")
        expectLoadError(try write("steps: 1:30\n"), "line 1: base-60 numbers (1:30) are not supported")
    }

    func testFloatOptionsMustFitFloat32() throws {
        expectLoadError(try write("lr: 1e308\n"), "--lr 1e+308 is outside Float32's range")
        expectLoadError(try write("lr: .nan\n"), "--lr must be a positive number, got nan")
        expectLoadError(try write("clip-norm: 1e-50\n"), "--clip-norm 1e-50 is outside Float32's range")
        expectLoadError(try write("momentum: 0.99999999999\n"), "--momentum 0.99999999999 is 1 in Float32")
        expectLoadError(try write("weight-decay: 1e39\n"), "--weight-decay 1e+39 is outside Float32's range")
        expectLoadError(try write("dropout: 0.999999999999\n"), "--dropout 0.999999999999 is 1 in Float32")
        expectLoadError(try write("label-smoothing: -0.1\n"), "--label-smoothing must be in [0, 1), got -0.1")
        expectLoadError(try write("collective-timeout: .inf\n"), "--collective-timeout must be 0 (off) or a number of seconds, got inf")
        expectLoadError(try write("clip-value: 1e39\n"), "--clip-value 1e+39 is outside Float32's range")
        var c = TrainConfig()
        c.lr = 1e308
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("--lr 1e+308 is outside Float32's range"), "\($0)") }
    }

    func testCountsOutOfRangeAreRefused() throws {
        let huge = 1 << 62
        let counts = ["steps", "per-rank-batch", "global-batch", "epochs", "lr-reference-batch", "warmup-steps", "eval-every", "log-every",
                      "check-replicas", "max-skipped-steps", "train-samples", "synthetic-samples", "checkpoint-every", "keep"]
        for key in counts {
            expectLoadError(try write("\(key): \(huge)\n"), "--\(key) must be")
            expectLoadError(try write("\(key): \(huge)\n"), "\(huge)")
        }
        for key in ["keep", "warmup-steps", "log-every", "synthetic-samples", "max-skipped-steps"] {
            expectLoadError(try write("\(key): -1\n"), "--\(key) must be between")
        }
        expectLoadError(try write("threads: 100000\n"), "--threads must be between 1 and 256")
        XCTAssertNoThrow(try TrainConfig.load(file: try write("epochs: 0\nsteps: 10\n")).validate())
    }

    func testWorldSizeChecks() throws {
        var c = TrainConfig()
        c.perRankBatch = 1 << 30
        XCTAssertNoThrow(try c.validate(worldSize: 1))
        XCTAssertThrowsError(try c.validate(worldSize: 4)) { XCTAssertTrue("\($0)".contains("global batch larger than 2147483647"), "\($0)") }
        c = TrainConfig()
        c.lr = 1e38
        c.globalBatch = 1024
        c.lrReferenceBatch = 1
        XCTAssertThrowsError(try c.validate(worldSize: 2)) { XCTAssertTrue("\($0)".contains("outside Float32's range"), "\($0)") }
    }
}

/// A value set from one thread and read from another.
final class LockedBox<T>: @unchecked Sendable {
    private var value: T?
    private let lock = NSLock()
    func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
    func get() -> T? { lock.lock(); defer { lock.unlock() }; return value }
}
