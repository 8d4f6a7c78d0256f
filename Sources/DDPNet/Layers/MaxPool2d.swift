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
    private var argmax: IndexBuffer!
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
        argmax = IndexBuffer(capacity: outCount)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        let g = geometry!
        let y = output.tensor(g.outputShape(batch: x.shape.n))
        let oh = g.outHeight, ow = g.outWidth, plane = g.height * g.width
        let indices = argmax.pointer
        for planeIndex in 0..<(x.shape.n * g.channels) {
            let src = x.data + planeIndex * plane
            let dst = y.data + planeIndex * oh * ow, arg = indices + planeIndex * oh * ow
            for oy in 0..<oh {
                let rows = g.clipped(oy * stride - padding, size: g.height, kernel: kernel)
                for ox in 0..<ow {
                    let cols = g.clipped(ox * stride - padding, size: g.width, kernel: kernel)
                    var best = rows.lowerBound * g.width + cols.lowerBound
                    var bestValue = src[best]
                    for iy in rows {
                        for ix in cols {
                            let v = src[iy * g.width + ix]
                            // Strictly greater keeps the first maximum; NaN propagates as in PyTorch.
                            if v > bestValue || v.isNaN { bestValue = v; best = iy * g.width + ix }
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
