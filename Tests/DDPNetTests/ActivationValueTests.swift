import DDPKernels
import DDPNet
import Foundation
import XCTest

/// Activation values against Float64 references, over a wide sweep and near 0.
final class ActivationValueTests: XCTestCase {
    /// -30...30 in steps of 1/64 plus ±10^-8 ... ±10^-1 (where relative accuracy is hardest).
    let xs: [Float] = stride(from: -30, through: 30, by: 1.0 / 64).map { Float($0) }
        + stride(from: -8.0, through: -1, by: 0.25).flatMap { [Float(pow(10, $0)), -Float(pow(10, $0))] }

    /// Largest error of `layer` on `xs`, each scaled by max(floor, |reference|).
    func worstError(_ layer: Layer, floor: Double, _ reference: (Double) -> Double) throws -> Double {
        let shape = Shape(n: 1, features: xs.count)
        let model = try Model(layers: [layer], inputShape: shape, maxBatch: 1)
        let x = FloatBuffer(capacity: xs.count)
        for (i, v) in xs.enumerated() { x.pointer[i] = v }
        let y = try model.forward(x.tensor(shape), ForwardContext(training: false))
        var worst = 0.0
        for (i, v) in xs.enumerated() {
            let expected = reference(Double(v))
            worst = max(worst, abs(Double(y[i]) - expected) / max(floor, abs(expected)))
        }
        return worst
    }

    func testAgainstFloat64References() throws {
        // Relative error: a few Float32 ulp (ulp/2 = 6e-8), also near 0 where tanh(x) ≈ x.
        XCTAssertLessThanOrEqual(try worstError(Tanh(), floor: 1e-30) { tanh($0) }, 5e-7)
        XCTAssertLessThanOrEqual(try worstError(Sigmoid(), floor: 1e-30) { 1 / (1 + exp(-$0)) }, 5e-7)
        XCTAssertLessThanOrEqual(try worstError(ELU(alpha: 1.5), floor: 1e-30) { $0 > 0 ? $0 : 1.5 * expm1($0) }, 5e-7)
        XCTAssertLessThanOrEqual(try worstError(SELU(), floor: 1e-30) {
            1.0507009873554804934193349852946 * ($0 > 0 ? $0 : 1.6732632423543772848170429916717 * expm1($0))
        }, 5e-7)
        // GELU's erf is good to 1.5e-7 absolute; relative to max(1, |y|).
        XCTAssertLessThanOrEqual(try worstError(GELU(), floor: 1) { 0.5 * $0 * (1 + erf($0 / 2.0.squareRoot())) }, 5e-7)
        XCTAssertLessThanOrEqual(try worstError(LeakyReLU(negativeSlope: 0.2), floor: 1e-30) { $0 > 0 ? $0 : Double(Float(0.2)) * $0 }, 6e-8)
    }
}
