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
    /// The batch the buffers were sized for.
    private var capacity = 0
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
        capacity = maxBatch
        output = FloatBuffer(capacity: maxBatch * input.perSample)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
        mask = FloatBuffer(capacity: maxBatch * input.perSample)
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(x.shape, capacity: capacity)
        try validate()
        masked = context.training && p > 0
        guard masked else { return x }
        let generator = Philox(seed: context.seed, purpose: .dropout)
        let perSample = x.shape.perSample, scale = 1 / (1 - p)
        // unit(w) >= p, i.e. (w >> 8)·2^-24 >= p, is (w >> 8) >= ceil(p·2^24), exactly.
        let threshold = UInt32((p * 16_777_216).rounded(.up))
        let layer = UInt32(truncatingIfNeeded: layerIndex), step = UInt32(truncatingIfNeeded: context.step)
        for s in 0..<x.shape.n {
            let sample = UInt32(truncatingIfNeeded: context.sampleID(s))
            let m = mask.pointer + s * perSample
            var j = 0
            // 32 elements (eight blocks) at a time in vector registers, then block by block.
            while j + 32 <= perSample {
                let w = Dropout.blocks(generator, UInt32(truncatingIfNeeded: j >> 2), layer, step, sample)
                for lane in 0..<8 {
                    let e = m + j + 4 * lane
                    e[0] = w.0[lane] >> 8 >= threshold ? scale : 0
                    e[1] = w.1[lane] >> 8 >= threshold ? scale : 0
                    e[2] = w.2[lane] >> 8 >= threshold ? scale : 0
                    e[3] = w.3[lane] >> 8 >= threshold ? scale : 0
                }
                j += 32
            }
            while j < perSample {
                let r = generator.block(UInt32(truncatingIfNeeded: j >> 2), layer, step, sample)
                m[j] = r.0 >> 8 >= threshold ? scale : 0
                if j + 1 < perSample { m[j + 1] = r.1 >> 8 >= threshold ? scale : 0 }
                if j + 2 < perSample { m[j + 2] = r.2 >> 8 >= threshold ? scale : 0 }
                if j + 3 < perSample { m[j + 3] = r.3 >> 8 >= threshold ? scale : 0 }
                j += 4
            }
        }
        let y = output.tensor(x.shape)
        let src = x.data, dst = y.data, m = mask.pointer
        for i in 0..<x.count { dst[i] = src[i] * m[i] }
        return y
    }

    /// `Philox.block` for the eight counters (c0 + 0...7, c1, c2, c3), lane by lane.
    @inline(__always)
    private static func blocks(_ g: Philox, _ c0: UInt32, _ c1: UInt32, _ c2: UInt32, _ c3: UInt32)
        -> (SIMD8<UInt32>, SIMD8<UInt32>, SIMD8<UInt32>, SIMD8<UInt32>) {
        var x0 = SIMD8<UInt32>(0, 1, 2, 3, 4, 5, 6, 7) &+ c0
        var x1 = SIMD8<UInt32>(repeating: c1), x2 = SIMD8<UInt32>(repeating: c2), x3 = SIMD8<UInt32>(repeating: c3)
        var k0 = g.key0, k1 = g.key1
        for _ in 0..<10 {
            let p0 = SIMD8<UInt64>(truncatingIfNeeded: x0) &* 0xD251_1F53
            let p1 = SIMD8<UInt64>(truncatingIfNeeded: x2) &* 0xCD9E_8D57
            x0 = SIMD8<UInt32>(truncatingIfNeeded: p1 &>> 32) ^ x1 ^ k0
            x1 = SIMD8<UInt32>(truncatingIfNeeded: p1)
            x2 = SIMD8<UInt32>(truncatingIfNeeded: p0 &>> 32) ^ x3 ^ k1
            x3 = SIMD8<UInt32>(truncatingIfNeeded: p0)
            k0 = k0 &+ 0x9E37_79B9
            k1 = k1 &+ 0xBB67_AE85
        }
        return (x0, x1, x2, x3)
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        guard masked else { return dy }
        let dx = inputGrad.tensor(dy.shape)
        guard needsInputGradient else { return dx }
        let g = dy.data, d = dx.data, m = mask.pointer
        for i in 0..<dy.count { d[i] = g[i] * m[i] }
        return dx
    }
}
