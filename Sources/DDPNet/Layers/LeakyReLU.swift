import DDPKernels

/// x for x > 0, negativeSlope·x otherwise (the gradient at 0 is the negative slope's, as in PyTorch).
public final class LeakyReLU: Layer {
    public let negativeSlope: Float
    public var needsInputGradient = true
    private var buffers = ActivationBuffers()

    public init(negativeSlope: Float = 0.01) { self.negativeSlope = negativeSlope }
    public var summary: String { "LeakyReLU(negative_slope=\(negativeSlope))" }
    public func outputShape(for input: Shape) throws -> Shape { input }
    public func configure(input: Shape, maxBatch: Int, index: Int) throws { buffers.configure(input, maxBatch: maxBatch) }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        let y = try buffers.forward(x, layer: "LeakyReLU")
        let src = x.data, dst = y.data, slope = negativeSlope
        for i in 0..<x.count { dst[i] = src[i] > 0 ? src[i] : src[i] * slope }
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        let (x, _, dx) = try buffers.backward(dy, layer: "LeakyReLU")
        guard needsInputGradient else { return dx }
        let src = x.data, g = dy.data, d = dx.data, slope = negativeSlope
        for i in 0..<dy.count { let gi = g[i]; d[i] = src[i] > 0 ? gi : gi * slope }
        return dx
    }
}
