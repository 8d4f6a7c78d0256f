import DDPKernels
import DDPNet
import XCTest

/// Batch-norm-like parameters (gamma: .normWeight, beta: .normBias) without the batch norm,
/// so that these tests do not depend on the BatchNorm layer.
private final class Affine: Layer {
    let features: Int
    var needsInputGradient = true
    init(_ features: Int) { self.features = features }
    var summary: String { "Affine(\(features))" }
    func outputShape(for input: Shape) throws -> Shape { input }
    func configure(input: Shape, maxBatch: Int, index: Int) throws {}
    var parameterSpecs: [ParameterSpec] {
        [ParameterSpec(name: "weight", shape: [features], role: .normWeight, fanIn: 1, fanOut: 1),
         ParameterSpec(name: "bias", shape: [features], role: .normBias, fanIn: 1, fanOut: 1)]
    }
    func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor { x }
    func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor { dy }
}

final class OptimizerTests: XCTestCase {
    /// 0.weight [2, 3], 0.bias [2], 1.weight [2] (gamma), 1.bias [2] (beta), 2.weight [2, 2],
    /// 2.bias [2]: 18 parameters, of which 10 are decayed weights.
    func model() throws -> Model {
        let model = try Model(layers: [Linear(3, 2), Affine(2), Linear(2, 2)], inputShape: Shape(n: 1, features: 3), maxBatch: 1)
        for i in 0..<model.parameterCount { model.parameters.pointer[i] = Float(i % 7) * 0.25 - 0.8 }
        return model
    }

    /// Per element: whether weight decay applies (role .weight), written out from the layout above.
    let decayed: [Bool] = Array(repeating: true, count: 6) + Array(repeating: false, count: 6)
        + Array(repeating: true, count: 4) + Array(repeating: false, count: 2)

    /// Fixed gradients for steps 0, 1, 2, zero included.
    func gradient(step: Int, _ i: Int) -> Float { Float((i * 7 + step * 3) % 11 - 5) / 10 }
    let rates: [Float] = [0.1, 0.05, 0.02]

    /// Runs three steps, returning the parameters after them.
    func run(_ optimizer: Optimizer, _ model: Model) -> [Float] {
        for step in 0..<3 {
            for i in 0..<model.parameterCount { model.gradients.pointer[i] = gradient(step: step, i) }
            optimizer.step(parameters: model.parameters.pointer, gradients: model.gradients.pointer, learningRate: rates[step])
        }
        return Array(model.parameterBuffer)
    }

    func initial(_ model: Model) -> [Double] { model.parameterBuffer.map(Double.init) }

    func assertClose(_ actual: [Float], _ expected: [Double], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(actual.count, expected.count, file: file, line: line)
        for (i, (a, e)) in zip(actual, expected).enumerated() {
            XCTAssertEqual(Double(a), e, accuracy: 1e-6, "element \(i)", file: file, line: line)
        }
    }

    /// torch.optim.SGD by hand: d = g + wd·p; b = d on the first step, then μ·b + d;
    /// update b (or d + μ·b with Nesterov); p -= lr·update.
    func expectedSGD(_ p0: [Double], momentum mu: Double, nesterov: Bool, weightDecay: Double) -> [Double] {
        var p = p0, b = [Double](repeating: 0, count: p.count)
        for step in 0..<3 {
            let lr = Double(rates[step])
            for i in p.indices {
                let d = Double(gradient(step: step, i)) + (decayed[i] ? weightDecay : 0) * p[i]
                if mu == 0 { p[i] -= lr * d; continue }
                b[i] = step == 0 ? d : mu * b[i] + d
                p[i] -= lr * (nesterov ? d + mu * b[i] : b[i])
            }
        }
        return p
    }

    /// torch.optim.Adam / AdamW by hand, with the bias-corrected moments written out.
    func expectedAdam(_ p0: [Double], weightDecay: Double, decoupled: Bool) -> [Double] {
        let b1 = 0.9, b2 = 0.999, eps = 1e-8
        var p = p0, m = [Double](repeating: 0, count: p.count), v = m
        for step in 0..<3 {
            let lr = Double(rates[step]), t = Double(step + 1)
            for i in p.indices {
                let wd = decayed[i] ? weightDecay : 0
                var g = Double(gradient(step: step, i))
                if decoupled { p[i] *= 1 - lr * wd } else { g += wd * p[i] }
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                let mHat = m[i] / (1 - pow(b1, t)), vHat = v[i] / (1 - pow(b2, t))
                p[i] -= lr * mHat / (vHat.squareRoot() + eps)
            }
        }
        return p
    }

    func testPlainSGD() throws {
        let model = try model(), p0 = initial(model)
        let sgd = try makeOptimizer(OptimizerConfig(kind: .sgd, weightDecay: 0.1), for: model)
        XCTAssertEqual(sgd.slotNames, [])
        assertClose(run(sgd, model), expectedSGD(p0, momentum: 0, nesterov: false, weightDecay: 0.1))
    }

    func testMomentumSGD() throws {
        let model = try model(), p0 = initial(model)
        let sgd = try makeOptimizer(OptimizerConfig(kind: .sgd, momentum: 0.9, weightDecay: 0.1), for: model)
        XCTAssertEqual(sgd.slotNames, ["momentum_buffer"])
        assertClose(run(sgd, model), expectedSGD(p0, momentum: 0.9, nesterov: false, weightDecay: 0.1))
    }

    func testNesterovSGD() throws {
        let model = try model(), p0 = initial(model)
        let sgd = try makeOptimizer(OptimizerConfig(kind: .sgd, momentum: 0.9, nesterov: true, weightDecay: 0.1), for: model)
        assertClose(run(sgd, model), expectedSGD(p0, momentum: 0.9, nesterov: true, weightDecay: 0.1))
    }

    func testAdam() throws {
        let model = try model(), p0 = initial(model)
        let adam = try makeOptimizer(OptimizerConfig(kind: .adam, weightDecay: 0.1), for: model)
        XCTAssertEqual(adam.slotNames, ["exp_avg", "exp_avg_sq"])
        assertClose(run(adam, model), expectedAdam(p0, weightDecay: 0.1, decoupled: false))
        XCTAssertEqual(adam.stepCount, 3)
    }

    func testAdamW() throws {
        let model = try model(), p0 = initial(model)
        let adamw = try makeOptimizer(OptimizerConfig(kind: .adamw, weightDecay: 0.1), for: model)
        assertClose(run(adamw, model), expectedAdam(p0, weightDecay: 0.1, decoupled: true))
    }

    /// With zero gradients only weight decay moves anything: weights change; biases and
    /// gamma/beta keep their exact bits under every optimizer.
    func testWeightDecayTouchesOnlyWeights() throws {
        let configs = [
            OptimizerConfig(kind: .sgd, weightDecay: 0.5), OptimizerConfig(kind: .sgd, momentum: 0.9, nesterov: true, weightDecay: 0.5),
            OptimizerConfig(kind: .adam, weightDecay: 0.5), OptimizerConfig(kind: .adamw, weightDecay: 0.5),
        ]
        for config in configs {
            let model = try model(), before = Array(model.parameterBuffer)
            let optimizer = try makeOptimizer(config, for: model)
            model.gradients.zero()
            for _ in 0..<3 { optimizer.step(parameters: model.parameters.pointer, gradients: model.gradients.pointer, learningRate: 0.1) }
            let after = Array(model.parameterBuffer)
            for view in model.parameterViews {
                for i in view.offset..<(view.offset + view.count) where before[i] != 0 {
                    if view.role == .weight {
                        XCTAssertNotEqual(after[i], before[i], "\(config.kind) \(view.name)")
                    } else {
                        XCTAssertEqual(after[i].bitPattern, before[i].bitPattern, "\(config.kind) \(view.name)")
                    }
                }
            }
        }
    }

    func testStateLayoutAndNames() throws {
        let model = try model()
        let adam = try makeOptimizer(OptimizerConfig(kind: .adam), for: model)
        XCTAssertEqual(adam.state.capacity, 2 * model.parameterCount)
        _ = run(adam, model)
        let view = model.parameter(named: "2.weight")!
        XCTAssertEqual(adam.stateName(slot: 1, of: view), "optim.2.weight.exp_avg_sq")
        XCTAssertEqual(adam.slot(1, of: view), adam.state.pointer + model.parameterCount + view.offset)
        // exp_avg after three steps: 0.9·(0.9·0.1·g0 + 0.1·g1) + 0.1·g2, by hand.
        let i = view.offset
        let g = (0..<3).map { Double(gradient(step: $0, i)) }
        let expAvg = withExtendedLifetime(adam) { Double(adam.slot(0, of: view)[0]) }
        XCTAssertEqual(expAvg, 0.081 * g[0] + 0.09 * g[1] + 0.1 * g[2], accuracy: 1e-7)
    }

    /// Restoring the state buffer and the step count resumes bit for bit (DESIGN I4).
    func testRestoredStateResumesBitwise() throws {
        for config in [OptimizerConfig(kind: .sgd, momentum: 0.9, weightDecay: 0.1), OptimizerConfig(kind: .adamw, weightDecay: 0.1)] {
            let straight = try model()
            let expected = run(try makeOptimizer(config, for: straight), straight)

            let first = try model()
            let optimizer = try makeOptimizer(config, for: first)
            for step in 0..<2 {
                for i in 0..<first.parameterCount { first.gradients.pointer[i] = gradient(step: step, i) }
                optimizer.step(parameters: first.parameters.pointer, gradients: first.gradients.pointer, learningRate: rates[step])
            }
            let resumed = try makeOptimizer(config, for: first)
            resumed.state.pointer.update(from: optimizer.state.pointer, count: optimizer.state.capacity)
            resumed.stepCount = optimizer.stepCount
            for i in 0..<first.parameterCount { first.gradients.pointer[i] = gradient(step: 2, i) }
            resumed.step(parameters: first.parameters.pointer, gradients: first.gradients.pointer, learningRate: rates[2])
            let resumedBits = withExtendedLifetime(first) { first.parameterBuffer.map(\.bitPattern) }
            XCTAssertEqual(resumedBits, expected.map(\.bitPattern), "\(config.kind)")
        }
    }

    func testInvalidSettingsAreRejected() throws {
        let model = try model()
        let bad = [
            OptimizerConfig(kind: .sgd, nesterov: true), OptimizerConfig(kind: .sgd, momentum: -0.1),
            OptimizerConfig(kind: .adam, beta1: 1), OptimizerConfig(kind: .adamw, weightDecay: -1),
        ]
        for config in bad { XCTAssertThrowsError(try makeOptimizer(config, for: model), "\(config)") }
    }
}
