import DDPData
import XCTest

final class SyntheticTests: XCTestCase {
    func make(seed: UInt64, split: Split = .train, count: Int = 500) throws -> Dataset {
        try Dataset.synthetic(count: count, channels: 2, height: 5, width: 4, classes: 7, seed: seed, split: split)
    }

    func testShapeAndClasses() throws {
        let d = try make(seed: 1)
        XCTAssertEqual(d.name, "synthetic-train")
        XCTAssertEqual(d.count, 500)
        XCTAssertEqual(d.shape(batch: 3).dims, [3, 2, 5, 4])
        XCTAssertEqual(d.classes, 7)
        XCTAssertEqual(Set((0..<d.count).map { d.labels[$0] }), Set(0..<7))
    }

    func testDeterministicBySeed() throws {
        XCTAssertTrue(sameData(try make(seed: 1), try make(seed: 1)))
        XCTAssertFalse(sameData(try make(seed: 1), try make(seed: 2)))
        XCTAssertFalse(sameData(try make(seed: 1), try make(seed: 1, split: .test)))
        let small = try make(seed: 1, count: 100), large = try make(seed: 1)
        XCTAssertEqual(memcmp(small.pixels, large.pixels, 100 * 40), 0, "sample i does not depend on the count")
    }

    /// Nearest class mean, fitted on train, classifies the test split: the classes are separable.
    func testLearnable() throws {
        let train = try make(seed: 3, count: 700), test = try make(seed: 3, split: .test, count: 300)
        let n = train.samplePixels
        var means = [Double](repeating: 0, count: 7 * n), counts = [Double](repeating: 0, count: 7)
        for i in 0..<train.count {
            let c = Int(train.labels[i])
            counts[c] += 1
            for j in 0..<n { means[c * n + j] += Double(train.pixels[i * n + j]) }
        }
        for c in 0..<7 { for j in 0..<n { means[c * n + j] /= counts[c] } }
        var correct = 0
        for i in 0..<test.count {
            let distances = (0..<7).map { c in
                (0..<n).reduce(0.0) { d, j in let e = Double(test.pixels[i * n + j]) - means[c * n + j]; return d + e * e }
            }
            if distances.firstIndex(of: distances.min()!) == Int(test.labels[i]) { correct += 1 }
        }
        XCTAssertGreaterThanOrEqual(correct, 297)
    }

    func testGatherWithoutNormalization() throws {
        let d = try make(seed: 4)
        var x = [Float](repeating: 0, count: 2 * 40)
        var labels: [Int32] = [-1, -1]
        let indices: [Int32] = [499, 3]
        indices.withUnsafeBufferPointer { d.gather(indices: $0, normalization: .none, into: &x, labels: &labels) }
        XCTAssertEqual(labels, [d.labels[499], d.labels[3]])
        XCTAssertEqual(x[41], Float(d.pixels[3 * 40 + 1]) / 255)
        XCTAssertEqual(x[0], Float(d.pixels[499 * 40]) / 255)
    }
}
