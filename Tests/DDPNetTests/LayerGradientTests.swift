import DDPKernels
import DDPNet
import XCTest

/// Every layer's input and parameter gradients against finite differences (see
/// GradientCheck for step and tolerance), in training and evaluation, for several shapes
/// including batch 1 and odd sizes.
final class LayerGradientTests: XCTestCase {
    let check = GradientCheck()

    /// Runs the check in both modes for each input shape, with a fresh layer each time.
    func checkBothModes(_ make: () -> [Layer], shapes: [Shape], x: ((Shape) -> [Float])? = nil,
                        file: StaticString = #filePath, line: UInt = #line) throws {
        for (k, shape) in shapes.enumerated() {
            for training in [true, false] {
                try check.run(make(), input: shape, training: training, x: x?(shape), seed: UInt64(10 + k),
                              file: file, line: line)
            }
        }
    }

    func testLinear() throws {
        for bias in [true, false] {
            try checkBothModes({ [Linear(5, 3, bias: bias)] }, shapes: [Shape(n: 1, features: 5), Shape(n: 4, features: 5)])
        }
        // From a 4-D input, as after a convolution.
        try checkBothModes({ [Linear(12, 2)] }, shapes: [Shape(n: 3, c: 3, h: 2, w: 2)])
    }

    func testConv2d() throws {
        let cases: [(conv: () -> Conv2d, shape: Shape)] = [
            ({ Conv2d(inChannels: 3, outChannels: 5, kernel: 3, padding: 1) }, Shape(n: 2, c: 3, h: 5, w: 7)),
            ({ Conv2d(inChannels: 2, outChannels: 3, kernel: 3, stride: 2, bias: false) }, Shape(n: 3, c: 2, h: 7, w: 6)),
            ({ Conv2d(inChannels: 3, outChannels: 1, kernel: 2, stride: 2, padding: 1) }, Shape(n: 1, c: 3, h: 5, w: 4)),
            ({ Conv2d(inChannels: 1, outChannels: 4, kernel: 5, stride: 3, padding: 2, bias: false) }, Shape(n: 2, c: 1, h: 8, w: 9)),
            // 1x1 stride 1 (no im2col) and 1x1 stride 2 (projection shortcut).
            ({ Conv2d(inChannels: 3, outChannels: 5, kernel: 1) }, Shape(n: 3, c: 3, h: 4, w: 5)),
            ({ Conv2d(inChannels: 3, outChannels: 2, kernel: 1, bias: false) }, Shape(n: 1, c: 3, h: 3, w: 3)),
            ({ Conv2d(inChannels: 3, outChannels: 4, kernel: 1, stride: 2, bias: false) }, Shape(n: 2, c: 3, h: 5, w: 5)),
        ]
        for (conv, shape) in cases { try checkBothModes({ [conv()] }, shapes: [shape]) }
    }

    func testMaxPool2d() throws {
        let distinct: (Shape) -> [Float] = { TestData.distinct($0.count, seed: UInt64($0.count)) }
        // Widths 6 and 5 take the scalar 2x2 loop, 21 its vector loop (8 outputs) plus a tail.
        try checkBothModes({ [MaxPool2d(kernel: 2)] }, shapes: [Shape(n: 2, c: 3, h: 4, w: 6), Shape(n: 1, c: 1, h: 5, w: 5),
                                                                Shape(n: 2, c: 2, h: 5, w: 21)], x: distinct)
        try checkBothModes({ [MaxPool2d(kernel: 3, stride: 2, padding: 1)] }, shapes: [Shape(n: 1, c: 2, h: 7, w: 5)], x: distinct)
        try checkBothModes({ [MaxPool2d(kernel: 3, stride: 1)] }, shapes: [Shape(n: 3, c: 2, h: 5, w: 4)], x: distinct)
    }

    func testAvgPool2d() throws {
        try checkBothModes({ [AvgPool2d(kernel: 2)] }, shapes: [Shape(n: 2, c: 3, h: 4, w: 6), Shape(n: 1, c: 1, h: 5, w: 5)])
        try checkBothModes({ [AvgPool2d(kernel: 3, stride: 2, padding: 1)] }, shapes: [Shape(n: 1, c: 2, h: 7, w: 5)])
        try checkBothModes({ [AvgPool2d(kernel: 3, stride: 1)] }, shapes: [Shape(n: 3, c: 2, h: 5, w: 4)])
    }

    func testGlobalAvgPool2dAndFlatten() throws {
        try checkBothModes({ [GlobalAvgPool2d()] }, shapes: [Shape(n: 3, c: 4, h: 3, w: 5), Shape(n: 1, c: 2, h: 1, w: 1)])
        try checkBothModes({ [Flatten()] }, shapes: [Shape(n: 2, c: 3, h: 2, w: 2), Shape(n: 1, c: 1, h: 3, w: 1)])
    }

    func testBatchNorm() throws {
        // 2-D needs batch > 1 in training; batch 1 is checked in evaluation only.
        try checkBothModes({ [BatchNorm(features: 5)] }, shapes: [Shape(n: 4, features: 5), Shape(n: 2, features: 5)])
        try check.run([BatchNorm(features: 3)], input: Shape(n: 1, features: 3), training: false)
        try checkBothModes({ [BatchNorm(features: 3)] }, shapes: [Shape(n: 3, c: 3, h: 3, w: 2), Shape(n: 1, c: 3, h: 2, w: 3)])
        // Inside a stack, so that its input gradient is used and its dy is not uniform.
        try checkBothModes({ [Conv2d(inChannels: 2, outChannels: 3, kernel: 3, padding: 1), BatchNorm(features: 3), Tanh()] },
                           shapes: [Shape(n: 2, c: 2, h: 3, w: 3)])
    }

    func testActivations() throws {
        let shapes = [Shape(n: 3, features: 7), Shape(n: 1, c: 2, h: 3, w: 3)]
        let kinkFree: (Shape) -> [Float] = { TestData.awayFromZero($0.count, seed: UInt64($0.count), stream: 5) }
        try checkBothModes({ [ReLU()] }, shapes: shapes, x: kinkFree)
        try checkBothModes({ [LeakyReLU()] }, shapes: shapes, x: kinkFree)
        try checkBothModes({ [LeakyReLU(negativeSlope: 0.2)] }, shapes: shapes, x: kinkFree)
        // ELU and SELU have a kink in the second derivative only (for alpha = 1) or a
        // slope change at 0 (SELU); keep away from 0 too.
        try checkBothModes({ [ELU()] }, shapes: shapes, x: kinkFree)
        try checkBothModes({ [ELU(alpha: 0.5)] }, shapes: shapes, x: kinkFree)
        try checkBothModes({ [SELU()] }, shapes: shapes, x: kinkFree)
        try checkBothModes({ [GELU()] }, shapes: shapes)
        try checkBothModes({ [Tanh()] }, shapes: shapes)
        try checkBothModes({ [Sigmoid()] }, shapes: shapes)
    }

    func testDropout() throws {
        let ids: [Int32] = [7, 3, 12]
        try ids.withUnsafeBufferPointer { ids in
            let context = ForwardContext(training: true, seed: 5, step: 2, sampleIDs: ids.baseAddress)
            for training in [true, false] {
                try check.run([Dropout(p: 0.3)], input: Shape(n: 3, features: 10), training: training, context: context)
                try check.run([Linear(4, 6), Dropout(p: 0.5), Tanh()], input: Shape(n: 3, features: 4), training: training, context: context)
            }
        }
        try checkBothModes({ [Dropout(p: 0.25)] }, shapes: [Shape(n: 1, c: 2, h: 3, w: 3)])
    }

    func testResidualBlock() throws {
        // The inner ReLUs see batch-norm outputs, which x cannot keep away from 0: a few
        // perturbations cross a kink. A smaller step (Float32 rounding ~1e-3 after dividing
        // by 2h, still well below the tolerance) makes that rarer; one-sided differences
        // (truncation h/2·|L''| ≈ 5e-4·|L''|) cover the rest.
        let check = GradientCheck(h: 1e-3, kinks: true)
        let cases: [(make: () -> ResidualBlock, shape: Shape)] = [
            ({ ResidualBlock(inChannels: 3, outChannels: 3) }, Shape(n: 2, c: 3, h: 4, w: 4)),
            ({ ResidualBlock(inChannels: 3, outChannels: 4, stride: 2) }, Shape(n: 2, c: 3, h: 5, w: 5)),
            ({ ResidualBlock(inChannels: 2, outChannels: 3) }, Shape(n: 1, c: 2, h: 3, w: 3)),
            // Channel counts the direct kernels take: the skip gradient is added in conv1's
            // input-gradient pass (stride 1 and stride 2; odd and even planes).
            ({ ResidualBlock(inChannels: 4, outChannels: 4) }, Shape(n: 2, c: 4, h: 5, w: 6)),
            ({ ResidualBlock(inChannels: 4, outChannels: 8, stride: 2) }, Shape(n: 2, c: 4, h: 7, w: 10)),
        ]
        for (k, t) in cases.enumerated() {
            for training in [true, false] {
                try check.run([t.make()], input: t.shape, training: training, seed: UInt64(30 + k))
            }
        }
    }
}
