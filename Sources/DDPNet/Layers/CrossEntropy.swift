import DDPKernels

/// Softmax cross-entropy over logits [n, classes], summed (not averaged) over the batch:
/// the trainer divides by the global sample count after the allreduce, which makes the
/// gradient the exact mean over the global batch (DESIGN step 6). Numerically stable
/// (log-sum-exp with the row maximum subtracted). With label smoothing ε the target is
/// (1-ε) on the true class plus ε/classes on every class, as in PyTorch.
public final class SoftmaxCrossEntropy {
    public let classes: Int
    public let labelSmoothing: Float
    private let gradient: FloatBuffer

    public init(classes: Int, maxBatch: Int, labelSmoothing: Float = 0) {
        self.classes = classes
        self.labelSmoothing = labelSmoothing
        gradient = FloatBuffer(capacity: maxBatch * classes)
    }

    public struct Result {
        /// Sum of per-sample losses, accumulated in Float64.
        public var lossSum: Double
        /// Samples whose largest logit is the label (first maximum on ties).
        public var correct: Int
        /// d(lossSum)/d(logits).
        public var gradient: Tensor
    }

    /// Loss, correct count and gradient for logits and integer labels. With `shardSums`,
    /// also per shard of `shardSize` samples its loss sum and correct count, at [2j] and
    /// [2j + 1] (each shard's losses added in sample order, from zero).
    public func callAsFunction(_ logits: Tensor, labels: UnsafePointer<Int32>, shardSize: Int? = nil,
                               shardSums: UnsafeMutablePointer<Double>? = nil) -> Result {
        let n = logits.shape.n, k = classes
        precondition(logits.shape.perSample == k, "SoftmaxCrossEntropy: logits \(logits.shape) for \(k) classes")
        precondition(n <= gradient.capacity / max(k, 1),
                     "\(LayerError.batchTooLarge("SoftmaxCrossEntropy", batch: n, capacity: gradient.capacity / max(k, 1)))")
        let grad = gradient.tensor(logits.shape)
        var lossSum = 0.0
        var correct = 0
        let smooth = Double(labelSmoothing)
        if let shardSums { shardSums.update(repeating: 0, count: 2 * shardCount(batch: n, shardSize: shardSize)) }
        for i in 0..<n {
            let row = logits.data + i * k
            let g = grad.data + i * k
            var best = 0
            var maxLogit = row[0]
            for j in 1..<k where row[j] > maxLogit { maxLogit = row[j]; best = j }
            var sumExp = 0.0
            // exp(z_j - max) kept in the gradient row until the probabilities replace it.
            for j in 0..<k { let e = expf(row[j] - maxLogit); g[j] = e; sumExp += Double(e) }
            let logSumExp = Double(maxLogit) + log(sumExp)
            let label = Int(labels[i])
            if best == label { correct += 1 }
            // loss = -Σ_j t_j log p_j with t = (1-ε) onehot + ε/k
            var loss = (1 - smooth) * (logSumExp - Double(row[label]))
            if smooth > 0 {
                var meanNegLogP = 0.0
                for j in 0..<k { meanNegLogP += logSumExp - Double(row[j]) }
                loss += smooth * meanNegLogP / Double(k)
            }
            lossSum += loss
            if let shardSums {
                let j = shardSize.map { i / $0 } ?? 0
                shardSums[2 * j] += loss
                if best == label { shardSums[2 * j + 1] += 1 }
            }
            let inv = 1.0 / sumExp
            for j in 0..<k {
                let p = Double(g[j]) * inv
                let target = (j == label ? 1 - smooth : 0) + smooth / Double(k)
                g[j] = Float(p - target)
            }
        }
        return Result(lossSum: lossSum, correct: correct, gradient: grad)
    }
}


#if canImport(Glibc)
import Glibc
#endif
