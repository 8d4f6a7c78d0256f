import DDPKernels

/// Inverted dropout: in training each element is kept with probability 1 - p and scaled by
/// 1/(1 - p); the identity in evaluation and when p == 0.
///
/// Masks come from the counter-based generator, never from stored state (DESIGN I7): the
/// mask of element j of a sample is word j % 4 of Philox(seed, .dropout) at counter
/// (j / 4, layer index, step, sample identity). It depends on which sample it is, not on
/// where the sample sits in the local batch, so any split of a global batch over ranks
/// draws the same masks (DESIGN I2). Distinct (sample, element) pairs never share a word.
public final class Dropout: Layer {
    /// Drop probability in [0, 1); the trainer may override it between steps.
    public var p: Float
    public var needsInputGradient = true

    private var layerIndex = 0
    private var output: FloatBuffer!
    private var inputGrad: FloatBuffer!
    /// Per element 0 or 1/(1 - p), as applied by the last training forward.
    private var mask: FloatBuffer!
    /// Whether the last forward applied a mask (false: it was the identity).
    private var masked = false

    public init(p: Float) { self.p = p }
    public var summary: String { "Dropout(p=\(p), inplace=False)" }
    public func outputShape(for input: Shape) throws -> Shape { input }

    private func validate() throws {
        guard p >= 0 && p < 1 else { throw LayerError("dropout probability has to be in [0, 1), got \(p)") }
    }

    public func configure(input: Shape, maxBatch: Int, index: Int) throws {
        try validate()
        layerIndex = index
        output = FloatBuffer(capacity: maxBatch * input.perSample)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
        mask = FloatBuffer(capacity: maxBatch * input.perSample)
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try validate()
        masked = context.training && p > 0
        guard masked else { return x }
        let generator = Philox(seed: context.seed, purpose: .dropout)
        let perSample = x.shape.perSample, drop = p, scale = 1 / (1 - p)
        let layer = UInt32(truncatingIfNeeded: layerIndex), step = UInt32(truncatingIfNeeded: context.step)
        for s in 0..<x.shape.n {
            let sample = UInt32(truncatingIfNeeded: context.sampleID(s))
            let m = mask.pointer + s * perSample
            var j = 0
            while j < perSample {
                let r = generator.block(UInt32(truncatingIfNeeded: j >> 2), layer, step, sample)
                m[j] = Philox.unit(r.0) >= drop ? scale : 0
                if j + 1 < perSample { m[j + 1] = Philox.unit(r.1) >= drop ? scale : 0 }
                if j + 2 < perSample { m[j + 2] = Philox.unit(r.2) >= drop ? scale : 0 }
                if j + 3 < perSample { m[j + 3] = Philox.unit(r.3) >= drop ? scale : 0 }
                j += 4
            }
        }
        let y = output.tensor(x.shape)
        let src = x.data, dst = y.data, m = mask.pointer
        for i in 0..<x.count { dst[i] = src[i] * m[i] }
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        guard masked else { return dy }
        let dx = inputGrad.tensor(dy.shape)
        guard needsInputGradient else { return dx }
        let g = dy.data, d = dx.data, m = mask.pointer
        for i in 0..<dy.count { d[i] = g[i] * m[i] }
        return dx
    }
}
