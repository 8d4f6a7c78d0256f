import DDPTrain
import Foundation
import XCTest

final class TrainConfigTests: XCTestCase {
    func write(_ text: String, _ name: String = "config.yaml") throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString)-\(name)").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
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
        XCTAssertTrue(variants.allSatisfy { $0.config.runDir.hasPrefix("runs/x/variants/") && $0.config.seed == base.seed })
    }

    func testBadVariationsAreRejected() {
        XCTAssertThrowsError(try Variation(parsing: "colour=red")) { XCTAssertTrue("\($0)".contains("unknown key 'colour'")) }
        XCTAssertThrowsError(try Variation(parsing: "bn")) { XCTAssertTrue("\($0)".contains("KEY=V1,V2")) }
        XCTAssertThrowsError(try Variation(parsing: "lr=0.1,0.1")) { XCTAssertTrue("\($0)".contains("distinct")) }
        XCTAssertThrowsError(try makeVariants(base: TrainConfig(), variations: [try! Variation(parsing: "lr=fast")])) {
            XCTAssertTrue("\($0)".contains("'fast' is not a number"))
        }
        XCTAssertThrowsError(try makeVariants(base: TrainConfig(), variations: [try! Variation(parsing: "bn=maybe")])) {
            XCTAssertTrue("\($0)".contains("'maybe' is not one of sync, local, none"))
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
