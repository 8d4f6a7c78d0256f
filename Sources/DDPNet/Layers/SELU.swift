import DDPKernels

/// scale·ELU(x, alpha) with the self-normalizing constants of Klambauer et al. (2017).
public final class SELU: Layer {
    public static let alpha: Float = 1.6732632423543772848170429916717
    public static let scale: Float = 1.0507009873554804934193349852946
    public var needsInputGradient = true
    private var buffers = ActivationBuffers()

    public init() {}
    public var summary: String { "SELU()" }
    public func outputShape(for input: Shape) throws -> Shape { input }
    public func configure(input: Shape, maxBatch: Int, index: Int) throws { buffers.configure(input, maxBatch: maxBatch) }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        let y = try buffers.forward(x, layer: "SELU")
        let src = x.data, dst = y.data, scale = SELU.scale, scaledAlpha = SELU.scale * SELU.alpha
        for i in 0..<x.count { let v = src[i], e = scaledAlpha * vexpm1(min(v, 0)); dst[i] = v > 0 ? scale * v : e }
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        let (x, y, dx) = try buffers.backward(dy, layer: "SELU")
        guard needsInputGradient else { return dx }
        let src = x.data, out = y.data, g = dy.data, d = dx.data
        let scale = SELU.scale, scaledAlpha = SELU.scale * SELU.alpha
        // For x <= 0 the derivative scale·alpha·exp(x) equals y + scale·alpha.
        for i in 0..<dy.count { let gi = g[i], yi = out[i]; d[i] = src[i] > 0 ? scale * gi : gi * (yi + scaledAlpha) }
        return dx
    }
}
