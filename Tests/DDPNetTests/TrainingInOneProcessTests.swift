import DDPKernels
import DDPNet
import XCTest

/// The pieces together in one process: model, loss, backward, optimizer.
final class TrainingInOneProcessTests: XCTestCase {
    /// Four Gaussian clusters in 8 dimensions; a small MLP with batch norm and dropout fits
    /// them until the loss is near zero.
    func testSmallNetDrivesSyntheticLossNearZero() throws {
        let n = 256, features = 8, classes = 4
        let x = FloatBuffer(capacity: n * features)
        let labels = UnsafeMutablePointer<Int32>.allocate(capacity: n)
        let ids = UnsafeMutablePointer<Int32>.allocate(capacity: n)
        defer { labels.deallocate(); ids.deallocate() }
        let noise = DoubleBuffer(capacity: n * features)
        Philox(seed: 5, purpose: .test).fillNormal(noise.pointer, count: n * features, stream: 1)
        for i in 0..<n {
            let label = i % classes
            labels[i] = Int32(label)
            ids[i] = Int32(i)
            for j in 0..<features {
                let centre: Float = (j % classes == label) ? 2 : -0.5
                x.pointer[i * features + j] = centre + Float(noise.pointer[i * features + j]) * 0.5
            }
        }
        let model = try Model(layers: [Linear(features, 32, bias: false), BatchNorm(features: 32), ReLU(), Dropout(p: 0.1), Linear(32, classes)],
                              inputShape: Shape(n: 1, features: features), maxBatch: n)
        _ = try model.initialize(.default, seed: 3)
        let loss = SoftmaxCrossEntropy(classes: classes, maxBatch: n)
        let optimizer = try makeOptimizer(OptimizerConfig(kind: .sgd, momentum: 0.9, weightDecay: 1e-4), for: model)
        var first = 0.0, last = 0.0
        for step in 0..<300 {
            let context = ForwardContext(training: true, seed: 1, step: step, sampleIDs: ids)
            let result = loss(try model.forward(x.tensor(Shape(n: n, features: features)), context), labels: labels)
            try model.backward(result.gradient, context)
            for i in 0..<model.parameterCount { model.gradients.pointer[i] /= Float(n) }
            optimizer.step(parameters: model.parameters.pointer, gradients: model.gradients.pointer, learningRate: 0.1)
            if step == 0 { first = result.lossSum / Double(n) }
            last = result.lossSum / Double(n)
        }
        XCTAssertGreaterThan(first, 1.0, "starts near log(4)")
        XCTAssertLessThan(last, 0.05, "training loss after 300 steps")
        // Evaluation mode (running statistics, no dropout) classifies every sample.
        let result = loss(try model.forward(x.tensor(Shape(n: n, features: features)), ForwardContext(training: false)), labels: labels)
        XCTAssertEqual(result.correct, n)
    }

    /// Weight decay changes conv and linear weights only, never biases or batch-norm gamma
    /// and beta, with the real BatchNorm layer.
    func testWeightDecayLeavesBiasesAndBatchNormAlone() throws {
        let model = try Model(layers: [Conv2d(inChannels: 2, outChannels: 3, kernel: 3, bias: true), BatchNorm(features: 3), Flatten(),
                                       Linear(12, 5), BatchNorm(features: 5)],
                              inputShape: Shape(n: 1, c: 2, h: 4, w: 4), maxBatch: 2)
        _ = try model.initialize(.normal(mean: 0, std: 1), seed: 2)
        for v in model.parameterViews where v.role == .normWeight || v.role == .normBias || v.role == .bias {
            for i in 0..<v.count { model.parameters.pointer[v.offset + i] = 0.5 }
        }
        let before = Array(model.parameterBuffer)
        model.gradients.zero()
        for kind in [OptimizerKind.sgd, .adam, .adamw] {
            let optimizer = try makeOptimizer(OptimizerConfig(kind: kind, momentum: 0.9, weightDecay: 0.1), for: model)
            model.parameterBuffer.update(fromContentsOf: before)
            optimizer.step(parameters: model.parameters.pointer, gradients: model.gradients.pointer, learningRate: 0.1)
            for v in model.parameterViews {
                let moved = (0..<v.count).contains { model.parameters.pointer[v.offset + $0] != before[v.offset + $0] }
                XCTAssertEqual(moved, v.role == .weight, "\(kind) \(v.name) (\(v.role))")
            }
        }
    }
}
