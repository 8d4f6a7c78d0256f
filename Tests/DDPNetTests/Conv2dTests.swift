import DDPKernels
import DDPNet
import XCTest

/// Conv2d's forward against a direct convolution computed in Float64.
final class Conv2dTests: XCTestCase {
    func naive(_ x: [Float], _ s: Shape, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
               out oc: Int, kernel k: Int, stride: Int, padding: Int) -> [Double] {
        let oh = (s.h + 2 * padding - k) / stride + 1, ow = (s.w + 2 * padding - k) / stride + 1
        var y = [Double](repeating: 0, count: s.n * oc * oh * ow)
        for n in 0..<s.n { for o in 0..<oc { for oy in 0..<oh { for ox in 0..<ow {
            var sum = bias.map { Double($0[o]) } ?? 0
            for c in 0..<s.c { for ky in 0..<k { for kx in 0..<k {
                let iy = oy * stride - padding + ky, ix = ox * stride - padding + kx
                guard iy >= 0, iy < s.h, ix >= 0, ix < s.w else { continue }
                sum += Double(weight[((o * s.c + c) * k + ky) * k + kx]) * Double(x[((n * s.c + c) * s.h + iy) * s.w + ix])
            } } }
            y[((n * oc + o) * oh + oy) * ow + ox] = sum
        } } } }
        return y
    }

    func testForwardMatchesDirectConvolution() throws {
        let cases: [(inC: Int, outC: Int, k: Int, stride: Int, pad: Int, bias: Bool, shape: Shape)] = [
            (3, 8, 3, 1, 1, true, Shape(n: 4, c: 3, h: 9, w: 11)),
            (5, 7, 3, 2, 1, false, Shape(n: 3, c: 5, h: 10, w: 7)),
            (2, 3, 5, 1, 2, true, Shape(n: 1, c: 2, h: 6, w: 6)),
            (4, 6, 1, 1, 0, true, Shape(n: 5, c: 4, h: 3, w: 7)),
            (4, 6, 1, 2, 0, false, Shape(n: 2, c: 4, h: 7, w: 7)),
            (3, 2, 4, 3, 0, true, Shape(n: 3, c: 3, h: 13, w: 8)),
        ]
        for (k, t) in cases.enumerated() {
            let conv = Conv2d(inChannels: t.inC, outChannels: t.outC, kernel: t.k, stride: t.stride, padding: t.pad, bias: t.bias)
            let model = try Model(layers: [conv], inputShape: t.shape, maxBatch: t.shape.n)
            randomize(model, seed: UInt64(k))
            let x = TestData.uniform(t.shape.count, seed: UInt64(k), stream: 1)
            let y = try x.withUnsafeBufferPointer { xs in
                try model.forward(Tensor(UnsafeMutablePointer(mutating: xs.baseAddress!), t.shape), ForwardContext(training: true))
            }
            let weight = model.parameter(named: "0.weight")!
            let bias = model.parameter(named: "0.bias").map { UnsafePointer(model.parameters.pointer + $0.offset) }
            let expected = naive(x, t.shape, weight: model.parameters.pointer + weight.offset, bias: bias,
                                 out: t.outC, kernel: t.k, stride: t.stride, padding: t.pad)
            XCTAssertEqual(y.count, expected.count)
            let scale = max(1, expected.map(abs).max()!)
            let worst = (0..<y.count).map { abs(Double(y[$0]) - expected[$0]) }.max()!
            XCTAssertLessThanOrEqual(worst, 1e-4 * scale, "\(conv.summary) on \(t.shape)")
        }
    }

    func testShapesAndSummaries() throws {
        let conv = Conv2d(inChannels: 3, outChannels: 16, kernel: 3, stride: 2, padding: 1, bias: false)
        XCTAssertEqual(try conv.outputShape(for: Shape(n: 2, c: 3, h: 32, w: 31)), Shape(n: 2, c: 16, h: 16, w: 16))
        XCTAssertEqual(conv.summary, "Conv2d(3, 16, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)")
        XCTAssertEqual(Conv2d(inChannels: 1, outChannels: 2, kernel: 5).summary, "Conv2d(1, 2, kernel_size=(5, 5), stride=(1, 1))")
        XCTAssertEqual(conv.parameterSpecs.map(\.shape), [[16, 3, 3, 3]])
        XCTAssertEqual(conv.parameterSpecs[0].fanIn, 27)
        XCTAssertEqual(conv.parameterSpecs[0].fanOut, 144)
        XCTAssertThrowsError(try conv.outputShape(for: Shape(n: 1, c: 4, h: 8, w: 8)))
        XCTAssertThrowsError(try conv.outputShape(for: Shape(n: 1, features: 3)))
    }
}
