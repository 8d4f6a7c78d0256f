import DDPKernels

/// max(0, x). The gradient at exactly 0 is taken as 0, as in PyTorch.
public final class ReLU: Layer {
    public var needsInputGradient = true
    /// Set by `Model` when the batch norm before it applies the ReLU itself (`fusesReLU`):
    /// tensors then pass through unchanged both ways.
    public internal(set) var passesThrough = false
    private var output: FloatBuffer!
    /// The batch the buffers were sized for.
    private var capacity = 0
    private var inputGrad: FloatBuffer!
    private var lastOutput: Tensor?

    public init() {}
    public var summary: String { "ReLU()" }
    public func outputShape(for input: Shape) throws -> Shape { input }

    public func configure(input: Shape, maxBatch: Int, index: Int) throws {
        capacity = maxBatch
        output = FloatBuffer(capacity: maxBatch * input.perSample)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(x.shape, capacity: capacity)
        if passesThrough { return x }
        let y = output.tensor(x.shape)
        let src = x.data, dst = y.data
        for i in 0..<x.count { dst[i] = max(src[i], 0) }
        lastOutput = y
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        if passesThrough { return dy }
        guard let y = lastOutput else { throw LayerError("ReLU.backward called before forward") }
        let dx = inputGrad.tensor(dy.shape)
        let g = dy.data, out = y.data, d = dx.data
        // Both operands loaded unconditionally: a select, not a data-dependent branch.
        for i in 0..<dy.count { let gi = g[i]; d[i] = out[i] > 0 ? gi : 0 }
        return dx
    }
}
