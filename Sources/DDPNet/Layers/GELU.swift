import DDPKernels

/// x·Φ(x) with the normal CDF in its erf form, Φ(x) = (1 + erf(x/√2))/2 (PyTorch's default,
/// approximate='none'; erf to 1.5e-7, as PyTorch's vectorized CPU kernel).
public final class GELU: ElementwiseActivation {
    public init() {
        let invSqrt2: Float = Float(0.5).squareRoot(), invSqrt2Pi: Float = 1 / (2 * Float.pi).squareRoot()
        super.init(name: "GELU", summary: "GELU(approximate='none')", function: { x, y, n in
            for i in 0..<n { y[i] = 0.5 * x[i] * (1 + verf(x[i] * invSqrt2)) }
        }, derivative: { x, _, g, d, n in
            // d/dx x·Φ(x) = Φ(x) + x·φ(x)
            for i in 0..<n {
                let v = x[i]
                let cdf = 0.5 * (1 + verf(v * invSqrt2))
                let pdf = invSqrt2Pi * vexp(-0.5 * v * v)
                d[i] = g[i] * (cdf + v * pdf)
            }
        })
    }
}
