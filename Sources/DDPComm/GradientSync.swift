/// DESIGN's steps 5 and 6: one allreduce moves this rank's gradient sum together with its
/// loss sum, correct count and sample count (three Floats right after the gradients, in the
/// same buffer: `tailCount`, the room the model leaves there), then the gradients are divided
/// by the global sample count: the exact gradient of the mean loss over the global batch,
/// whatever the slice sizes, empty ones included (I3).
public struct GradientSync: Sendable {
    /// Floats after the gradients: loss sum, correct count, sample count.
    public static let tailCount = 3
    public let parameterCount: Int

    public init(parameterCount: Int) { self.parameterCount = parameterCount }

    /// Floats the allreduce moves.
    public var count: Int { parameterCount + Self.tailCount }

    /// Writes this rank's loss sum, correct count and sample count after its gradients.
    public func pack(_ g: UnsafeMutablePointer<Float>, lossSum: Double, correct: Int, samples: Int) {
        g[parameterCount] = Float(lossSum)
        g[parameterCount + 1] = Float(correct)
        g[parameterCount + 2] = Float(samples)
    }

    /// Sums gradients and counts over the ranks, in place.
    public func allreduce(_ g: UnsafeMutablePointer<Float>, world: Communicator) throws {
        try world.allreduce(g, count: count)
    }

    /// After `allreduce`: divides the gradients by the global sample count; returns the mean
    /// loss, the accuracy and that count.
    public func mean(_ g: UnsafeMutablePointer<Float>) -> (loss: Double, accuracy: Double, samples: Float) {
        let samples = g[parameterCount + 2]
        let scale = 1 / samples
        for i in 0..<parameterCount { g[i] *= scale }
        return (Double(g[parameterCount]) / Double(samples), Double(g[parameterCount + 1]) / Double(samples), samples)
    }
}
