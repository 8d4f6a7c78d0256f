import DDPKernels

/// scale·ELU(x, alpha) with the self-normalizing constants of Klambauer et al. (2017).
public final class SELU: ElementwiseActivation {
    public static let alpha: Float = 1.6732632423543772848170429916717
    public static let scale: Float = 1.0507009873554804934193349852946

    public init() {
        let scale = SELU.scale, scaledAlpha = SELU.scale * SELU.alpha
        super.init(name: "SELU", function: { x, y, n in
            for i in 0..<n { let v = x[i], e = scaledAlpha * vexpm1(min(v, 0)); y[i] = v > 0 ? scale * v : e }
        }, derivative: { x, y, g, d, n in
            // For x <= 0 the derivative scale·alpha·exp(x) equals y + scale·alpha.
            for i in 0..<n { let gi = g[i], yi = y[i]; d[i] = x[i] > 0 ? scale * gi : gi * (yi + scaledAlpha) }
        })
    }
}
