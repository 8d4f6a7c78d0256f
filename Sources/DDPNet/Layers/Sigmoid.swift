import DDPKernels

/// 1 / (1 + exp(-x)); the gradient y·(1 - y) is taken from the output.
public final class Sigmoid: Layer {
    public var needsInputGradient = true
    private var buffers = ActivationBuffers()

    public init() {}
    public var summary: String { "Sigmoid()" }
    public func outputShape(for input: Shape) throws -> Shape { input }
    public func configure(input: Shape, maxBatch: Int, index: Int) throws { buffers.configure(input, maxBatch: maxBatch) }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        let y = try buffers.forward(x, layer: "Sigmoid")
        let src = x.data, dst = y.data
        for i in 0..<x.count { dst[i] = 1 / (1 + vexp(-src[i])) }
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        let (_, y, dx) = try buffers.backward(dy, layer: "Sigmoid")
        guard needsInputGradient else { return dx }
        let out = y.data, g = dy.data, d = dx.data
        for i in 0..<dy.count { d[i] = g[i] * out[i] * (1 - out[i]) }
        return dx
    }
}
