import DDPKernels

/// [n, c, h, w] -> [n, c, 1, 1], the mean of each channel plane: PyTorch's
/// AdaptiveAvgPool2d(1). Like it, it is followed by a Flatten in a model, which keeps layer
/// indices (and so state-dict names) the same as in the PyTorch nn.Sequential.
public final class GlobalAvgPool2d: Layer {
    public var needsInputGradient = true
    private var output: FloatBuffer!
    /// The batch the buffers were sized for.
    private var capacity = 0
    private var inputGrad: FloatBuffer!
    private var inputShape: Shape?

    public init() {}
    public var summary: String { "AdaptiveAvgPool2d(output_size=1)" }

    public func outputShape(for input: Shape) throws -> Shape {
        guard input.rank == 4 else { throw LayerError("GlobalAvgPool2d expects input [n, c, h, w], got \(input.sampleDims)") }
        return Shape(n: input.n, c: input.c, h: 1, w: 1)
    }

    public func configure(input: Shape, maxBatch: Int, index: Int) throws {
        _ = try outputShape(for: input)
        capacity = maxBatch
        output = FloatBuffer(capacity: maxBatch * input.c)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(x.shape, capacity: capacity)
        let planes = x.shape.n * x.shape.c, area = x.shape.spatial
        let y = output.tensor(Shape(n: x.shape.n, c: x.shape.c, h: 1, w: 1))
        let scale = 1 / Float(area)
        for i in 0..<planes { y.data[i] = sumFloat(x.data + i * area, count: area) * scale }
        inputShape = x.shape
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        guard let shape = inputShape else { throw LayerError("GlobalAvgPool2d.backward called before forward") }
        let dx = inputGrad.tensor(shape)
        guard needsInputGradient else { return dx }
        let area = shape.spatial, scale = 1 / Float(area)
        for i in 0..<(shape.n * shape.c) {
            let d = dx.data + i * area, share = dy.data[i] * scale
            for j in 0..<area { d[j] = share }
        }
        return dx
    }
}
