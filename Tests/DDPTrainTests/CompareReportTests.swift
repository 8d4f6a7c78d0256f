import DDPTrain
import Foundation
import XCTest

/// The compare report's figures and charts from hand-made variant results.
final class CompareReportTests: XCTestCase {
    /// A variant of 8 steps over 2 epochs, evaluated after each epoch.
    func result(_ name: String, group: String, losses: [Double], accuracies: [Double], testLosses: [Double],
                wall: Double = 60, totalWall: Double? = nil) throws -> VariantResult {
        let summary: [String: Any] = [
            "worldSize": 2, "globalBatch": 64, "steps": losses.count, "epochs": 2.0, "skippedSteps": 0,
            "finalTrainLoss": losses.last!, "testLoss": testLosses.last!, "testAccuracy": accuracies.last!,
            "bestTestAccuracy": accuracies.max()!, "bestEpoch": 2, "wallSeconds": wall, "samplesPerSecond": 100.0,
            "communicationShare": 0.25, "parameterHashes": [String](), "accuracyPerEpoch": accuracies, "evaluatedEpochs": [1, 2],
        ]
        let decoded = try JSONDecoder().decode(TrainSummary.self, from: JSONSerialization.data(withJSONObject: summary))
        let perEpoch = losses.count / 2
        return VariantResult(name: name, summary: decoded,
                             losses: losses.enumerated().map { .init(step: $0.offset + 1, loss: $0.element, lr: 0.1, time: Double($0.offset)) },
                             group: group,
                             evaluations: zip(accuracies, testLosses).enumerated().map {
                                 .init(step: ($0.offset + 1) * perEpoch, testLoss: $0.element.1, testAccuracy: $0.element.0, time: 0)
                             },
                             totalWallSeconds: totalWall)
    }

    /// The command pastes back into a shell: arguments with spaces, quotes or `$` quoted.
    func testCommandIsShellQuoted() {
        XCTAssertEqual(shellQuoted(["ddptrain", "compare", "--vary", "bn=sync,local", "--title", "BN: 4 ranks, it's $x", "--lr", "0.1", ""]),
                       #"ddptrain compare --vary bn=sync,local --title 'BN: 4 ranks, it'\''s $x' --lr 0.1 ''"#)
    }

    /// TensorBoard's debiased exponential moving average.
    func testSmoothingIsDebiasedMovingAverage() {
        let points = smoothed([(1, 1), (2, 0), (3, .nan), (4, 1)], weight: 0.5)
        XCTAssertEqual(points.map(\.x), [1, 2, 4])
        XCTAssertEqual(points[0].y, 1, accuracy: 1e-12)       // 0.5 / (1 - 0.5)
        XCTAssertEqual(points[1].y, 1.0 / 3, accuracy: 1e-12)  // 0.25 / 0.75
        XCTAssertEqual(points[2].y, 0.625 / 0.875, accuracy: 1e-12)
        XCTAssertEqual(smoothingWeight(count: 40), 0)
        XCTAssertEqual(smoothingWeight(count: 5000), 0.99, accuracy: 1e-12)
    }

    /// The final train loss is the mean over the last epoch, not the last batch.
    func testFinalTrainLossIsMeanOfLastEpoch() throws {
        let r = try result("a", group: "a", losses: [8, 7, 6, 5, 4, 3, 2, 9], accuracies: [0.5, 0.6], testLosses: [1, 0.9])
        XCTAssertEqual(r.lastEpochTrainLoss, 4.5)
        let report = ComparisonReport(title: "t", command: "c", results: [r], worldSize: 2)
        XCTAssertEqual(report.rows[0][report.header.firstIndex(of: "train loss (last epoch)")!], "4.5000")
    }

    /// A resumed variant counts its earlier attempts: each from its start to its last row.
    func testWallTimeSumsAttempts() {
        let rows: [Double] = [101, 130, 150, 205, 260]
        XCTAssertEqual(VariantResult.totalWallSeconds(attemptStarts: [100, 200], lastAttemptSeconds: 70, rowTimes: rows), 50 + 70)
        XCTAssertEqual(VariantResult.totalWallSeconds(attemptStarts: [100, 160, 200], lastAttemptSeconds: 70, rowTimes: rows), 50 + 70)
        XCTAssertEqual(VariantResult.totalWallSeconds(attemptStarts: [200], lastAttemptSeconds: 70, rowTimes: rows), 70)
        let report = ComparisonReport(title: "t", command: "c", results: [
            try! result("a", group: "a", losses: [1, 1, 1, 1], accuracies: [0.5, 0.6], testLosses: [1, 1], wall: 70, totalWall: 120),
        ], worldSize: 1)
        XCTAssertEqual(report.rows[0][report.header.firstIndex(of: "wall time")!], "2:00")
    }

    /// Repeats over seeds are one row each, mean ± sample standard deviation; the report says
    /// which variants are within each other's spread.
    func testSeedsAggregateIntoMeanAndDeviation() throws {
        let results = [
            try result("bn=sync seed=0", group: "bn=sync", losses: [4, 3, 2, 1], accuracies: [0.80, 0.90], testLosses: [0.5, 0.30]),
            try result("bn=sync seed=1", group: "bn=sync", losses: [4, 3, 4, 3], accuracies: [0.82, 0.92], testLosses: [0.5, 0.34]),
            try result("bn=local seed=0", group: "bn=local", losses: [4, 3, 2, 2], accuracies: [0.80, 0.91], testLosses: [0.5, 0.4]),
            try result("bn=local seed=1", group: "bn=local", losses: [4, 3, 2, 2], accuracies: [0.80, 0.93], testLosses: [0.5, 0.4]),
            try result("bn=none seed=0", group: "bn=none", losses: [4, 3, 2, 2], accuracies: [0.5, 0.60], testLosses: [0.9, 0.8]),
            try result("bn=none seed=1", group: "bn=none", losses: [4, 3, 2, 2], accuracies: [0.5, 0.61], testLosses: [0.9, 0.8]),
        ]
        let report = ComparisonReport(title: "t", command: "c", results: results, worldSize: 2)
        XCTAssertEqual(report.header, ["variant", "runs", "final test acc", "best test acc", "test loss", "train loss (last epoch)",
                                       "wall time", "samples/s", "communication"])
        // sync: accuracy 0.90, 0.92 -> 91.00 ± 1.41 (std of {90, 92} with n - 1 is sqrt(2));
        // test loss 0.30, 0.34 -> 0.3200 ± 0.0283; last-epoch train loss 1.5 and 3.5 -> 2.5 ± 1.4142.
        XCTAssertEqual(report.rows[0], ["bn=sync", "2", "91.00 ± 1.41%", "91.00 ± 1.41%", "0.3200 ± 0.0283", "2.5000 ± 1.4142",
                                        "1:00", "100", "25.0%"])
        XCTAssertEqual(report.rows[1][2], "92.00 ± 1.41%")
        XCTAssertEqual(report.rows[2][2], "60.50 ± 0.71%")
        XCTAssertEqual(report.spreadNotes, ["bn=sync and bn=local are within each other's spread: 91.00 ± 1.41% against 92.00 ± 1.41% (difference 1.00 points)."])

        // A variant within the spread of several: one line for it, each pair named once.
        let three = ComparisonReport(title: "t", command: "c", results: results + [
            try result("bn=group seed=0", group: "bn=group", losses: [4, 3, 2, 2], accuracies: [0.8, 0.90], testLosses: [0.5, 0.4]),
            try result("bn=group seed=1", group: "bn=group", losses: [4, 3, 2, 2], accuracies: [0.8, 0.92], testLosses: [0.5, 0.4]),
        ], worldSize: 2)
        XCTAssertEqual(three.spreadNotes, [
            "bn=sync (91.00 ± 1.41%) is within the spread of bn=local (92.00 ± 1.41%, difference 1.00 points), bn=group (91.00 ± 1.41%, difference 0.00 points).",
            "bn=local and bn=group are within each other's spread: 92.00 ± 1.41% against 91.00 ± 1.41% (difference 1.00 points).",
        ])
        XCTAssertTrue(report.markdown.contains("| bn=sync | 2 | 91.00 ± 1.41% |"), report.markdown)

        // One curve per group, with a band; x in epochs (4 steps over 2 epochs ends at 2).
        let loss = report.lossChart
        XCTAssertEqual(loss.series.map(\.name), ["bn=sync", "bn=local", "bn=none"])
        XCTAssertEqual(loss.series[0].points.map(\.x), [0.5, 1, 1.5, 2])
        XCTAssertEqual(loss.series[0].raw.map(\.y), [4, 3, 3, 2])
        XCTAssertEqual(loss.series[0].band.count, 4)
        XCTAssertEqual(loss.series[0].band[2].high - loss.series[0].band[2].low, 2 * Double(2).squareRoot(), accuracy: 1e-12)
        XCTAssertEqual(loss.series[0].markerPoints.map(\.x), [1, 2], "evaluations marked on the curve")
        let svg = loss.svg()
        XCTAssertEqual(svg.components(separatedBy: "<polygon class=\"band\"").count - 1, 3)
        XCTAssertEqual(svg.components(separatedBy: "<polyline class=\"raw\"").count - 1, 3)
        XCTAssertEqual(svg.components(separatedBy: "class=\"marker\"").count - 1, 6)
        XCTAssertEqual(report.testLossChart.series[0].points.map(\.x), [1, 2])
        XCTAssertEqual(report.learningRateChart.series[0].points.count, 4)
        XCTAssertTrue(report.html.contains("test-loss.svg") == false && report.html.components(separatedBy: "<svg").count - 1 == 4)
    }

    /// Without repeats the report says that no spread is measured.
    func testSingleRunsSayNoSpreadMeasured() throws {
        let report = ComparisonReport(title: "t", command: "c", results: [
            try result("bn=sync", group: "bn=sync", losses: [1, 1, 1, 1], accuracies: [0.5, 0.6], testLosses: [1, 1]),
        ], worldSize: 1)
        XCTAssertEqual(report.header.first, "variant")
        XCTAssertFalse(report.header.contains("runs"))
        XCTAssertTrue(report.spreadNotes[0].hasPrefix("One run per variant: no spread across seeds is measured"))
    }

    /// An accuracy axis spans at least 5 points: 89.5 against 89.8 is not a gulf.
    func testAccuracyAxisHasMinimumSpan() throws {
        let report = ComparisonReport(title: "t", command: "c", results: [
            try result("a", group: "a", losses: [1, 1, 1, 1], accuracies: [0.895, 0.896], testLosses: [1, 1]),
            try result("b", group: "b", losses: [1, 1, 1, 1], accuracies: [0.897, 0.898], testLosses: [1, 1]),
        ], worldSize: 1)
        let svg = report.accuracyChart.svg()
        let labels = svg.components(separatedBy: "text-anchor=\"end\">").dropFirst().compactMap { Double($0.prefix { $0 != "<" }) }
        XCTAssertGreaterThanOrEqual(labels.max()! - labels.min()!, 5, svg)
        XCTAssertLessThanOrEqual(labels.max()!, 100)
    }
}
