import DDPKernels

/// 1 / (1 + exp(-x)); the gradient y·(1 - y) is taken from the output.
public final class Sigmoid: ElementwiseActivation {
    public init() {
        super.init(name: "Sigmoid", function: { x, y, n in
            for i in 0..<n { y[i] = 1 / (1 + vexp(-x[i])) }
        }, derivative: { _, y, g, d, n in
            for i in 0..<n { d[i] = g[i] * y[i] * (1 - y[i]) }
        })
    }
}
