import DDPKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// torch.optim.Adam, or torch.optim.AdamW when `decoupledWeightDecay` is set. At step t:
/// Adam adds wd·p to g (L2); AdamW instead scales p by 1 - lr·wd first. Then
/// m += (1-β1)(g - m); v = β2·v + (1-β2)·g²;
/// p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps). Decay applies to weights only.
public final class Adam: Optimizer {
    public let parameterCount: Int
    public let beta1: Float
    public let beta2: Float
    public let eps: Float
    public let weightDecay: Float
    public let decoupledWeightDecay: Bool
    /// exp_avg, then exp_avg_sq.
    public let state: FloatBuffer
    public var stepCount: Int64 = 0
    private let decay: DecayRanges

    public init(views: [ParameterView], parameterCount: Int, beta1: Float = 0.9, beta2: Float = 0.999,
                eps: Float = 1e-8, weightDecay: Float = 0, decoupledWeightDecay: Bool = false) throws {
        guard (0..<1).contains(beta1), (0..<1).contains(beta2) else {
            throw OptimizerError("Adam betas must lie in [0, 1), got (\(beta1), \(beta2))")
        }
        guard eps >= 0, eps.isFinite else { throw OptimizerError("Adam eps must be >= 0, got \(eps)") }
        guard weightDecay >= 0, weightDecay.isFinite else { throw OptimizerError("weight decay must be >= 0, got \(weightDecay)") }
        self.parameterCount = parameterCount
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.decoupledWeightDecay = decoupledWeightDecay
        decay = try DecayRanges(views: views, parameterCount: parameterCount)
        state = FloatBuffer(capacity: 2 * parameterCount)
    }

    public var slotNames: [String] { ["exp_avg", "exp_avg_sq"] }

    public func step(parameters: UnsafeMutablePointer<Float>, gradients: UnsafeMutablePointer<Float>, learningRate lr: Float) {
        stepCount += 1
        // Scalars in Float64 as PyTorch computes them, then used in Float32.
        let t = Double(stepCount)
        let stepSize = Float(Double(lr) / (1 - pow(Double(beta1), t)))
        let correction2 = Float((1 - pow(Double(beta2), t)).squareRoot())
        let b2 = beta2, eps = eps, oneMinusB1 = 1 - beta1, oneMinusB2 = 1 - beta2
        decay.forEachSegment(count: parameterCount) { range, decayed in
            let n = range.count
            let p = parameters + range.lowerBound, g = gradients + range.lowerBound
            let m = state.pointer + range.lowerBound, v = state.pointer + parameterCount + range.lowerBound
            let wd = decayed ? weightDecay : 0
            let l2 = decoupledWeightDecay ? 0 : wd
            let shrink = decoupledWeightDecay ? Float(1 - Double(lr) * Double(wd)) : 1
            for i in 0..<n {
                let pi = p[i] * shrink
                let gi = g[i] + l2 * pi
                m[i] += oneMinusB1 * (gi - m[i])
                v[i] = b2 * v[i] + oneMinusB2 * gi * gi
                p[i] = pi - stepSize * (m[i] / (v[i].squareRoot() / correction2 + eps))
            }
        }
    }
}
