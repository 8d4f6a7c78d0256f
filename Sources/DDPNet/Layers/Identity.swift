import DDPKernels

/// Passes its input through (PyTorch's nn.Identity). `--bn none` puts it where batch norm
/// was, so layer indices, state-dict names and initial weights of the other layers stay.
public final class Identity: Layer {
    public var needsInputGradient = true
    public init() {}
    public var summary: String { "Identity()" }
    public func outputShape(for input: Shape) throws -> Shape { input }
    public func configure(input: Shape, maxBatch: Int, index: Int) throws {}
    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor { x }
    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor { dy }
}
