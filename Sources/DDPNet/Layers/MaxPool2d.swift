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
    private var inputGrad: FloatBuffer!
    private var argmax: OwnedBuffer<Int32>!
    private var windows: PoolWindows!
    private var inputShape: Shape?

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
        output = FloatBuffer(capacity: outCount)
        argmax = OwnedBuffer(capacity: outCount, repeating: 0)
        windows = PoolWindows(g)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        let g = geometry!
        let y = output.tensor(g.outputShape(batch: x.shape.n))
        let oh = g.outHeight, ow = g.outWidth, plane = g.height * g.width
        let indices = argmax.pointer, windows = windows!
        if kernel == 2 && stride == 2 && padding == 0 {
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

    /// The common 2x2, stride-2 window, always inside the input: eight outputs at a time
    /// as vector compares and blends (random data would mispredict scalar branches).
    private func forward2x2(_ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, planes: Int) {
        let g = geometry!
        let w = g.width, oh = g.outHeight, ow = g.outWidth, plane = g.height * w
        let lanes = SIMD8<Int32>(0, 2, 4, 6, 8, 10, 12, 14)
        for planeIndex in 0..<planes {
            let src = x + planeIndex * plane, dst = y + planeIndex * oh * ow, arg = argmax.pointer + planeIndex * oh * ow
            for oy in 0..<oh {
                let top = 2 * oy * w
                var ox = 0
                while ox + 8 <= ow {
                    let k = top + 2 * ox
                    let upper = UnsafeRawPointer(src + k).loadUnaligned(as: SIMD16<Float>.self)
                    let lower = UnsafeRawPointer(src + k + w).loadUnaligned(as: SIMD16<Float>.self)
                    var bestValue = upper.evenHalf
                    var best = lanes &+ Int32(k)
                    // Window order: (0,0), (0,1), (1,0), (1,1); later ones win only if larger or NaN.
                    @inline(__always) func consider(_ candidate: SIMD8<Float>, at offset: Int) {
                        let take = (candidate .> bestValue) .| (candidate .!= candidate)
                        bestValue.replace(with: candidate, where: take)
                        best.replace(with: lanes &+ Int32(k + offset), where: take)
                    }
                    consider(upper.oddHalf, at: 1)
                    consider(lower.evenHalf, at: w)
                    consider(lower.oddHalf, at: w + 1)
                    UnsafeMutableRawPointer(dst + oy * ow + ox).storeBytes(of: bestValue, as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(arg + oy * ow + ox).storeBytes(of: best, as: SIMD8<Int32>.self)
                    ox += 8
                }
                while ox < ow {
                    let k = top + 2 * ox
                    var best = k, bestValue = src[k]
                    @inline(__always) func consider(_ candidate: Int) {
                        if src[candidate] > bestValue || src[candidate].isNaN { best = candidate; bestValue = src[candidate] }
                    }
                    consider(k + 1)
                    consider(k + w)
                    consider(k + w + 1)
                    dst[oy * ow + ox] = bestValue
                    arg[oy * ow + ox] = Int32(best)
                    ox += 1
                }
            }
        }
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
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
