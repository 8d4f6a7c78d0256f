import DDPKernels
import DDPNet
import XCTest

/// Deterministic test data from the counter-based generator (fixed seeds, no global state).
enum TestData {
    /// `count` floats uniform in [lo, hi), stream `stream` of `seed`.
    static func uniform(_ count: Int, seed: UInt64, stream: UInt32, _ lo: Float = -1, _ hi: Float = 1) -> [Float] {
        let buffer = FloatBuffer(capacity: count)
        Philox(seed: seed, purpose: .test).fillUniform(buffer.pointer, count: count, stream: stream)
        return (0..<count).map { lo + (hi - lo) * buffer.pointer[$0] }
    }

    /// The same values as `uniform`, in a buffer a layer can take as its input or gradient.
    static func uniformBuffer(_ count: Int, seed: UInt64, stream: UInt32) -> FloatBuffer {
        let buffer = FloatBuffer(capacity: count)
        for (i, v) in uniform(count, seed: seed, stream: stream).enumerated() { buffer.pointer[i] = v }
        return buffer
    }

    /// Values whose magnitude is at least `gap`, so that a step of size < gap never crosses 0
    /// (the kink of ReLU-like activations).
    static func awayFromZero(_ count: Int, seed: UInt64, stream: UInt32, gap: Float = 0.1) -> [Float] {
        uniform(count, seed: seed, stream: stream).map { $0 < 0 ? $0 * (1 - gap) - gap : $0 * (1 - gap) + gap }
    }

    /// Distinct values spaced `spacing` apart in shuffled order: no ties, and a step smaller
    /// than spacing/2 never changes which element of a window is largest.
    static func distinct(_ count: Int, seed: UInt64, spacing: Float = 0.05) -> [Float] {
        var values = (0..<count).map { Float($0 - count / 2) * spacing }
        let g = Philox(seed: seed, purpose: .test)
        for i in stride(from: count - 1, to: 0, by: -1) {
            values.swapAt(i, g.below(i + 1, index: UInt64(i), stream: 99))
        }
        return values
    }
}

/// A model's parameters filled with small random values (batch-norm gamma near 1), and its
/// running statistics with random plausible values, so that no check passes by symmetry.
func randomize(_ model: Model, seed: UInt64) {
    for (k, view) in model.parameterViews.enumerated() {
        let (lo, hi): (Float, Float) = view.role == .normWeight ? (0.5, 1.5) : (-0.5, 0.5)
        let values = TestData.uniform(view.count, seed: seed, stream: 1000 + UInt32(k), lo, hi)
        for i in 0..<view.count { model.parameters.pointer[view.offset + i] = values[i] }
    }
    for (k, view) in model.bufferViews.enumerated() where !view.isCounter {
        let (lo, hi): (Float, Float) = view.name.hasSuffix("running_var") ? (0.5, 1.5) : (-0.5, 0.5)
        let values = TestData.uniform(view.count, seed: seed, stream: 2000 + UInt32(k), lo, hi)
        for i in 0..<view.count { model.buffers.pointer[view.offset + i] = values[i] }
    }
}

/// Finite-difference check of a layer stack's input gradient and of every parameter gradient.
///
/// The loss is L = Σ r ⊙ forward(x), with r random upstream weights, accumulated in Float64
/// over the Float32 forward. Each derivative is the central difference (L(θ+h) - L(θ-h)) /
/// (θ₊ - θ₋), dividing by the step actually taken after Float32 rounding.
///
/// Step and tolerance: with h = 1e-2 the truncation error is h²/6·|L'''| ≈ 2e-5·|L'''|, and
/// the Float32 rounding of the outputs (relative 6e-8, a few hundred outputs of size ~1)
/// contributes about 1e-4 after dividing by 2h. A tensor passes when its largest error is at
/// most 1e-2·max(1, max |gradient|): an order of magnitude above both, yet far below the
/// O(1) relative error of a wrong term (a missing factor, N against N-1 for N ≤ 20, ...).
/// Inputs must keep a distance > h from kinks (ReLU at 0, ties in max-pool windows).
///
/// Layers with kinks that inputs cannot avoid (ReLUs after batch norm) set `kinks`: an
/// element whose central difference is off then passes if the forward or the backward
/// difference (one side of the step does not cross the kink) matches. That leaves the
/// check as strict away from kinks. At most 10% of a tensor's elements may need it: in a
/// residual block in training, one conv1 weight moves ~90 ReLU inputs by ~1e-3 through the
/// batch statistics, so ~7% of those weights meet a kink within h = 1e-3.
struct GradientCheck {
    var h: Float = 1e-2
    var tolerance = 1e-2
    var kinks = false

    func run(_ layers: [Layer], input shape: Shape, training: Bool, context: ForwardContext? = nil,
             x inputValues: [Float]? = nil, seed: UInt64 = 1,
             file: StaticString = #filePath, line: UInt = #line) throws {
        let model = try Model(layers: layers, inputShape: shape, maxBatch: max(shape.n, 1))
        model.layers[0].needsInputGradient = true
        randomize(model, seed: seed)
        var ctx = context ?? ForwardContext(training: training, seed: seed, step: 3)
        ctx.training = training

        let xValues = inputValues ?? TestData.uniform(shape.count, seed: seed, stream: 1)
        precondition(xValues.count == shape.count)
        let xBuffer = FloatBuffer(capacity: shape.count)
        for i in 0..<shape.count { xBuffer.pointer[i] = xValues[i] }
        let x = xBuffer.tensor(shape)
        let outShape = model.outputShape.withBatch(shape.n)
        let r = TestData.uniform(outShape.count, seed: seed, stream: 2)
        let rBuffer = FloatBuffer(capacity: outShape.count)
        for i in 0..<r.count { rBuffer.pointer[i] = r[i] }

        func loss() throws -> Double {
            let y = try model.forward(x, ctx)
            XCTAssertEqual(y.shape, outShape, file: file, line: line)
            var sum = 0.0
            for i in 0..<y.count { sum += Double(r[i]) * Double(y[i]) }
            return sum
        }

        // Analytic gradients: backward of dL/dy = r through every layer.
        _ = try loss()
        var g = rBuffer.tensor(outShape)
        for layer in model.layers.reversed() { g = try layer.backward(g, ctx) }
        let dx = (0..<shape.count).map { g[$0] }
        let dParams = (0..<model.parameterCount).map { model.gradients.pointer[$0] }

        let center = try loss()
        /// Central, forward and backward differences.
        func numeric(_ p: UnsafeMutablePointer<Float>) throws -> (central: Double, forward: Double, backward: Double) {
            let saved = p.pointee
            p.pointee = saved + h
            let plusStep = Double(p.pointee)
            let plus = try loss()
            p.pointee = saved - h
            let minusStep = Double(p.pointee)
            let minus = try loss()
            p.pointee = saved
            let x0 = Double(saved)
            return ((plus - minus) / (plusStep - minusStep), (plus - center) / (plusStep - x0), (center - minus) / (x0 - minusStep))
        }

        func compare(_ name: String, analytic: ArraySlice<Float>, at pointer: UnsafeMutablePointer<Float>) throws {
            let largest = analytic.map { abs(Double($0)) }.max() ?? 0
            let bound = tolerance * max(1, largest)
            var worst = 0.0, worstIndex = 0, oneSided = 0
            for (i, a) in analytic.enumerated() {
                let fd = try numeric(pointer + i)
                var error = abs(fd.central - Double(a))
                if kinks && error > bound {
                    error = min(abs(fd.forward - Double(a)), abs(fd.backward - Double(a)))
                    oneSided += 1
                }
                if error > worst { worst = error; worstIndex = i }
            }
            let what = "\(model.layers.map(\.summary)) \(shape) training=\(training): d\(name)"
            XCTAssertLessThanOrEqual(worst, bound, "\(what)[\(worstIndex)] off by \(worst)", file: file, line: line)
            XCTAssertLessThanOrEqual(Double(oneSided), 0.1 * Double(analytic.count), "\(what): \(oneSided) kinks", file: file, line: line)
        }

        try compare("x", analytic: dx[...], at: x.data)
        for view in model.parameterViews {
            try compare(view.name, analytic: dParams[view.offset..<(view.offset + view.count)],
                        at: model.parameters.pointer + view.offset)
        }
    }
}
