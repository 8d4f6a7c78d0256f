import DDPKernels
import DDPNet
import XCTest

/// Batch norm followed by ReLU runs fused (BatchNorm.fusesReLU): outputs, parameter
/// gradients and running statistics must be bitwise those of the two layers apart, in
/// training and in evaluation, for 2-D and 4-D inputs.
final class FusionTests: XCTestCase {
    let input = Shape(n: 6, c: 2, h: 8, w: 8)

    func layers() -> [Layer] {
        [Conv2d(inChannels: 2, outChannels: 5, kernel: 3, padding: 1), BatchNorm(features: 5), ReLU(), MaxPool2d(kernel: 2),
         Flatten(), Linear(5 * 16, 12), BatchNorm(features: 12), ReLU(), Dropout(p: 0.3), Linear(12, 4)]
    }

    func run(fused: Bool, training: Bool) throws -> (output: [Float], gradients: [Float], buffers: [Float]) {
        let model = try Model(layers: layers(), inputShape: input.withBatch(1), maxBatch: input.n, fuseLayers: fused)
        XCTAssertEqual(model.layers.compactMap { $0 as? BatchNorm }.map(\.fusesReLU), [fused, fused])
        XCTAssertEqual(model.layers.compactMap { $0 as? BatchNorm }.map(\.fusesPool), [fused, false])
        randomize(model, seed: 31)
        // Put some pre-activations exactly at 0: beta equal to minus a channel's mean would
        // be luck; a large negative beta makes most of a channel ≤ 0 instead.
        if let beta = model.parameter(named: "1.bias") { model.parameters.pointer[beta.offset] = -2 }
        let x = TestData.uniformBuffer(input.count, seed: 32, stream: 1)
        let ids: [Int32] = (0..<Int32(input.n)).map { $0 * 7 }
        return try ids.withUnsafeBufferPointer { idPointer in
            let context = ForwardContext(training: training, seed: 3, step: 2, sampleIDs: idPointer.baseAddress)
            if !training { _ = try model.forward(x.tensor(input), ForwardContext(training: true, seed: 3, step: 1, sampleIDs: idPointer.baseAddress)) }
            let y = try model.forward(x.tensor(input), context)
            let output = Array(y.buffer)
            let dy = TestData.uniformBuffer(y.count, seed: 33, stream: 2)
            try model.backward(dy.tensor(y.shape), context)
            return (output, Array(model.gradients.buffer.prefix(model.parameterCount)), Array(model.buffers.buffer))
        }
    }

    func testFusedBatchNormReLUGivesTheSameBits() throws {
        for training in [true, false] {
            let apart = try run(fused: false, training: training)
            let fused = try run(fused: true, training: training)
            func differing(_ a: [Float], _ b: [Float]) -> Int {
                a.count == b.count ? zip(a, b).filter { $0.bitPattern != $1.bitPattern }.count : max(a.count, b.count)
            }
            XCTAssertEqual(differing(fused.output, apart.output), 0, "outputs that differ, training \(training)")
            XCTAssertEqual(differing(fused.gradients, apart.gradients), 0, "gradients that differ, training \(training)")
            XCTAssertEqual(differing(fused.buffers, apart.buffers), 0, "running statistics that differ, training \(training)")
            XCTAssertTrue(apart.output.contains { $0 != 0 })
            XCTAssertTrue(apart.gradients.contains { $0 != 0 })
        }
    }

    /// Batch norm, ReLU and a 2x2 max pool (BatchNorm.fusesPool): the same bits as the three
    /// apart, on planes whose pooled rows are shorter than a vector (6x6, 10x4) and longer
    /// (28x28, 14x14), with channels that go through the batch norm's scratch in one chunk and
    /// in several (11 at 28x28: 5 + 5 + 1; 23 at 14x14: 20 + 3), in shards, training and
    /// evaluation; a pool off its fast path (odd plane, 3x3 window) does not fuse.
    func testFusedPoolGivesTheSameBits() throws {
        for (h, w, kernel, c) in [(8, 8, 2, 4), (6, 6, 2, 4), (10, 4, 2, 4), (28, 28, 2, 4), (14, 14, 2, 4), (7, 7, 2, 4), (9, 9, 3, 4),
                                  (28, 28, 2, 11), (14, 14, 2, 23)] {
            for shardSize in [nil, 2] as [Int?] {
                for training in [true, false] {
                    let shape = Shape(n: 5, c: 3, h: h, w: w)
                    func run(fused: Bool) throws -> (output: [Float], gradients: [Float], buffers: [Float], pooled: Bool) {
                        let pool = MaxPool2d(kernel: kernel)
                        let model = try Model(layers: [Conv2d(inChannels: 3, outChannels: c, kernel: 3, padding: 1), BatchNorm(features: c),
                                                       ReLU(), pool, Flatten(), Linear(pool.outputShapeFlat(h, w, channels: c), 3)],
                                              inputShape: shape.withBatch(1), maxBatch: shape.n, fuseLayers: fused)
                        randomize(model, seed: 61)
                        if let beta = model.parameter(named: "1.bias") { model.parameters.pointer[beta.offset] = -0.5 }
                        let x = TestData.uniformBuffer(shape.count, seed: 62, stream: UInt32(h))
                        let context = ForwardContext(training: training, shardSize: shardSize)
                        if !training { _ = try model.forward(x.tensor(shape), ForwardContext(training: true, shardSize: shardSize)) }
                        let y = try model.forward(x.tensor(shape), context)
                        let output = Array(y.buffer)
                        let dy = TestData.uniformBuffer(y.count, seed: 63, stream: 2)
                        try model.backward(dy.tensor(y.shape), context)
                        let norm = model.layers[1] as! BatchNorm
                        return (output, Array(model.gradients.buffer.prefix(model.parameterCount)), Array(model.buffers.buffer),
                                norm.fusesPool && pool.passesThrough)
                    }
                    let label = "\(c) channels \(h)x\(w) window \(kernel) shards \(shardSize.map(String.init) ?? "all") training \(training)"
                    let apart = try run(fused: false), fused = try run(fused: true)
                    XCTAssertFalse(apart.pooled, label)
                    XCTAssertEqual(fused.pooled, kernel == 2 && h % 2 == 0 && w % 2 == 0, label)
                    XCTAssertEqual(fused.output.map(\.bitPattern), apart.output.map(\.bitPattern), "output, \(label)")
                    XCTAssertEqual(fused.gradients.map(\.bitPattern), apart.gradients.map(\.bitPattern), "gradients, \(label)")
                    XCTAssertEqual(fused.buffers.map(\.bitPattern), apart.buffers.map(\.bitPattern), "running statistics, \(label)")
                    XCTAssertTrue(apart.gradients.contains { $0 != 0 }, label)
                }
            }
        }
    }

    /// A batch norm right after a convolution runs that convolution's gradients a group of
    /// samples at a time (BatchNorm.handsGradients): the same bits as the layers apart, for
    /// the direct kernels at stride 1 and 2 and Winograd's, with and without bias, in groups
    /// of one sample (28x28) and of several (7x7), in shards, with and without an input
    /// gradient to take (a first layer's convolution, or one behind another), with and without
    /// a ReLU after the batch norm; rows of 8 or more (28, 16, 14, 9, 8) go straight into the
    /// convolution's padded output gradient (`Conv2d.handedGradientRows`); a convolution
    /// whose input gradient needs the whole batch (32 -> 4: Winograd forward, direct input
    /// gradient) runs its own.
    func testBatchNormRunsTheConvolutionsGradients() throws {
        let cases: [(inC: Int, outC: Int, size: Int, stride: Int, hands: Bool)] = [
            (4, 8, 28, 1, true), (4, 8, 16, 1, true), (4, 8, 8, 1, true), (4, 8, 7, 1, true), (4, 8, 9, 2, true),
            (4, 8, 18, 2, true), (32, 32, 7, 1, true),
            (32, 32, 14, 1, true), (32, 4, 7, 1, false),
        ]
        for t in cases {
            for (bias, relu) in [(true, true), (false, true), (false, false)] {
                for shardSize in [nil, 3] as [Int?] {
                    for behind in [false, true] {
                        let shape = Shape(n: 7, c: t.inC, h: t.size, w: t.size), out = (t.size + t.stride - 1) / t.stride
                        func run(fused: Bool) throws -> (output: [Float], gradients: [Float], hands: Bool) {
                            let conv = Conv2d(inChannels: t.inC, outChannels: t.outC, kernel: 3, stride: t.stride, padding: 1, bias: bias)
                            let norm = BatchNorm(features: t.outC)
                            let front: [Layer] = behind
                                ? [Conv2d(inChannels: t.inC, outChannels: t.inC, kernel: 3, padding: 1), BatchNorm(features: t.inC), ReLU()] : []
                            let model = try Model(layers: front + [conv, norm] + (relu ? [ReLU()] : []) + [Flatten(), Linear(t.outC * out * out, 3)],
                                                  inputShape: shape.withBatch(1), maxBatch: shape.n, fuseLayers: fused)
                            randomize(model, seed: 71)
                            let x = TestData.uniformBuffer(shape.count, seed: 72, stream: UInt32(t.size))
                            let context = ForwardContext(training: true, shardSize: shardSize)
                            let y = try model.forward(x.tensor(shape), context)
                            let dy = TestData.uniformBuffer(y.count, seed: 73, stream: 2)
                            try model.backward(dy.tensor(y.shape), context)
                            return (Array(y.buffer), Array(model.gradients.buffer.prefix(model.parameterCount)), norm.handsGradients)
                        }
                        let label = "\(t.inC) -> \(t.outC) at \(t.size)x\(t.size) stride \(t.stride) bias \(bias) ReLU \(relu)"
                            + " shards \(shardSize.map(String.init) ?? "all") behind a convolution \(behind)"
                        let apart = try run(fused: false), fused = try run(fused: true)
                        XCTAssertFalse(apart.hands, label)
                        XCTAssertEqual(fused.hands, t.hands || !behind, label)
                        XCTAssertEqual(fused.output.map(\.bitPattern), apart.output.map(\.bitPattern), "output, \(label)")
                        XCTAssertEqual(fused.gradients.map(\.bitPattern), apart.gradients.map(\.bitPattern), "gradients, \(label)")
                        XCTAssertTrue(apart.gradients.prefix(t.inC * t.inC * 9).contains { $0 != 0 }, label)
                    }
                }
            }
        }
    }

    /// A batch norm and ReLU (and a fused 2x2 pool) write the next convolution's prepared
    /// input (BatchNorm.writesPreparedInput) where it is a stride-1 direct (4 -> 8) or
    /// Winograd (32 -> 8) one: output, gradients and running statistics bitwise those of the
    /// layers apart, in training and evaluation, for a full batch and a smaller one; a
    /// stride-2 convolution does not take its input prepared, nor does a pool write pooled
    /// rows under 8 wide into it (5x5).
    func testBatchNormWritesTheNextConvolutionsPreparedInput() throws {
        for (c, size, stride, pooled, writes) in [(4, 9, 1, false, true), (32, 7, 1, false, true), (4, 9, 2, false, false),
                                                  (4, 16, 1, true, true), (32, 18, 1, true, true), (4, 10, 1, true, false)] {
            for training in [true, false] {
                for n in [5, 3] {
                    let shape = Shape(n: n, c: 3, h: size, w: size)
                    let inner = pooled ? size / 2 : size, out = (inner + stride - 1) / stride
                    func run(fused: Bool) throws -> (output: [Float], gradients: [Float], buffers: [Float], writes: Bool) {
                        let norm = BatchNorm(features: c)
                        let model = try Model(layers: [Conv2d(inChannels: 3, outChannels: c, kernel: 3, padding: 1), norm, ReLU()]
                                                       + (pooled ? [MaxPool2d(kernel: 2)] : []) + [
                                                       Conv2d(inChannels: c, outChannels: 8, kernel: 3, stride: stride, padding: 1),
                                                       BatchNorm(features: 8), ReLU(), Flatten(), Linear(8 * out * out, 3)],
                                              inputShape: shape.withBatch(1), maxBatch: 5, fuseLayers: fused)
                        randomize(model, seed: 81)
                        if let beta = model.parameter(named: "1.bias") { model.parameters.pointer[beta.offset] = -0.5 }
                        let x = TestData.uniformBuffer(shape.count, seed: 82, stream: UInt32(c))
                        let context = ForwardContext(training: training)
                        if !training { _ = try model.forward(x.tensor(shape), ForwardContext(training: true)) }
                        let y = try model.forward(x.tensor(shape), context)
                        let output = Array(y.buffer)
                        let dy = TestData.uniformBuffer(y.count, seed: 83, stream: 2)
                        try model.backward(dy.tensor(y.shape), context)
                        return (output, Array(model.gradients.buffer.prefix(model.parameterCount)), Array(model.buffers.buffer),
                                norm.writesPreparedInput)
                    }
                    let label = "\(c) -> 8 at \(inner)x\(inner) stride \(stride), pooled \(pooled), batch \(n), training \(training)"
                    let apart = try run(fused: false), fused = try run(fused: true)
                    XCTAssertFalse(apart.writes, label)
                    XCTAssertEqual(fused.writes, writes, label)
                    XCTAssertEqual(fused.output.map(\.bitPattern), apart.output.map(\.bitPattern), "output, \(label)")
                    XCTAssertEqual(fused.gradients.map(\.bitPattern), apart.gradients.map(\.bitPattern), "gradients, \(label)")
                    XCTAssertEqual(fused.buffers.map(\.bitPattern), apart.buffers.map(\.bitPattern), "running statistics, \(label)")
                    XCTAssertTrue(apart.gradients.contains { $0 != 0 } && apart.output.contains { $0 != 0 }, label)
                }
            }
        }
    }

    /// The batch norm and ReLU inside a residual block fuse too.
    func testResidualBlockFusesItsBatchNormReLU() throws {
        let shape = Shape(n: 4, c: 3, h: 6, w: 6)
        func run(fused: Bool) throws -> (output: [Float], gradients: [Float]) {
            let model = try Model(layers: [ResidualBlock(inChannels: 3, outChannels: 4, stride: 2), GlobalAvgPool2d(), Linear(4, 3)],
                                  inputShape: shape.withBatch(1), maxBatch: shape.n, fuseLayers: fused)
            randomize(model, seed: 41)
            let x = TestData.uniformBuffer(shape.count, seed: 42, stream: 1)
            let context = ForwardContext(training: true)
            let y = try model.forward(x.tensor(shape), context)
            let output = Array(y.buffer)
            let dy = TestData.uniformBuffer(y.count, seed: 43, stream: 2)
            try model.backward(dy.tensor(y.shape), context)
            return (output, Array(model.gradients.buffer.prefix(model.parameterCount)))
        }
        let apart = try run(fused: false), fused = try run(fused: true)
        XCTAssertEqual(fused.output.map(\.bitPattern), apart.output.map(\.bitPattern))
        XCTAssertEqual(fused.gradients.map(\.bitPattern), apart.gradients.map(\.bitPattern))
        XCTAssertTrue(apart.gradients.contains { $0 != 0 })
    }
}

extension FusionTests {
    /// A residual block ends in its neighbours' passes (bn2 adds the skip and applies the
    /// ReLU; conv1 adds the skip's gradient into its input gradient): output, input gradient
    /// and parameter gradients must be bitwise those of its layers run apart with a separate
    /// add. The direct kernels add in their own pass (4 -> 4; 4 -> 8 stride 2 on odd and
    /// even planes), Winograd's after each group's input gradient (32 -> 32, 4 samples: a
    /// group of 3 and one of 1), the GEMM path after it (3 -> 3).
    func testResidualBlockIsItsLayersApart() throws {
        let cases: [(inC: Int, outC: Int, stride: Int, shape: Shape)] = [
            (4, 4, 1, Shape(n: 3, c: 4, h: 6, w: 7)), (4, 8, 2, Shape(n: 3, c: 4, h: 9, w: 10)),
            (32, 32, 1, Shape(n: 4, c: 32, h: 6, w: 6)), (3, 3, 1, Shape(n: 2, c: 3, h: 5, w: 5)),
        ]
        for (k, t) in cases.enumerated() {
            let name = "block \(t.inC) -> \(t.outC), stride \(t.stride), input \(t.shape)"
            let block = try Model(layers: [ResidualBlock(inChannels: t.inC, outChannels: t.outC, stride: t.stride)],
                                  inputShape: t.shape.withBatch(1), maxBatch: t.shape.n)
            block.layers[0].needsInputGradient = true
            randomize(block, seed: 50 + UInt64(k))
            let main = try Model(layers: [
                Conv2d(inChannels: t.inC, outChannels: t.outC, kernel: 3, stride: t.stride, padding: 1, bias: false),
                BatchNorm(features: t.outC), ReLU(),
                Conv2d(inChannels: t.outC, outChannels: t.outC, kernel: 3, padding: 1, bias: false), BatchNorm(features: t.outC),
            ], inputShape: t.shape.withBatch(1), maxBatch: t.shape.n)
            let projects = t.stride != 1 || t.inC != t.outC
            let skip = projects ? try Model(layers: [
                Conv2d(inChannels: t.inC, outChannels: t.outC, kernel: 1, stride: t.stride, bias: false), BatchNorm(features: t.outC),
            ], inputShape: t.shape.withBatch(1), maxBatch: t.shape.n) : nil
            // The block's parameters under the apart layers' names.
            let names = ["conv1.weight": (main, "0.weight"), "bn1.weight": (main, "1.weight"), "bn1.bias": (main, "1.bias"),
                         "conv2.weight": (main, "3.weight"), "bn2.weight": (main, "4.weight"), "bn2.bias": (main, "4.bias")]
                .merging(skip.map { ["downsample.0.weight": ($0, "0.weight"), "downsample.1.weight": ($0, "1.weight"),
                                     "downsample.1.bias": ($0, "1.bias")] } ?? [:]) { a, _ in a }
            XCTAssertEqual(block.parameterViews.count, names.count, name)
            for view in block.parameterViews {
                let own = String(view.name.dropFirst(2))
                guard let (model, apartName) = names[own], let apart = model.parameter(named: apartName) else {
                    XCTFail("\(name): no apart parameter for \(view.name)"); continue
                }
                (model.parameters.pointer + apart.offset).update(from: block.parameters.pointer + view.offset, count: view.count)
            }
            for model in [main] + (skip.map { [$0] } ?? []) { model.layers[0].needsInputGradient = true }

            // The buffers stay bound to names: a tensor only points into its buffer.
            let xBuffer = TestData.uniformBuffer(t.shape.count, seed: 60 + UInt64(k), stream: 1)
            let x = xBuffer.tensor(t.shape)
            let context = ForwardContext(training: true)
            let y = try block.forward(x, context)
            let h = try main.forward(x, context), s = try skip?.forward(x, context) ?? x
            let expected = (0..<y.count).map { max(h[$0] + s[$0], 0) }
            XCTAssertEqual((0..<y.count).map { y[$0].bitPattern }, expected.map(\.bitPattern), "output, " + name)
            XCTAssertTrue(expected.contains { $0 > 0 } && expected.contains { $0 == 0 }, name)

            let dyBuffer = TestData.uniformBuffer(y.count, seed: 70 + UInt64(k), stream: 2)
            let dx = try block.layers[0].backward(dyBuffer.tensor(y.shape), context)
            let gBuffer = FloatBuffer(capacity: y.count)
            for i in 0..<y.count { gBuffer.pointer[i] = expected[i] > 0 ? dyBuffer.pointer[i] : 0 }
            func backward(_ model: Model) throws -> Tensor {
                var g = gBuffer.tensor(y.shape)
                for layer in model.layers.reversed() { g = try layer.backward(g, context) }
                return g
            }
            let dMain = try backward(main), dSkip = try skip.map(backward) ?? gBuffer.tensor(y.shape)
            XCTAssertEqual((0..<dx.count).map { dx[$0].bitPattern }, (0..<dx.count).map { (dMain[$0] + dSkip[$0]).bitPattern },
                           "input gradient, " + name)
            for view in block.parameterViews {
                guard let (model, apartName) = names[String(view.name.dropFirst(2))], let apart = model.parameter(named: apartName) else { continue }
                let own = (0..<view.count).map { block.gradients.pointer[view.offset + $0].bitPattern }
                let other = (0..<view.count).map { model.gradients.pointer[apart.offset + $0].bitPattern }
                XCTAssertEqual(own, other, "gradient of \(view.name), " + name)
            }
            withExtendedLifetime((xBuffer, dyBuffer, gBuffer)) {}
        }
    }
}

private extension MaxPool2d {
    /// Features after this pool (floor mode, no padding) of `channels` planes h x w.
    func outputShapeFlat(_ h: Int, _ w: Int, channels: Int) -> Int {
        channels * ((h - kernel) / stride + 1) * ((w - kernel) / stride + 1)
    }
}
