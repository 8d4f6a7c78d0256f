import DDPKernels
import DDPNet
import XCTest

/// Conv2d's direct 3x3 kernels (padding 1, stride 1 or 2, a multiple of 4 output channels)
/// against its im2col + GEMM path, finite differences on the direct path, and the promise
/// that a sample's forward output depends on that sample alone, bit for bit.
final class DirectConvTests: XCTestCase {
    struct Results { var y: [Float]; var gradients: [Float]; var dx: [Float] }

    /// Forward, then backward of a fixed output gradient, through one convolution.
    func run(_ algorithm: Conv2d.Algorithm, inChannels: Int, outChannels: Int, stride: Int = 1, bias: Bool, shape: Shape) throws -> Results {
        let conv = Conv2d(inChannels: inChannels, outChannels: outChannels, kernel: 3, stride: stride, padding: 1, bias: bias,
                          algorithm: algorithm)
        let model = try Model(layers: [conv], inputShape: shape, maxBatch: shape.n)
        randomize(model, seed: 5)
        conv.needsInputGradient = true
        let x = TestData.uniformBuffer(shape.count, seed: 6, stream: 1)
        let context = ForwardContext(training: true)
        let y = try conv.forward(x.tensor(shape), context)
        let outputs = Array(y.buffer)
        let dy = TestData.uniformBuffer(y.count, seed: 7, stream: 2)
        let dx = try conv.backward(dy.tensor(y.shape), context)
        let gradients = Array(UnsafeBufferPointer(start: model.gradients.pointer, count: model.parameterCount))
        return Results(y: outputs, gradients: gradients, dx: Array(dx.buffer))
    }

    func assertClose(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        let scale = max(1, b.map { abs(Double($0)) }.max() ?? 0)
        let worst = zip(a, b).map { abs(Double($0) - Double($1)) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst, 1e-5 * scale, what, file: file, line: line)
    }

    /// The layer shapes of fmnist-cnn and resnet8, and odd ones: one-pixel and non-square
    /// planes of odd and even widths, an input channel count the transposed kernel cannot take (its input gradient
    /// goes by GEMM), bias.
    let shapes: [(inC: Int, outC: Int, stride: Int, bias: Bool, shape: Shape)] = [
        (1, 16, 1, false, Shape(n: 3, c: 1, h: 28, w: 28)),
        (16, 16, 1, false, Shape(n: 2, c: 16, h: 28, w: 28)),
        (32, 64, 1, false, Shape(n: 2, c: 32, h: 14, w: 14)),
        (32, 32, 1, false, Shape(n: 2, c: 32, h: 14, w: 14)),
        (64, 64, 1, false, Shape(n: 3, c: 64, h: 7, w: 7)),
        (16, 32, 2, false, Shape(n: 2, c: 16, h: 28, w: 28)),
        (32, 64, 2, false, Shape(n: 3, c: 32, h: 14, w: 14)),
        (4, 8, 1, true, Shape(n: 2, c: 4, h: 5, w: 9)),
        (3, 4, 1, true, Shape(n: 2, c: 3, h: 6, w: 3)),
        (8, 4, 1, false, Shape(n: 2, c: 8, h: 1, w: 1)),
        (4, 12, 1, false, Shape(n: 1, c: 4, h: 2, w: 11)),
        (4, 8, 2, true, Shape(n: 2, c: 4, h: 5, w: 9)),
        (3, 4, 2, false, Shape(n: 2, c: 3, h: 1, w: 1)),
        (2, 4, 2, true, Shape(n: 1, c: 2, h: 2, w: 8)),
        // Stride 2's phase split and merge at every row width kind: 16- and 8-float blocks,
        // an overlapping last block (even widths), scalar tails (odd and short widths).
        (4, 4, 2, true, Shape(n: 2, c: 4, h: 6, w: 33)),
        (4, 8, 2, false, Shape(n: 2, c: 4, h: 7, w: 10)),
        (8, 4, 2, true, Shape(n: 1, c: 8, h: 5, w: 20)),
        (4, 4, 2, false, Shape(n: 2, c: 4, h: 4, w: 6)),
        (4, 4, 2, true, Shape(n: 1, c: 4, h: 3, w: 13)),
    ]

    /// `convFlat` against its definition, bit for bit: every element one FMA chain over
    /// (channel, tap) in order, whatever block it falls in (8 x 48, 4 x 48, 8 x 16 and 8 x 8
    /// after the last 48, 4 x 24, 4 x 8), for output channels that are and are not a
    /// multiple of 8 and lengths with every kind of tail (56 = 48 + 8, 216 = 4 x 48 + 24).
    func testConvFlatIsOneFusedChainPerElement() {
        for taps in [[0], [0, 1, 2, 9, 10, 11, 18, 19, 20]] {
            for channels in [1, 3] {
                for oc in [4, 8, 12, 16] {
                    for length in [8, 16, 24, 40, 48, 56, 64, 104, 216] {
                        let plane = length + 24, input = TestData.uniform(channels * plane, seed: 5, stream: UInt32(length))
                        let packed = TestData.uniform(channels * taps.count * oc, seed: 6, stream: UInt32(oc))
                        var out = [Float](repeating: .nan, count: oc * length)
                        input.withUnsafeBufferPointer { x in
                            packed.withUnsafeBufferPointer { w in
                                out.withUnsafeMutableBufferPointer { y in
                                    convFlat(x.baseAddress!, channels: channels, channelLength: plane, taps: taps, w.baseAddress!,
                                             outChannels: oc, outLength: length, into: y.baseAddress!)
                                }
                            }
                        }
                        var expected = [Float](repeating: 0, count: oc * length)
                        for o in 0..<oc {
                            for j in 0..<length {
                                var acc: Float = 0
                                for c in 0..<channels {
                                    for (t, tap) in taps.enumerated() {
                                        acc = acc.addingProduct(packed[(c * taps.count + t) * oc + o], input[c * plane + j + tap])
                                    }
                                }
                                expected[o * length + j] = acc
                            }
                        }
                        XCTAssertEqual(out.map(\.bitPattern), expected.map(\.bitPattern),
                                       "taps \(taps.count), channels \(channels), OC \(oc), length \(length)")
                    }
                }
            }
        }
    }

    func testDirectMatchesGEMM() throws {
        for t in shapes {
            let direct = try run(.automatic, inChannels: t.inC, outChannels: t.outC, stride: t.stride, bias: t.bias, shape: t.shape)
            let gemm = try run(.gemm, inChannels: t.inC, outChannels: t.outC, stride: t.stride, bias: t.bias, shape: t.shape)
            let name = "\(t.inC)->\(t.outC) stride \(t.stride) on \(t.shape)"
            assertClose(direct.y, gemm.y, "output, " + name)
            assertClose(direct.gradients, gemm.gradients, "parameter gradients, " + name)
            assertClose(direct.dx, gemm.dx, "input gradient, " + name)
        }
    }

    /// Winograd's F(2x2, 3x3) on every stride-1 shape (the layer takes it only where it is
    /// faster) against the direct kernels: odd and even planes, planes smaller than a tile,
    /// tile rows wider than a vector (28x28: 14 tiles), bias, and an input channel count
    /// the input gradient's transposed convolution cannot take.
    func testWinogradMatchesDirect() throws {
        var cases = shapes.filter { $0.stride == 1 }
        cases += [(8, 4, 1, true, Shape(n: 4, c: 8, h: 3, w: 3)), (4, 8, 1, false, Shape(n: 7, c: 4, h: 33, w: 35)),
                  (12, 4, 1, true, Shape(n: 2, c: 12, h: 7, w: 16))]
        for t in cases {
            let winograd = try run(.winograd, inChannels: t.inC, outChannels: t.outC, bias: t.bias, shape: t.shape)
            let direct = try run(.direct, inChannels: t.inC, outChannels: t.outC, bias: t.bias, shape: t.shape)
            let name = "\(t.inC)->\(t.outC) on \(t.shape)"
            assertClose(winograd.y, direct.y, "output, " + name)
            assertClose(winograd.gradients, direct.gradients, "parameter gradients, " + name)
            assertClose(winograd.dx, direct.dx, "input gradient, " + name)
        }
    }

    func testDirectPathAgainstFiniteDifferences() throws {
        let check = GradientCheck()
        let cases: [(make: () -> Conv2d, shape: Shape)] = [
            ({ Conv2d(inChannels: 4, outChannels: 4, kernel: 3, padding: 1) }, Shape(n: 2, c: 4, h: 5, w: 7)),
            ({ Conv2d(inChannels: 2, outChannels: 8, kernel: 3, padding: 1, bias: false) }, Shape(n: 3, c: 2, h: 4, w: 3)),
            ({ Conv2d(inChannels: 8, outChannels: 4, kernel: 3, padding: 1) }, Shape(n: 1, c: 8, h: 2, w: 2)),
            ({ Conv2d(inChannels: 3, outChannels: 4, kernel: 3, stride: 2, padding: 1) }, Shape(n: 2, c: 3, h: 5, w: 6)),
            ({ Conv2d(inChannels: 2, outChannels: 8, kernel: 3, stride: 2, padding: 1, bias: false) }, Shape(n: 1, c: 2, h: 4, w: 3)),
            ({ Conv2d(inChannels: 4, outChannels: 4, kernel: 3, padding: 1, algorithm: .winograd) }, Shape(n: 2, c: 4, h: 5, w: 7)),
            ({ Conv2d(inChannels: 8, outChannels: 4, kernel: 3, padding: 1, algorithm: .winograd) }, Shape(n: 4, c: 8, h: 2, w: 2)),
        ]
        for (k, t) in cases.enumerated() {
            for training in [true, false] {
                try check.run([t.make()], input: t.shape, training: training, seed: UInt64(40 + k))
            }
        }
    }

    /// The same configuration twice: bitwise the same outputs and gradients.
    func testDirectPathRepeatsBitForBit() throws {
        for (algorithm, stride) in [(Conv2d.Algorithm.direct, 1), (.direct, 2), (.winograd, 1)] {
            let first = try run(algorithm, inChannels: 16, outChannels: 32, stride: stride, bias: true, shape: Shape(n: 3, c: 16, h: 14, w: 14))
            let second = try run(algorithm, inChannels: 16, outChannels: 32, stride: stride, bias: true, shape: Shape(n: 3, c: 16, h: 14, w: 14))
            XCTAssertEqual(first.y.map(\.bitPattern), second.y.map(\.bitPattern))
            XCTAssertEqual(first.gradients.map(\.bitPattern), second.gradients.map(\.bitPattern))
            XCTAssertEqual(first.dx.map(\.bitPattern), second.dx.map(\.bitPattern))
        }
    }

    /// A slice of no samples after a full one: every weight and bias gradient is zero, not
    /// what the full slice left (Winograd's lane sums are stored by a shard's first group,
    /// and a shard of none has no group), for each algorithm alone and behind a batch norm
    /// that runs its gradients.
    func testAnEmptySliceHasZeroGradients() throws {
        for (algorithm, stride) in [(Conv2d.Algorithm.direct, 1), (.direct, 2), (.winograd, 1)] {
            for withNorm in [false, true] {
                let conv = Conv2d(inChannels: 8, outChannels: 8, kernel: 3, stride: stride, padding: 1, bias: true, algorithm: algorithm)
                let layers: [Layer] = withNorm ? [conv, BatchNorm(features: 8)] : [conv]
                let full = Shape(n: 3, c: 8, h: 6, w: 6)
                let model = try Model(layers: layers, inputShape: full.withBatch(1), maxBatch: full.n)
                randomize(model, seed: 81)
                let label = "\(algorithm) stride \(stride), batch norm after it \(withNorm)"
                for shape in [full, full.withBatch(0)] {
                    let x = TestData.uniformBuffer(max(shape.count, 1), seed: 82, stream: 1)
                    let context = ForwardContext(training: true)
                    let y = try model.forward(x.tensor(shape), context)
                    let dy = TestData.uniformBuffer(max(y.count, 1), seed: 83, stream: 2)
                    try model.backward(dy.tensor(y.shape), context)
                    let gradients = Array(model.gradients.buffer.prefix(8 * 8 * 9 + 8))
                    if shape.n > 0 {
                        XCTAssertTrue(gradients.contains { $0 != 0 }, label)
                    } else {
                        XCTAssertEqual(gradients.filter { $0 != 0 }.count, 0, label)
                    }
                }
            }
        }
    }

    /// Forward of a batch against forward of each sample alone, in the same layer: bitwise equal.
    func testASamplesOutputDoesNotDependOnItsBatch() throws {
        // Winograd's groups of 3 samples: a batch of 5 is a group of 3 and one of 2, one of 13
        // on the narrow layout (two tile rows a vector) four groups and one sample.
        let conv = Conv2d(inChannels: 8, outChannels: 8, kernel: 3, padding: 1, bias: true, algorithm: .winograd)
        let batch = Shape(n: 13, c: 8, h: 7, w: 7)
        let model = try Model(layers: [conv], inputShape: batch, maxBatch: batch.n)
        randomize(model, seed: 8)
        try assertSamplesIndependent(model, batch: batch, name: "8->8 winograd on \(batch)")
        for t in shapes {
            for algorithm in t.stride == 1 ? [Conv2d.Algorithm.automatic, .winograd] : [.automatic] {
                let conv = Conv2d(inChannels: t.inC, outChannels: t.outC, kernel: 3, stride: t.stride, padding: 1, bias: t.bias,
                                  algorithm: algorithm)
                let batch = Shape(n: 5, c: t.inC, h: t.shape.h, w: t.shape.w)
                let model = try Model(layers: [conv], inputShape: batch, maxBatch: batch.n)
                randomize(model, seed: 8)
                try assertSamplesIndependent(model, batch: batch, name: "\(t.inC)->\(t.outC) stride \(t.stride) \(algorithm) on \(batch)")
            }
        }
    }

    /// The same for the whole resnet8 and fmnist-cnn presets in evaluation (where batch norm
    /// uses its running statistics), with one BLAS thread as the trainer runs them.
    func testPresetOutputsDoNotDependOnTheBatch() throws {
        let saved = BLASThreads.current
        BLASThreads.set(1)
        defer { BLASThreads.set(saved) }
        for name in ["resnet8", "fmnist-cnn"] {
            let batch = Shape(n: 4, c: 1, h: 28, w: 28)
            let model = try XCTUnwrap(ModelSpec.preset(name)).build(inputShape: batch, maxBatch: batch.n)
            randomize(model, seed: 9)
            try assertSamplesIndependent(model, batch: batch, name: name, training: false)
        }
    }

    func assertSamplesIndependent(_ model: Model, batch: Shape, name: String, training: Bool = true,
                                  file: StaticString = #filePath, line: UInt = #line) throws {
        let x = TestData.uniformBuffer(batch.count, seed: 10, stream: 1)
        let context = ForwardContext(training: training)
        let whole = Array(try model.forward(x.tensor(batch), context).buffer)
        let perSample = whole.count / batch.n
        for s in 0..<batch.n {
            let alone = Array(try model.forward(Tensor(x.pointer + s * batch.perSample, batch.withBatch(1)), context).buffer)
            XCTAssertEqual(alone.map(\.bitPattern), whole[(s * perSample)..<((s + 1) * perSample)].map(\.bitPattern),
                           "\(name): sample \(s) alone differs from the same sample in a batch of \(batch.n)", file: file, line: line)
        }
    }
}
