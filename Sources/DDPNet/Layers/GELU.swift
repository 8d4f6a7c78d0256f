import DDPKernels

/// x·Φ(x) with the normal CDF in its erf form, Φ(x) = (1 + erf(x/√2))/2 (PyTorch's default,
/// approximate='none'; erf to 1.5e-7, as PyTorch's vectorized CPU kernel).
public final class GELU: Layer {
    public var needsInputGradient = true
    private var buffers = ActivationBuffers()

    public init() {}
    public var summary: String { "GELU(approximate='none')" }
    public func outputShape(for input: Shape) throws -> Shape { input }
    public func configure(input: Shape, maxBatch: Int, index: Int) throws { buffers.configure(input, maxBatch: maxBatch) }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        let y = try buffers.forward(x, layer: "GELU")
        let src = x.data, dst = y.data
        let invSqrt2: Float = Float(0.5).squareRoot()
        for i in 0..<x.count { dst[i] = 0.5 * src[i] * (1 + verf(src[i] * invSqrt2)) }
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        let (x, _, dx) = try buffers.backward(dy, layer: "GELU")
        guard needsInputGradient else { return dx }
        let src = x.data, g = dy.data, d = dx.data
        let invSqrt2: Float = Float(0.5).squareRoot(), invSqrt2Pi: Float = 1 / (2 * Float.pi).squareRoot()
        // d/dx x·Φ(x) = Φ(x) + x·φ(x)
        for i in 0..<dy.count {
            let v = src[i]
            let cdf = 0.5 * (1 + verf(v * invSqrt2))
            let pdf = invSqrt2Pi * vexp(-0.5 * v * v)
            d[i] = g[i] * (cdf + v * pdf)
        }
        return dx
    }
}
