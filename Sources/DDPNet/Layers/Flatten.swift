import DDPKernels

/// [n, c, h, w] to [n, c*h*w]: a change of shape only, no copy.
public final class Flatten: Layer {
    public var needsInputGradient = true
    private var inputShape: Shape?

    public init() {}
    public var summary: String { "Flatten(start_dim=1, end_dim=-1)" }
    public func outputShape(for input: Shape) throws -> Shape { Shape(n: input.n, features: input.perSample) }
    public func configure(input: Shape, maxBatch: Int, index: Int) throws {}

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        inputShape = x.shape
        return Tensor(x.data, Shape(n: x.shape.n, features: x.shape.perSample))
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        guard let shape = inputShape else { throw LayerError("Flatten.backward called before forward") }
        return Tensor(dy.data, shape.withBatch(dy.shape.n))
    }
}
