import DDPKernels
import DDPNet
import XCTest

/// Softmax cross-entropy: gradient against finite differences, and known values.
final class CrossEntropyTests: XCTestCase {
    func testGradientMatchesFiniteDifferences() {
        let n = 4, k = 5
        let labels: [Int32] = [0, 3, 4, 3]
        for smoothing: Float in [0, 0.1] {
            let loss = SoftmaxCrossEntropy(classes: k, maxBatch: n, labelSmoothing: smoothing)
            let logits = FloatBuffer(capacity: n * k)
            let values = TestData.uniform(n * k, seed: 6, stream: 1, -3, 3)
            for i in 0..<(n * k) { logits.pointer[i] = values[i] }
            let shape = Shape(n: n, features: k)
            let analytic = labels.withUnsafeBufferPointer { Array(loss(logits.tensor(shape), labels: $0.baseAddress!).gradient.buffer) }
            // Same step and tolerance reasoning as GradientCheck; the loss is smooth.
            let h: Float = 1e-2
            for i in 0..<(n * k) {
                let saved = logits.pointer[i]
                logits.pointer[i] = saved + h
                let plus = labels.withUnsafeBufferPointer { loss(logits.tensor(shape), labels: $0.baseAddress!).lossSum }
                logits.pointer[i] = saved - h
                let minus = labels.withUnsafeBufferPointer { loss(logits.tensor(shape), labels: $0.baseAddress!).lossSum }
                logits.pointer[i] = saved
                XCTAssertEqual(Double(analytic[i]), (plus - minus) / Double(2 * h), accuracy: 1e-3, "smoothing \(smoothing), logit \(i)")
            }
        }
    }

    func testUniformLogitsGiveLogK() {
        let k = 10, n = 3
        let loss = SoftmaxCrossEntropy(classes: k, maxBatch: n, labelSmoothing: 0.2)
        let logits = FloatBuffer(capacity: n * k)
        logits.pointer.update(repeating: 0.7, count: n * k)
        let labels: [Int32] = [2, 9, 0]
        let result = labels.withUnsafeBufferPointer { loss(logits.tensor(Shape(n: n, features: k)), labels: $0.baseAddress!) }
        XCTAssertEqual(result.lossSum, Double(n) * log(Double(k)), accuracy: 1e-5)
        // Ties go to the first maximum: only the label-0 sample counts as correct.
        XCTAssertEqual(result.correct, 1)
    }

    func testHugeLogitsStayFinite() {
        let loss = SoftmaxCrossEntropy(classes: 3, maxBatch: 2)
        let logits = FloatBuffer(capacity: 6)
        for (i, v) in [Float(1e4), 0, -1e4, -1e4, 1e4, 0].enumerated() { logits.pointer[i] = v }
        let labels: [Int32] = [1, 1]
        let result = labels.withUnsafeBufferPointer { loss(logits.tensor(Shape(n: 2, features: 3)), labels: $0.baseAddress!) }
        XCTAssertEqual(result.lossSum, 1e4, accuracy: 1e-2, "first sample costs 1e4, second 0")
        XCTAssertEqual(result.correct, 1)
        for i in 0..<6 { XCTAssertTrue(result.gradient[i].isFinite) }
        XCTAssertEqual(result.gradient[0], 1, accuracy: 1e-6)
        XCTAssertEqual(result.gradient[1], -1, accuracy: 1e-6)
    }
}
