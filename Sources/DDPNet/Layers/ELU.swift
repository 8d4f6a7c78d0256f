import DDPKernels

/// x for x > 0, alpha·(exp(x) - 1) otherwise.
public final class ELU: ElementwiseActivation {
    public let alpha: Float

    public init(alpha a: Float = 1) {
        alpha = a
        super.init(name: "ELU", summary: "ELU(alpha=\(a))", function: { x, y, n in
            for i in 0..<n { let v = x[i], e = a * vexpm1(min(v, 0)); y[i] = v > 0 ? v : e }
        }, derivative: { x, y, g, d, n in
            // For x <= 0, d/dx alpha·(exp(x) - 1) = alpha·exp(x) = y + alpha.
            for i in 0..<n { let gi = g[i], yi = y[i]; d[i] = x[i] > 0 ? gi : gi * (yi + a) }
        })
    }
}
