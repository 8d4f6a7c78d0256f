import DDPKernels

/// tanh(x); the gradient 1 - y² is taken from the output.
public final class Tanh: Layer {
    public var needsInputGradient = true
    private var buffers = ActivationBuffers()

    public init() {}
    public var summary: String { "Tanh()" }
    public func outputShape(for input: Shape) throws -> Shape { input }
    public func configure(input: Shape, maxBatch: Int, index: Int) throws { buffers.configure(input, maxBatch: maxBatch) }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        let y = try buffers.forward(x, layer: "Tanh")
        let src = x.data, dst = y.data
        // tanh|x| = e/(e + 2) with e = expm1(2|x|): accurate near 0, saturates to 1.
        for i in 0..<x.count {
            let v = src[i], e = vexpm1(2 * abs(v)), t = e / (e + 2)
            dst[i] = v < 0 ? -t : t
        }
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        let (_, y, dx) = try buffers.backward(dy, layer: "Tanh")
        guard needsInputGradient else { return dx }
        let out = y.data, g = dy.data, d = dx.data
        for i in 0..<dy.count { d[i] = g[i] * (1 - out[i] * out[i]) }
        return dx
    }
}
