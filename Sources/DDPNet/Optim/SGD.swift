import DDPKernels

/// torch.optim.SGD with dampening 0: d = g + wd·p (weights only), then with momentum μ
/// b = μ·b + d and d = b (or d + μ·b with Nesterov); p -= lr·d.
public final class SGD: Optimizer {
    public let parameterCount: Int
    public let momentum: Float
    public let nesterov: Bool
    public let weightDecay: Float
    /// The momentum buffer when momentum is on; empty otherwise.
    public let state: FloatBuffer
    public var stepCount: Int64 = 0
    private let decay: DecayRanges

    public init(views: [ParameterView], parameterCount: Int, momentum: Float = 0, nesterov: Bool = false,
                weightDecay: Float = 0) throws {
        guard momentum >= 0, momentum.isFinite else { throw OptimizerError("SGD momentum must be >= 0, got \(momentum)") }
        guard weightDecay >= 0, weightDecay.isFinite else { throw OptimizerError("weight decay must be >= 0, got \(weightDecay)") }
        guard !nesterov || momentum > 0 else { throw OptimizerError("Nesterov momentum needs a momentum above 0") }
        self.parameterCount = parameterCount
        self.momentum = momentum
        self.nesterov = nesterov
        self.weightDecay = weightDecay
        decay = try DecayRanges(views: views, parameterCount: parameterCount)
        state = FloatBuffer(capacity: momentum == 0 ? 0 : parameterCount)
    }

    public var slotNames: [String] { momentum == 0 ? [] : ["momentum_buffer"] }

    public func step(parameters: UnsafeMutablePointer<Float>, gradients: UnsafeMutablePointer<Float>, learningRate lr: Float) {
        decay.forEachSegment(count: parameterCount) { range, decayed in
            let p = parameters + range.lowerBound, g = gradients + range.lowerBound
            let wd = decayed ? weightDecay : 0, n = range.count
            if momentum == 0 {
                for i in 0..<n { p[i] -= lr * (g[i] + wd * p[i]) }
                return
            }
            // The buffer starts at zero, so the first step stores μ·0 + d = d exactly,
            // which is PyTorch's first-step clone of the gradient.
            let b = state.pointer + range.lowerBound, mu = momentum
            if nesterov {
                for i in 0..<n {
                    let d = g[i] + wd * p[i]
                    b[i] = mu * b[i] + d
                    p[i] -= lr * (d + mu * b[i])
                }
            } else {
                for i in 0..<n {
                    b[i] = mu * b[i] + (g[i] + wd * p[i])
                    p[i] -= lr * b[i]
                }
            }
        }
        stepCount += 1
    }
}
