import CPrefetch
import DDPKernels

/// Max over k x k windows (PyTorch floor mode; padded positions never win). The gradient
/// goes to the first maximum in window order (row by row), as in PyTorch; the argmax of
/// every output is kept as an index into its input plane, or, on the 2x2 fast path, as the
/// position in its window (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right), so that
/// the backward writes dx in one sequential pass instead of zeroing it and scattering.
public final class MaxPool2d: Layer {
    public let kernel: Int
    public let stride: Int
    public let padding: Int
    public var needsInputGradient = true

    private var geometry: ConvGeometry!
    private var output: FloatBuffer!
    /// The batch the buffers were sized for.
    private var capacity = 0
    private var inputGrad: FloatBuffer!
    private var argmax: OwnedBuffer<Int32>!
    private var windows: PoolWindows!
    private var inputShape: Shape?
    /// Set when the batch norm before it (with its ReLU) pools its own output
    /// (`BatchNorm.fusesPool`): forward and backward then hand tensors through, and the batch
    /// norm calls `poolSample` and `spreadSampleGradient`.
    public internal(set) var passesThrough = false

    /// A 2x2, stride-2 window over an even-sized input: the one-pass fast path.
    var isEvenTwoByTwo: Bool {
        kernel == 2 && stride == 2 && padding == 0 && geometry.width % 2 == 0 && geometry.height % 2 == 0
    }

    public init(kernel: Int, stride: Int? = nil, padding: Int = 0) {
        self.kernel = kernel; self.stride = stride ?? kernel; self.padding = padding
    }

    public var summary: String {
        "MaxPool2d(kernel_size=\(kernel), stride=\(stride), padding=\(padding), dilation=1, ceil_mode=False)"
    }

    public func outputShape(for input: Shape) throws -> Shape {
        try poolGeometry("MaxPool2d", kernel: kernel, stride: stride, padding: padding, input: input).outputShape(batch: input.n)
    }

    public func configure(input: Shape, maxBatch: Int, index: Int) throws {
        let g = try poolGeometry("MaxPool2d", kernel: kernel, stride: stride, padding: padding, input: input)
        geometry = g
        let outCount = maxBatch * g.channels * g.outSpatial
        capacity = maxBatch
        output = FloatBuffer(capacity: outCount)
        argmax = OwnedBuffer(capacity: outCount, repeating: 0)
        windows = PoolWindows(g)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
    }

    /// Pools the planes `input` [channels, H, W] of sample `s` (fast path only) into the
    /// output and the winners, as `forward` pools them, for the batch norm whose ReLU'd output
    /// `input` is: a window whose maximum is not positive gets no winner (`noWinner`), since
    /// the ReLU passes no gradient there; its backward then needs no mask. With `prepared`, the
    /// pooled planes go instead into a convolution's prepared input
    /// (`BatchNorm.writesPreparedInput`): the padded planes of layout `l`, the sample's
    /// first at `prepared.pointer` (pooled rows of 8 or more).
    func poolSample(_ input: UnsafeMutablePointer<Float>, sample s: Int, channels: Range<Int>,
                    intoPrepared prepared: (pointer: UnsafeMutablePointer<Float>, layout: DirectConvLayout)? = nil) {
        let g = geometry!, first = channels.lowerBound
        let winners = argmax.pointer + (s * g.channels + first) * g.outSpatial
        if let (pointer, l) = prepared {
            for c in channels {
                maxPool2x2(input + (c - first) * g.height * g.width, pointer + c * l.channelLength + l.origin,
                           winners + (c - first) * g.outSpatial, outWidth: g.outWidth, rows: g.outHeight,
                           outRowStride: l.outRowStride, reluMasked: true)
            }
            return
        }
        maxPool2x2(input, output.pointer + (s * g.channels + first) * g.outSpatial, winners, outWidth: g.outWidth,
                   rows: channels.count * g.outHeight, reluMasked: true)
    }

    /// Whether `poolSample` can write into prepared planes: its 8-wide stores stay inside a
    /// row of at least 8 outputs.
    var poolsIntoPreparedPlanes: Bool { geometry.outWidth >= 8 }

    /// The pooled output of the first `batch` samples (after `poolSample`).
    func pooledOutput(batch: Int) -> Tensor { output.tensor(geometry.outputShape(batch: batch)) }

    /// The input gradient [channels, H, W] of sample `s` from the output gradient `dy` of the
    /// batch (fast path only), as `backward` writes it.
    func spreadSampleGradient(_ dy: UnsafeMutablePointer<Float>, sample s: Int, channels: Range<Int>,
                              into dx: UnsafeMutablePointer<Float>) {
        let g = geometry!, offset = (s * g.channels + channels.lowerBound) * g.outSpatial
        maxPool2x2Backward(dy + offset, dx, argmax.pointer + offset, outWidth: g.outWidth, rows: channels.count * g.outHeight)
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(x.shape, capacity: capacity)
        if passesThrough { return x }
        let g = geometry!
        let y = output.tensor(g.outputShape(batch: x.shape.n))
        let oh = g.outHeight, ow = g.outWidth, plane = g.height * g.width
        if isEvenTwoByTwo {
            maxPool2x2(x.data, y.data, argmax.pointer, outWidth: ow, rows: x.shape.n * g.channels * oh)
            inputShape = x.shape
            return y
        }
        let indices = argmax.pointer, windows = windows!
        for planeIndex in 0..<(x.shape.n * g.channels) {
            let src = x.data + planeIndex * plane
            let dst = y.data + planeIndex * oh * ow, arg = indices + planeIndex * oh * ow
            for oy in 0..<oh {
                let rows = windows.rows(oy)
                for ox in 0..<ow {
                    let cols = windows.columns(ox)
                    var best = rows.lowerBound * g.width + cols.lowerBound
                    var bestValue = src[best]
                    for iy in rows {
                        for k in (iy * g.width + cols.lowerBound)..<(iy * g.width + cols.upperBound) {
                            let v = src[k]
                            // Strictly greater keeps the first maximum; NaN propagates as in
                            // PyTorch. Selects rather than branches: the data decides.
                            let take = v > bestValue || v.isNaN
                            bestValue = take ? v : bestValue
                            best = take ? k : best
                        }
                    }
                    dst[oy * ow + ox] = bestValue
                    arg[oy * ow + ox] = Int32(best)
                }
            }
        }
        inputShape = x.shape
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        if passesThrough { return dy }
        guard let shape = inputShape else { throw LayerError("MaxPool2d.backward called before forward") }
        let dx = inputGrad.tensor(shape)
        guard needsInputGradient else { return dx }
        let g = geometry!
        if isEvenTwoByTwo {
            maxPool2x2Backward(dy.data, dx.data, argmax.pointer, outWidth: g.outWidth, rows: shape.n * g.channels * g.outHeight)
            return dx
        }
        let outPlane = g.outSpatial, plane = g.height * g.width
        dx.data.update(repeating: 0, count: dx.count)
        for planeIndex in 0..<(shape.n * g.channels) {
            let d = dx.data + planeIndex * plane
            let grad = dy.data + planeIndex * outPlane, arg = argmax.pointer + planeIndex * outPlane
            for i in 0..<outPlane { d[Int(arg[i])] += grad[i] }
        }
        return dx
    }
}

// MARK: The 2x2, stride-2 kernels

/// Max over 2x2 windows, stride 2, of `rows` pairs of input rows of 2 * ow, in one pass: 8
/// outputs at a time from 16-wide loads of the two rows, straight to the output and the
/// winners. Each row's horizontal pairs keep one element, then the bottom pair's is compared
/// with the top one's. First maximum in window order wins, NaN propagates (the last NaN in
/// window order), exactly as a window at a time would: "a later one wins only if larger or
/// NaN" is associative over the two row pairs. With `reluMasked` (x is a ReLU's output), a
/// window whose maximum is not greater than 0 (0, or NaN) gets `noWinner`: the ReLU before
/// passes it no gradient, so `maxPool2x2Backward` gives all four zeros, as the pool's and
/// then the ReLU's backward would.
func maxPool2x2(_ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                _ winners: UnsafeMutablePointer<Int32>, outWidth ow: Int, rows: Int, outRowStride: Int? = nil,
                reluMasked: Bool = false) {
    // Output rows outRowStride apart (a prepared plane's) take a row of at least 8: an 8-wide
    // store stays inside it.
    precondition(outRowStride == nil || ow >= 8, "maxPool2x2: rows apart need 8 outputs or more")
    let w = 2 * ow, vector = vectorRows(rows, outWidth: ow), rowStride = outRowStride ?? ow
    for r in 0..<vector {
        let top = x + 2 * r * w, out = y + r * rowStride, code = winners + r * ow
        for ox in stride(from: 0, to: ow, by: 8) {
            // A row's last 8 overlap the ones before when ow is not a multiple of 8.
            let o = min(ox, max(ow - 8, 0))
            let (value, winner) = pool8(top + 2 * o, width: w)
            UnsafeMutableRawPointer(out + o).storeBytes(of: value, as: SIMD8<Float>.self)
            let kept = reluMasked ? winner.replacing(with: noWinner, where: .!(value .> 0)) : winner
            UnsafeMutableRawPointer(code + o).storeBytes(of: kept, as: SIMD8<Int32>.self)
        }
    }
    for r in vector..<rows {
        let top = x + 2 * r * w, bottom = top + w
        for ox in 0..<ow {
            let a = top[2 * ox], b = top[2 * ox + 1], c = bottom[2 * ox], d = bottom[2 * ox + 1]
            let right = later(b, beats: a), bottomRight = later(d, beats: c)
            let t = right ? b : a, u = bottomRight ? d : c
            let down = later(u, beats: t)
            let value = down ? u : t
            y[r * rowStride + ox] = value
            winners[r * ow + ox] = reluMasked && !(value > 0) ? noWinner : (down ? 2 : 0) + ((down ? bottomRight : right) ? 1 : 0)
        }
    }
}

/// The winner code of a window that passes no gradient (`maxPool2x2`'s `reluMasked`).
let noWinner: Int32 = 4

/// The windows do not overlap, so every dx element is written once, in order: the winner
/// (if any) gets dy + 0, the other three 0. The + 0 keeps the bits of the zero-then-accumulate it
/// replaces (0 + -0 is +0; a NaN comes out quiet), as the generic path still does.
func maxPool2x2Backward(_ dy: UnsafeMutablePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
                                _ winners: UnsafeMutablePointer<Int32>, outWidth ow: Int, rows: Int) {
    let w = 2 * ow, vector = vectorRows(rows, outWidth: ow)
    let none = SIMD8<Float>()
    let topLeft = SIMD8<Int32>(repeating: 0), topRight = SIMD8<Int32>(repeating: 1)
    let bottomLeft = SIMD8<Int32>(repeating: 2), bottomRight = SIMD8<Int32>(repeating: 3)
    for r in 0..<vector {
        let top = dx + 2 * r * w, grad = dy + r * ow, code = winners + r * ow
        // 1 KB ahead in both streams (CPrefetch): rows of 4 to 14 outputs.
        ddptrain_prefetch(grad + 256); ddptrain_prefetch(code + 256)
        for ox in stride(from: 0, to: ow, by: 8) {
            let o = min(ox, max(ow - 8, 0))
            let d = UnsafeRawPointer(grad + o).loadUnaligned(as: SIMD8<Float>.self) + 0
            let winner = UnsafeRawPointer(code + o).loadUnaligned(as: SIMD8<Int32>.self)
            var upper = SIMD16<Float>(), lower = SIMD16<Float>()
            upper.evenHalf = none.replacing(with: d, where: winner .== topLeft)
            upper.oddHalf = none.replacing(with: d, where: winner .== topRight)
            lower.evenHalf = none.replacing(with: d, where: winner .== bottomLeft)
            lower.oddHalf = none.replacing(with: d, where: winner .== bottomRight)
            // Upper first: for narrow rows it spills into the lower row, which overwrites it.
            UnsafeMutableRawPointer(top + 2 * o).storeBytes(of: upper, as: SIMD16<Float>.self)
            UnsafeMutableRawPointer(top + w + 2 * o).storeBytes(of: lower, as: SIMD16<Float>.self)
        }
    }
    for r in vector..<rows {
        let top = dx + 2 * r * w
        for ox in 0..<ow {
            let d = dy[r * ow + ox] + 0, winner = winners[r * ow + ox]
            top[2 * ox] = winner == 0 ? d : 0
            top[2 * ox + 1] = winner == 1 ? d : 0
            top[w + 2 * ox] = winner == 2 ? d : 0
            top[w + 2 * ox + 1] = winner == 3 ? d : 0
        }
    }
}

/// How many of the `rows` output rows take the 8-wide path. With ow < 8, the 8 outputs (and
/// dy) of row r run into the rows after it, as do its 16-wide loads of x and stores of dx;
/// those rows are done later and overwrite what spilled. Only the last rows, whose 8 outputs
/// would pass the end of the output, go one window at a time: r * ow + 8 <= rows * ow, that
/// is r < rows - 7 / ow. Their x and dx then stay inside too: they end at 4 * r * ow + 2 * ow
/// + 16 <= 4 * (r * ow + 8) when ow < 8. With ow >= 8 no 8 outputs leave their row.
@inline(__always) private func vectorRows(_ rows: Int, outWidth ow: Int) -> Int { max(rows - 7 / ow, 0) }

/// The 8 windows whose top-left corners are top[0], top[2], ..., top[14]: their maxima and
/// which of the four won (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
@inline(__always)
private func pool8(_ top: UnsafeMutablePointer<Float>, width w: Int) -> (SIMD8<Float>, SIMD8<Int32>) {
    let upper = UnsafeRawPointer(top).loadUnaligned(as: SIMD16<Float>.self)
    let lower = UnsafeRawPointer(top + w).loadUnaligned(as: SIMD16<Float>.self)
    let right = later(upper.oddHalf, beats: upper.evenHalf), bottomRight = later(lower.oddHalf, beats: lower.evenHalf)
    let t = upper.evenHalf.replacing(with: upper.oddHalf, where: right)
    let u = lower.evenHalf.replacing(with: lower.oddHalf, where: bottomRight)
    let down = later(u, beats: t)
    let side = (down .& bottomRight) .| (.!down .& right)
    let none = SIMD8<Int32>()
    return (t.replacing(with: u, where: down), none.replacing(with: 2, where: down) &+ none.replacing(with: 1, where: side))
}

/// "b > a or b is NaN": a later element of a window beats the best so far. The two never
/// hold together, so != is their or, without the short circuit that would make it a branch.
@inline(__always) private func later(_ b: Float, beats a: Float) -> Bool { (b > a) != (b != b) }
@inline(__always) private func later(_ b: SIMD8<Float>, beats a: SIMD8<Float>) -> SIMDMask<SIMD8<Int32>> {
    (b .> a) .^ (b .!= b)
}
