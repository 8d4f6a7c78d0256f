import DDPKernels
import DDPNet
import XCTest

/// Dropout masks: deterministic, per sample identity, with the right rate and scale.
final class DropoutTests: XCTestCase {
    /// Runs a fresh dropout model on `x` (features per sample) with the given sample identities.
    func dropout(p: Float, _ x: [Float], features: Int, ids: [Int32], step: Int = 1, training: Bool = true) throws -> [Float] {
        let n = ids.count
        let model = try Model(layers: [Dropout(p: p)], inputShape: Shape(n: 1, features: features), maxBatch: n)
        let buffer = FloatBuffer(capacity: x.count)
        for i in 0..<x.count { buffer.pointer[i] = x[i] }
        return try ids.withUnsafeBufferPointer { ids in
            let context = ForwardContext(training: training, seed: 11, step: step, sampleIDs: ids.baseAddress)
            return Array(try model.forward(buffer.tensor(Shape(n: n, features: features)), context).buffer)
        }
    }

    func testMaskIsDeterministicAndDependsOnStep() throws {
        let x = TestData.uniform(4 * 50, seed: 1, stream: 1, 1, 2)
        let ids: [Int32] = [4, 9, 2, 30]
        let a = try dropout(p: 0.5, x, features: 50, ids: ids)
        XCTAssertEqual(a, try dropout(p: 0.5, x, features: 50, ids: ids))
        XCTAssertNotEqual(a, try dropout(p: 0.5, x, features: 50, ids: ids, step: 2))
    }

    /// The contract of DESIGN I7: element j of sample `id` is kept when word j % 4 of
    /// Philox(seed, .dropout).block(j / 4, layer index, step, id) maps to a unit >= p.
    func testMaskIsTheDocumentedPhiloxWord() throws {
        let features = 45, ids: [Int32] = [3, 1_000_000], p: Float = 0.5
        let x = [Float](repeating: 1, count: ids.count * features)
        let y = try dropout(p: p, x, features: features, ids: ids, step: 7)
        let g = Philox(seed: 11, purpose: .dropout)
        for (s, id) in ids.enumerated() {
            for j in 0..<features {
                let r = g.block(UInt32(j / 4), 0, 7, UInt32(id))
                let word = [r.0, r.1, r.2, r.3][j % 4]
                XCTAssertEqual(y[s * features + j] != 0, Philox.unit(word) >= p, "sample \(id), element \(j)")
            }
        }
    }

    func testRateAndScale() throws {
        let features = 1000, ids = (0..<Int32(64)).map { $0 }, p: Float = 0.25
        let x = TestData.uniform(ids.count * features, seed: 2, stream: 1, 0.5, 1.5)
        let y = try dropout(p: p, x, features: features, ids: ids)
        var kept = 0
        for i in 0..<x.count where y[i] != 0 {
            kept += 1
            XCTAssertEqual(y[i], x[i] / (1 - p), accuracy: 1e-6 * y[i])
        }
        // Binomial: standard deviation sqrt(p(1-p)/N) ≈ 1.7e-3 for N = 64000; allow 5 of them.
        let fraction = Double(kept) / Double(x.count)
        XCTAssertEqual(fraction, 1 - Double(p), accuracy: 5 * (Double(p * (1 - p)) / Double(x.count)).squareRoot())
    }

    func testMaskFollowsTheSampleNotItsPosition() throws {
        let features = 37
        let alone = TestData.uniform(features, seed: 3, stream: 1, 1, 2)
        var batch = TestData.uniform(8 * features, seed: 3, stream: 2, 1, 2)
        batch.replaceSubrange(5 * features..<6 * features, with: alone)
        let ids: [Int32] = [0, 1, 2, 3, 4, 11, 6, 7]
        let single = try dropout(p: 0.4, alone, features: features, ids: [11])
        let inBatch = try dropout(p: 0.4, batch, features: features, ids: ids)
        XCTAssertEqual(single, Array(inBatch[5 * features..<6 * features]))
        XCTAssertNotEqual(single, Array(inBatch[0..<features].map { $0 }), "another sample draws another mask")
    }

    func testIdentityInEvaluationAndForZeroRate() throws {
        let x = TestData.uniform(3 * 20, seed: 4, stream: 1)
        XCTAssertEqual(try dropout(p: 0.5, x, features: 20, ids: [1, 2, 3], training: false), x)
        XCTAssertEqual(try dropout(p: 0, x, features: 20, ids: [1, 2, 3]), x)
    }

    func testInvalidRateThrows() throws {
        XCTAssertThrowsError(try Model(layers: [Dropout(p: 1)], inputShape: Shape(n: 1, features: 3), maxBatch: 1))
        XCTAssertThrowsError(try Model(layers: [Dropout(p: -0.1)], inputShape: Shape(n: 1, features: 3), maxBatch: 1))
        let layer = Dropout(p: 0.1)
        let model = try Model(layers: [layer], inputShape: Shape(n: 1, features: 3), maxBatch: 1)
        layer.p = 1.5
        let x = FloatBuffer(capacity: 3)
        XCTAssertThrowsError(try model.forward(x.tensor(Shape(n: 1, features: 3)), ForwardContext(training: true)))
        XCTAssertEqual(Dropout(p: 0.25).summary, "Dropout(p=0.25, inplace=False)")
    }
}
