import DDPKernels
import DDPNet
import XCTest

/// The 2x2 max-pool fast path against a window-at-a-time reference: values, and where
/// the gradient goes (first maximum in window order; NaN wins, the last one in window order).
final class MaxPoolFastPathTests: XCTestCase {
    func testTwoByTwoMatchesWindowReference() throws {
        let shape = Shape(n: 3, c: 2, h: 8, w: 10)
        let x = FloatBuffer(capacity: shape.count)
        var state: UInt32 = 12345
        for i in 0..<shape.count {
            state = state &* 1_664_525 &+ 1_013_904_223
            // Few distinct values, so that windows have ties; some NaNs.
            let r = Int(state >> 24) % 20
            x.pointer[i] = r == 0 ? .nan : Float(r % 4)
        }
        let pool = MaxPool2d(kernel: 2)
        let model = try Model(layers: [pool], inputShape: shape, maxBatch: shape.n)
        pool.needsInputGradient = true
        let context = ForwardContext(training: true)
        let y = try model.forward(x.tensor(shape), context)
        let dy = FloatBuffer(capacity: y.count)
        for i in 0..<y.count { dy.pointer[i] = Float(i + 1) }
        let dx = try pool.backward(dy.tensor(y.shape), context)

        let oh = shape.h / 2, ow = shape.w / 2
        for plane in 0..<(shape.n * shape.c) {
            let src = x.pointer + plane * shape.h * shape.w
            for oy in 0..<oh {
                for ox in 0..<ow {
                    var at = 2 * oy * shape.w + 2 * ox
                    var best = src[at]
                    for (dyy, dxx) in [(0, 1), (1, 0), (1, 1)] {
                        let k = (2 * oy + dyy) * shape.w + 2 * ox + dxx
                        if src[k] > best || src[k].isNaN { best = src[k]; at = k }
                    }
                    let o = plane * oh * ow + oy * ow + ox
                    if best.isNaN {
                        XCTAssertTrue(y.data[o].isNaN, "plane \(plane) window (\(oy), \(ox))")
                    } else {
                        XCTAssertEqual(y.data[o], best, "plane \(plane) window (\(oy), \(ox))")
                    }
                    XCTAssertEqual(dx.data[plane * shape.h * shape.w + at], dy.pointer[o], "plane \(plane) window (\(oy), \(ox))")
                    for (dyy, dxx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let k = (2 * oy + dyy) * shape.w + 2 * ox + dxx
                        if k != at { XCTAssertEqual(dx.data[plane * shape.h * shape.w + k], 0, "plane \(plane) window (\(oy), \(ox)): gradient off the maximum") }
                    }
                }
            }
        }
    }
}
