import DDPKernels

/// x for x > 0, alpha·(exp(x) - 1) otherwise.
public final class ELU: Layer {
    public let alpha: Float
    public var needsInputGradient = true
    private var buffers = ActivationBuffers()

    public init(alpha: Float = 1) { self.alpha = alpha }
    public var summary: String { "ELU(alpha=\(alpha))" }
    public func outputShape(for input: Shape) throws -> Shape { input }
    public func configure(input: Shape, maxBatch: Int, index: Int) throws { buffers.configure(input, maxBatch: maxBatch) }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        let y = try buffers.forward(x, layer: "ELU")
        let src = x.data, dst = y.data, a = alpha
        for i in 0..<x.count { let v = src[i], e = a * vexpm1(min(v, 0)); dst[i] = v > 0 ? v : e }
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        let (x, y, dx) = try buffers.backward(dy, layer: "ELU")
        guard needsInputGradient else { return dx }
        let src = x.data, out = y.data, g = dy.data, d = dx.data, a = alpha
        // For x <= 0, d/dx alpha·(exp(x) - 1) = alpha·exp(x) = y + alpha.
        for i in 0..<dy.count { let gi = g[i], yi = out[i]; d[i] = src[i] > 0 ? gi : gi * (yi + a) }
        return dx
    }
}
