import DDPKernels

/// Max over k x k windows (PyTorch floor mode; padded positions never win). The gradient
/// goes to the first maximum in window order (row by row), as in PyTorch; the argmax of
/// every output is kept as an index into its input plane.
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

    /// A 2x2, stride-2 window over an even-sized input: the one-pass fast path.
    private var isEvenTwoByTwo: Bool {
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

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(x.shape, capacity: capacity)
        let g = geometry!
        let y = output.tensor(g.outputShape(batch: x.shape.n))
        let oh = g.outHeight, ow = g.outWidth, plane = g.height * g.width
        let indices = argmax.pointer, windows = windows!
        if isEvenTwoByTwo {
            forward2x2(x.data, y.data, planes: x.shape.n * g.channels)
            inputShape = x.shape
            return y
        }
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

    /// The common 2x2, stride-2 window, always inside the input: one pass over each pair of
    /// input rows, straight to the output and the argmax, with no intermediate arrays. Each
    /// row's horizontal pairs keep the larger element, then the bottom pair is compared with
    /// the top one. First maximum in window order wins, NaN propagates (the last NaN in
    /// window order), exactly as a window at a time would: "a later one wins only if larger
    /// or NaN" is associative over the two row pairs.
    private func forward2x2(_ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, planes: Int) {
        let g = geometry!
        let w = g.width, oh = g.outHeight, ow = g.outWidth
        let arg = argmax.pointer
        let width = Int32(truncatingIfNeeded: w)
        // "b > a or b is NaN"; the two never hold together, so != is their or, without the
        // short circuit that would make it a branch.
        @inline(__always) func later(_ b: Float, beats a: Float) -> Bool { (b > a) != (b != b) }
        for r in 0..<(planes * oh) {
            let top = x + 2 * r * w, bottom = top + w
            let out = y + r * ow, index = arg + r * ow
            let rowStart = Int32(truncatingIfNeeded: 2 * (r % oh) * w)
            for ox in 0..<ow {
                let a = top[2 * ox], b = top[2 * ox + 1], c = bottom[2 * ox], d = bottom[2 * ox + 1]
                let right = later(b, beats: a), bottomRight = later(d, beats: c)
                let t = right ? b : a, u = bottomRight ? d : c
                let down = later(u, beats: t)
                out[ox] = down ? u : t
                let side: Int32 = down ? (bottomRight ? 1 : 0) : (right ? 1 : 0)
                index[ox] = rowStart + (down ? width : 0) + Int32(truncatingIfNeeded: 2 * ox) + side
            }
        }
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        guard let shape = inputShape else { throw LayerError("MaxPool2d.backward called before forward") }
        let dx = inputGrad.tensor(shape)
        guard needsInputGradient else { return dx }
        let g = geometry!
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
