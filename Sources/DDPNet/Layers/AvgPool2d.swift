import DDPKernels

/// Mean over k x k windows, PyTorch floor mode with count_include_pad=True: padded
/// positions count as zeros, so every window divides by k*k.
public final class AvgPool2d: Layer {
    public let kernel: Int
    public let stride: Int
    public let padding: Int
    public var needsInputGradient = true

    private var geometry: ConvGeometry!
    private var output: FloatBuffer!
    /// The batch the buffers were sized for.
    private var capacity = 0
    private var inputGrad: FloatBuffer!
    private var windows: PoolWindows!
    private var inputShape: Shape?

    public init(kernel: Int, stride: Int? = nil, padding: Int = 0) {
        self.kernel = kernel; self.stride = stride ?? kernel; self.padding = padding
    }

    public var summary: String { "AvgPool2d(kernel_size=\(kernel), stride=\(stride), padding=\(padding))" }

    public func outputShape(for input: Shape) throws -> Shape {
        try poolGeometry("AvgPool2d", kernel: kernel, stride: stride, padding: padding, input: input).outputShape(batch: input.n)
    }

    public func configure(input: Shape, maxBatch: Int, index: Int) throws {
        let g = try poolGeometry("AvgPool2d", kernel: kernel, stride: stride, padding: padding, input: input)
        geometry = g
        windows = PoolWindows(g)
        capacity = maxBatch
        output = FloatBuffer(capacity: maxBatch * g.channels * g.outSpatial)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(x.shape, capacity: capacity)
        let g = geometry!
        let y = output.tensor(g.outputShape(batch: x.shape.n))
        let oh = g.outHeight, ow = g.outWidth, plane = g.height * g.width
        let scale = 1 / Float(kernel * kernel), windows = windows!
        for planeIndex in 0..<(x.shape.n * g.channels) {
            let src = x.data + planeIndex * plane, dst = y.data + planeIndex * oh * ow
            for oy in 0..<oh {
                let rows = windows.rows(oy)
                for ox in 0..<ow {
                    let cols = windows.columns(ox)
                    var sum: Float = 0
                    for iy in rows { for ix in cols { sum += src[iy * g.width + ix] } }
                    dst[oy * ow + ox] = sum * scale
                }
            }
        }
        inputShape = x.shape
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        guard let shape = inputShape else { throw LayerError("AvgPool2d.backward called before forward") }
        let dx = inputGrad.tensor(shape)
        guard needsInputGradient else { return dx }
        let g = geometry!
        let oh = g.outHeight, ow = g.outWidth, plane = g.height * g.width
        let scale = 1 / Float(kernel * kernel), windows = windows!
        dx.data.update(repeating: 0, count: dx.count)
        for planeIndex in 0..<(shape.n * g.channels) {
            let d = dx.data + planeIndex * plane, grad = dy.data + planeIndex * oh * ow
            for oy in 0..<oh {
                let rows = windows.rows(oy)
                for ox in 0..<ow {
                    let cols = windows.columns(ox)
                    let share = grad[oy * ow + ox] * scale
                    for iy in rows { for ix in cols { d[iy * g.width + ix] += share } }
                }
            }
        }
        return dx
    }
}
