import DDPKernels

/// x for x > 0, negativeSlope·x otherwise (the gradient at 0 is the negative slope's, as in PyTorch).
public final class LeakyReLU: ElementwiseActivation {
    public let negativeSlope: Float

    public init(negativeSlope slope: Float = 0.01) {
        negativeSlope = slope
        super.init(name: "LeakyReLU", summary: "LeakyReLU(negative_slope=\(slope))", function: { x, y, n in
            for i in 0..<n { y[i] = x[i] > 0 ? x[i] : x[i] * slope }
        }, derivative: { x, _, g, d, n in
            for i in 0..<n { let gi = g[i]; d[i] = x[i] > 0 ? gi : gi * slope }
        })
    }
}
