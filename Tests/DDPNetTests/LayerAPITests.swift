import DDPKernels
import DDPNet
import XCTest

/// Shapes, PyTorch summaries, state-dict names and configuration errors.
final class LayerAPITests: XCTestCase {
    func testSummaries() {
        XCTAssertEqual(MaxPool2d(kernel: 2).summary, "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)")
        XCTAssertEqual(AvgPool2d(kernel: 3, stride: 2, padding: 1).summary, "AvgPool2d(kernel_size=3, stride=2, padding=1)")
        XCTAssertEqual(GlobalAvgPool2d().summary, "AdaptiveAvgPool2d(output_size=1)")
        XCTAssertEqual(LeakyReLU().summary, "LeakyReLU(negative_slope=0.01)")
        XCTAssertEqual(ELU().summary, "ELU(alpha=1.0)")
        XCTAssertEqual(SELU().summary, "SELU()")
        XCTAssertEqual(GELU().summary, "GELU(approximate='none')")
        XCTAssertEqual(Tanh().summary, "Tanh()")
        XCTAssertEqual(Sigmoid().summary, "Sigmoid()")
        XCTAssertEqual(ResidualBlock(inChannels: 32, outChannels: 64, stride: 2).summary, "BasicBlock(32, 64, stride=2)")
    }

    func testPoolingShapes() throws {
        // Floor mode, as PyTorch.
        XCTAssertEqual(try MaxPool2d(kernel: 2).outputShape(for: Shape(n: 3, c: 4, h: 7, w: 6)), Shape(n: 3, c: 4, h: 3, w: 3))
        XCTAssertEqual(try MaxPool2d(kernel: 3, stride: 2, padding: 1).outputShape(for: Shape(n: 1, c: 1, h: 8, w: 7)), Shape(n: 1, c: 1, h: 4, w: 4))
        XCTAssertEqual(try AvgPool2d(kernel: 2, stride: 1).outputShape(for: Shape(n: 1, c: 2, h: 3, w: 5)), Shape(n: 1, c: 2, h: 2, w: 4))
        XCTAssertEqual(try GlobalAvgPool2d().outputShape(for: Shape(n: 5, c: 6, h: 3, w: 3)), Shape(n: 5, c: 6, h: 1, w: 1))
        XCTAssertThrowsError(try MaxPool2d(kernel: 2, padding: 2).outputShape(for: Shape(n: 1, c: 1, h: 8, w: 8)))
        XCTAssertThrowsError(try AvgPool2d(kernel: 2).outputShape(for: Shape(n: 1, features: 8)))
    }

    func testPoolingValues() throws {
        // One 4x4 plane; AvgPool with padding divides by k*k (count_include_pad=True).
        let x = FloatBuffer(capacity: 16)
        for i in 0..<16 { x.pointer[i] = Float(i) }
        let shape = Shape(n: 1, c: 1, h: 4, w: 4)
        let maxModel = try Model(layers: [MaxPool2d(kernel: 2)], inputShape: shape, maxBatch: 1)
        XCTAssertEqual(Array(try maxModel.forward(x.tensor(shape), ForwardContext(training: false)).buffer), [5, 7, 13, 15])
        let avgModel = try Model(layers: [AvgPool2d(kernel: 3, stride: 2, padding: 1)], inputShape: shape, maxBatch: 1)
        let y = Array(try avgModel.forward(x.tensor(shape), ForwardContext(training: false)).buffer)
        let windowSums: [Float] = [0 + 1 + 4 + 5, 1 + 2 + 3 + 5 + 6 + 7, 4 + 5 + 8 + 9 + 12 + 13, 5 + 6 + 7 + 9 + 10 + 11 + 13 + 14 + 15]
        for (value, sum) in zip(y, windowSums) { XCTAssertEqual(value, sum / 9, accuracy: 1e-5) }

    }

    func testMaxPoolTiesGoToTheFirstMaximum() throws {
        // Width 18 has 9 windows per row: eight through the vector loop, one scalar.
        for pool in [MaxPool2d(kernel: 2), MaxPool2d(kernel: 3, stride: 3)] {
            let shape = Shape(n: 1, c: 1, h: 6, w: 18)
            let x = FloatBuffer(capacity: shape.count)
            x.pointer.update(repeating: 1, count: shape.count)
            let model = try Model(layers: [pool], inputShape: shape, maxBatch: 1)
            pool.needsInputGradient = true
            let context = ForwardContext(training: true)
            let out = try model.forward(x.tensor(shape), context)
            let dy = FloatBuffer(capacity: out.count)
            dy.pointer.update(repeating: 1, count: out.count)
            let dx = try pool.backward(dy.tensor(out.shape), context)
            for iy in 0..<shape.h {
                for ix in 0..<shape.w {
                    let first = iy % pool.kernel == 0 && ix % pool.kernel == 0
                    XCTAssertEqual(dx[iy * shape.w + ix], first ? 1 : 0, "\(pool.summary) at (\(iy), \(ix))")
                }
            }
        }
    }

    func testResidualBlockStateDictNames() throws {
        let projection = try Model(layers: [ResidualBlock(inChannels: 3, outChannels: 8, stride: 2)],
                                   inputShape: Shape(n: 1, c: 3, h: 8, w: 8), maxBatch: 2)
        XCTAssertEqual(projection.outputShape, Shape(n: 1, c: 8, h: 4, w: 4))
        XCTAssertEqual(projection.parameterViews.map(\.name), [
            "0.conv1.weight", "0.bn1.weight", "0.bn1.bias", "0.conv2.weight", "0.bn2.weight", "0.bn2.bias",
            "0.downsample.0.weight", "0.downsample.1.weight", "0.downsample.1.bias",
        ])
        XCTAssertEqual(projection.parameterViews.map(\.shape), [[8, 3, 3, 3], [8], [8], [8, 8, 3, 3], [8], [8], [8, 3, 1, 1], [8], [8]])
        XCTAssertEqual(projection.bufferViews.map(\.name), ["bn1", "bn2", "downsample.1"].flatMap { p in
            ["running_mean", "running_var", "num_batches_tracked"].map { "0.\(p).\($0)" }
        })
        let identity = try Model(layers: [ResidualBlock(inChannels: 4, outChannels: 4)],
                                 inputShape: Shape(n: 1, c: 4, h: 5, w: 5), maxBatch: 2)
        XCTAssertEqual(identity.parameterViews.count, 6)
        XCTAssertEqual(identity.outputShape, Shape(n: 1, c: 4, h: 5, w: 5))
    }

    /// The first layer skips its input gradient (Model sets needsInputGradient = false);
    /// its parameter gradients must not change.
    func testSkippingTheInputGradientKeepsParameterGradients() throws {
        let cases: [(make: () -> Layer, shape: Shape)] = [
            ({ Conv2d(inChannels: 3, outChannels: 4, kernel: 3, stride: 2, padding: 1) }, Shape(n: 2, c: 3, h: 6, w: 5)),
            ({ Conv2d(inChannels: 3, outChannels: 4, kernel: 1) }, Shape(n: 2, c: 3, h: 3, w: 3)),
            ({ BatchNorm(features: 3) }, Shape(n: 2, c: 3, h: 2, w: 2)),
            ({ ResidualBlock(inChannels: 3, outChannels: 4, stride: 2) }, Shape(n: 2, c: 3, h: 5, w: 5)),
            ({ Linear(12, 5) }, Shape(n: 3, c: 3, h: 2, w: 2)),
        ]
        for t in cases {
            var gradients: [[Float]] = []
            for needsInputGradient in [true, false] {
                let layer = t.make()
                let model = try Model(layers: [layer], inputShape: t.shape.withBatch(1), maxBatch: t.shape.n)
                layer.needsInputGradient = needsInputGradient
                randomize(model, seed: 5)
                let x = TestData.uniformBuffer(t.shape.count, seed: 5, stream: 1)
                let context = ForwardContext(training: true)
                let y = try model.forward(x.tensor(t.shape), context)
                let dy = TestData.uniformBuffer(y.count, seed: 5, stream: 2)
                try model.backward(dy.tensor(y.shape), context)
                gradients.append(Array(model.gradients.buffer.prefix(model.parameterCount)))
            }
            XCTAssertEqual(gradients[0], gradients[1], t.make().summary)
        }
    }
}
