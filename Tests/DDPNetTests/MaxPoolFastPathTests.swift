import DDPKernels
import DDPNet
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The 2x2 max-pool fast path against a window-at-a-time reference, bit for bit: values, and
/// where the gradient goes (first maximum in window order; NaN wins, the last one in window
/// order), with dx as zeroing then accumulating would leave it (0 + dy: -0 comes out +0).
final class MaxPoolFastPathTests: XCTestCase {
    /// Every even width from 2 to 30: rows narrower than 8 outputs (which spill into the next
    /// row and leave the last rows to the one-window tail), multiples of 8, and widths whose
    /// last 8 outputs overlap the previous ones. The input and dy end where an inaccessible
    /// page begins, so a load past either traps.
    func testTwoByTwoMatchesWindowReferenceBitwise() throws {
        var seed: UInt32 = 12345
        for w in stride(from: 2, through: 30, by: 2) {
            for h in [2, 4, 6] {
                for (n, c) in [(1, 1), (1, 3), (2, 2), (3, 1)] {
                    try check(Shape(n: n, c: c, h: h, w: w), seed: &seed)
                }
            }
        }
        try check(Shape(n: 2, c: 3, h: 28, w: 28), seed: &seed)
        try check(Shape(n: 2, c: 3, h: 14, w: 14), seed: &seed)
    }

    /// Outputs, and the input gradient, past the end of the batch stay as they were: the
    /// buffers are sized for a larger batch, and a write past the tensors would land there.
    func testTwoByTwoWritesStayInsideTheBatch() throws {
        var seed: UInt32 = 777
        for w in stride(from: 2, through: 30, by: 2) {
            for h in [2, 4] {
                let full = Shape(n: 3, c: 2, h: h, w: w), part = full.withBatch(2)
                let pool = MaxPool2d(kernel: 2)
                let model = try Model(layers: [pool], inputShape: full, maxBatch: full.n)
                let context = ForwardContext(training: true)
                let x = FloatBuffer(capacity: full.count)
                for i in 0..<full.count { x.pointer[i] = draw(&seed, from: Self.inputs) }
                let y = try model.forward(x.tensor(full), context)
                let dy = FloatBuffer(capacity: y.count)
                for i in 0..<y.count { dy.pointer[i] = Float(i + 1) }
                let dx = try pool.backward(dy.tensor(y.shape), context)
                let yAfter = Array(UnsafeBufferPointer(start: y.data, count: y.count))
                let dxAfter = Array(UnsafeBufferPointer(start: dx.data, count: dx.count))

                // New inputs and gradients everywhere, so that a spill past the batch would
                // not write back what was there.
                for i in 0..<full.count { x.pointer[i] = draw(&seed, from: Self.inputs) }
                for i in 0..<y.count { dy.pointer[i] = -Float(i + 1) }
                let y2 = try model.forward(x.tensor(part), context)
                let dx2 = try pool.backward(dy.tensor(y2.shape), context)
                for i in y2.count..<y.count { XCTAssertEqual(y.data[i].bitPattern, yAfter[i].bitPattern, "\(full) output \(i)") }
                for i in dx2.count..<dx.count { XCTAssertEqual(dx.data[i].bitPattern, dxAfter[i].bitPattern, "\(full) dx \(i)") }
            }
        }
    }

    /// Ties (few distinct values), both zeros, infinities, NaNs with their own payloads.
    private static let inputs: [Float] = [0, -0.0, 1, 1, 2, -1, .infinity, -.infinity, .nan,
                                          Float(bitPattern: 0x7FC0_1234), Float(bitPattern: 0xFFC0_0042),
                                          .leastNonzeroMagnitude, -3, 2, 0]
    /// Gradients whose sign of zero and NaN bits show how dx was produced.
    private static let gradients: [Float] = [-0.0, 0, 1.5, -2, .leastNonzeroMagnitude, -.infinity,
                                             Float(bitPattern: 0x7FC0_0099), Float(bitPattern: 0x7FA0_0001)]

    private func draw(_ state: inout UInt32, from values: [Float]) -> Float {
        state = state &* 1_664_525 &+ 1_013_904_223
        return values[Int(state >> 16) % values.count]
    }

    /// Runs the layer with its input and dy flush against an inaccessible page, so that a
    /// load past either traps, and compares with the reference.
    private func check(_ shape: Shape, seed: inout UInt32) throws {
        let outShape = Shape(n: shape.n, c: shape.c, h: shape.h / 2, w: shape.w / 2)
        let x = GuardedFloats(count: shape.count), dy = GuardedFloats(count: outShape.count)
        for i in 0..<shape.count { x.start[i] = draw(&seed, from: Self.inputs) }
        for i in 0..<outShape.count { dy.start[i] = draw(&seed, from: Self.gradients) }
        let pool = MaxPool2d(kernel: 2)
        let model = try Model(layers: [pool], inputShape: shape, maxBatch: shape.n)
        pool.needsInputGradient = true
        let context = ForwardContext(training: true)
        let y = try model.forward(Tensor(x.start, shape), context)
        XCTAssertEqual(y.shape, outShape)
        let dx = try pool.backward(Tensor(dy.start, outShape), context)

        var reference = [Float](repeating: 0, count: shape.count)
        let oh = outShape.h, ow = outShape.w
        for plane in 0..<(shape.n * shape.c) {
            let base = plane * shape.h * shape.w
            for oy in 0..<oh {
                for ox in 0..<ow {
                    var at = base + 2 * oy * shape.w + 2 * ox
                    var best = x.start[at]
                    for (dyy, dxx) in [(0, 1), (1, 0), (1, 1)] {
                        let k = base + (2 * oy + dyy) * shape.w + 2 * ox + dxx
                        if x.start[k] > best || x.start[k].isNaN { best = x.start[k]; at = k }
                    }
                    let o = plane * oh * ow + oy * ow + ox
                    XCTAssertEqual(y.data[o].bitPattern, best.bitPattern, "\(shape) plane \(plane) window (\(oy), \(ox))")
                    reference[at] += dy.start[o]
                }
            }
        }
        for i in 0..<shape.count {
            XCTAssertEqual(dx.data[i].bitPattern, reference[i].bitPattern, "\(shape) dx \(i)")
        }
    }
}

/// `count` floats ending exactly where an inaccessible page begins.
private final class GuardedFloats {
    let start: UnsafeMutablePointer<Float>
    private let base: UnsafeMutableRawPointer
    private let bytes: Int

    init(count: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let dataPages = (count * 4 + page - 1) / page
        bytes = (dataPages + 1) * page
        guard let mapped = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              mapped != MAP_FAILED else { fatalError("mmap failed") }
        base = mapped
        let guardPage = base + dataPages * page
        precondition(mprotect(guardPage, page, PROT_NONE) == 0, "mprotect failed")
        start = (guardPage - count * 4).bindMemory(to: Float.self, capacity: count)
    }

    deinit { munmap(base, bytes) }
}
