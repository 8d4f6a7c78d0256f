import DDPKernels

/// tanh(x); the gradient 1 - y² is taken from the output.
public final class Tanh: ElementwiseActivation {
    public init() {
        super.init(name: "Tanh", function: { x, y, n in
            // tanh|x| = e/(e + 2) with e = expm1(2|x|): accurate near 0, saturates to 1.
            for i in 0..<n {
                let v = x[i], e = vexpm1(2 * abs(v)), t = e / (e + 2)
                y[i] = v < 0 ? -t : t
            }
        }, derivative: { _, y, g, d, n in
            for i in 0..<n { d[i] = g[i] * (1 - y[i] * y[i]) }
        })
    }
}
