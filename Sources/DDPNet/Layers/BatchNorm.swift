import DDPKernels

/// Batch normalization over the features of a 2-D input (PyTorch's BatchNorm1d) or the
/// channels of a 4-D input (BatchNorm2d), decided by the input rank in `configure`.
///
/// Training normalizes with the batch statistics, which the context's reducer makes global
/// in sync mode (DESIGN step 2); evaluation uses the running statistics. Statistics are
/// accumulated in Float64 and every element is centred in Float64 before it is scaled, so
/// inputs whose mean is large against their spread still normalize exactly.
public final class BatchNorm: Layer {
    public let features: Int
    public let eps: Float
    public let momentum: Float
    public var needsInputGradient = true
    /// Set by `Model` when a ReLU follows: the output is ReLU(BN(x)), and backward takes the
    /// gradient with respect to that and masks it where BN(x) ≤ 0, which it recomputes
    /// exactly as forward computed it. The ReLU then hands tensors through, saving one pass
    /// over the activations each way; every value is bitwise what the two layers give.
    public internal(set) var fusesReLU = false
    /// Set by `Model` when, after the fused ReLU, a 2x2 max pool on its fast path follows:
    /// forward pools each sample's ReLU(BN(x)) a chunk of channels at a time from a scratch
    /// (`poolScratch`, in L1) straight into the pool's output (the full-size output is never
    /// written nor read back), and backward rebuilds each chunk's gradient from the pool's
    /// output gradient and winners in that scratch, as the pool's and the ReLU's backward
    /// would have written it (a window whose
    /// maximum is not positive has no winner: the ReLU's mask, kept from forward rather than
    /// recomputed in both backward passes). Same bits, and two full-size tensors less
    /// through memory each way.
    public var fusesPool: Bool { pool != nil }
    private var pool: MaxPool2d?
    /// Set by `Model` (or a residual block) when, after the fused ReLU (and pool, if fused), a
    /// convolution follows that takes its input prepared (`Conv2d.takePreparedInput`):
    /// forward writes ReLU(BN(x)) (pooled, where the pooled rows are 8 wide or more)
    /// straight into that convolution's prepared input, the padded planes its kernels read,
    /// and returns that buffer as its output, which the ReLU (and pool) hand through; the
    /// convolution then prepares nothing, in forward or in backward. Same bits. (On planes of
    /// one pixel forward writes its own output as before, and the convolution, given another
    /// buffer, prepares it.)
    public var writesPreparedInput: Bool { preparedTaker != nil }
    private var preparedTaker: Conv2d?
    /// The taker's prepared batch and its layout.
    private var preparedOutput: (buffer: FloatBuffer, layout: DirectConvLayout)? {
        guard let conv = preparedTaker, let buffer = conv.preparedBatch, let l = conv.preparedInputLayout else { return nil }
        return (buffer, l)
    }
    /// Set by `Model` (or a residual block) when this layer directly follows a convolution
    /// that takes its gradients a group of samples at a time (`Conv2d.gradientGroupSize`):
    /// backward writes each group's input gradient to a group-sized scratch and runs the
    /// convolution's backward for that group from it while it is in cache (its weight
    /// gradient, and its input gradient if wanted), where the whole batch's input gradient
    /// went to memory for the convolution to read back. Same bits: the convolution's own
    /// groups, in its order.
    public var handsGradients: Bool { gradientTaker?.gradientGroupSize != nil }
    private var gradientTaker: Conv2d?
    /// One group's input gradient [group, C, H, W] for `gradientTaker`.
    private var groupScratch: FloatBuffer?
    /// A few channels' planes of one sample [poolChunk, H, W] (the fused pool's input or its
    /// input gradient), small enough to stay in L1 between their writer and their reader
    /// (the whole sample, 100 KB on fmnist-cnn's first layer, went through L2).
    private var poolScratch: FloatBuffer?
    /// Channels per `poolScratch`: 16 KB of planes.
    private var poolChunk = 1
    private var perSample = 0

    private var isSpatial: Bool?
    private var gamma: UnsafeMutablePointer<Float>!
    private var beta: UnsafeMutablePointer<Float>!
    private var gammaGrad: UnsafeMutablePointer<Float>!
    private var betaGrad: UnsafeMutablePointer<Float>!
    private var runningMean: UnsafeMutablePointer<Float>!
    private var runningVar: UnsafeMutablePointer<Float>!
    private var batchesTracked: UnsafeMutablePointer<Int64>!
    private var output: FloatBuffer!
    /// The batch the buffers were sized for (and so the most shards a batch has).
    private var capacity = 0
    private var inputGrad: FloatBuffer!
    /// Per shard of the last forward, per channel: the mean and 1/sqrt(var + eps) it
    /// normalized with (its statistics group's), and the group's sample count per channel.
    private var mean: DoubleBuffer!
    private var invStd: DoubleBuffer!
    private var groupCount: DoubleBuffer!
    /// Per shard: count, means, M2s (ShardMoments), and the running record.
    private var moments: DoubleBuffer!
    private var runningMoments: DoubleBuffer!
    /// Per shard: Σdy and Σdy·x̂ per channel, side by side so that one reducer call sums both.
    private var sums: DoubleBuffer!
    /// Per channel Float32 factors of the element loops (up to four per channel).
    private var coefficients: FloatBuffer!
    /// Per shard, per channel: the γ·invstd forward scaled with (backward recomputes
    /// forward's output).
    private var forwardScale: FloatBuffer!
    private var input: Tensor?
    private var trainedForward = false
    /// The shards of the last forward.
    private var shards = 1
    private var shardSize: Int?

    public init(features: Int, eps: Float = 1e-5, momentum: Float = 0.1) {
        self.features = features; self.eps = eps; self.momentum = momentum
    }

    public var summary: String {
        let name = isSpatial.map { $0 ? "BatchNorm2d" : "BatchNorm1d" } ?? "BatchNorm"
        return "\(name)(\(features), eps=\(eps), momentum=\(momentum), affine=True, track_running_stats=True)"
    }

    public func outputShape(for input: Shape) throws -> Shape {
        guard input.c == features else {
            throw LayerError("BatchNorm expects \(features) features (channels), got input \(input.sampleDims)")
        }
        return input
    }

    public func configure(input: Shape, maxBatch: Int, index: Int) throws {
        _ = try outputShape(for: input)
        isSpatial = input.rank == 4
        capacity = maxBatch
        perSample = input.perSample
        output = FloatBuffer(capacity: maxBatch * input.perSample)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
        let shards = max(maxBatch, 1)
        mean = DoubleBuffer(capacity: shards * features)
        invStd = DoubleBuffer(capacity: shards * features)
        groupCount = DoubleBuffer(capacity: shards)
        moments = DoubleBuffer(capacity: shards * ShardMoments.recordSize(channels: features))
        runningMoments = DoubleBuffer(capacity: ShardMoments.recordSize(channels: features))
        sums = DoubleBuffer(capacity: shards * 2 * features)
        coefficients = FloatBuffer(capacity: 4 * features)
        forwardScale = FloatBuffer(capacity: shards * features)
    }

    /// Pools through `candidate` (see `fusesPool`) when it runs its 2x2 fast path on this
    /// layer's spatial output; nil, or a pool it cannot take, undoes the fusion.
    func fusePool(_ candidate: MaxPool2d?) {
        pool?.passesThrough = false
        pool = nil
        guard let candidate, isSpatial == true, candidate.isEvenTwoByTwo else { return }
        pool = candidate
        candidate.passesThrough = true
        let area = perSample / features
        poolChunk = max(1, min(features, 4096 / max(area, 1)))
        if poolScratch == nil { poolScratch = FloatBuffer(capacity: poolChunk * area) }
    }

    /// Writes the prepared input of `conv` (the layer after the fused ReLU, or pool) as
    /// `writesPreparedInput` says, where it takes one; nil, or a convolution that does not,
    /// undoes it.
    func writePreparedInput(of conv: Conv2d?) {
        _ = preparedTaker?.takePreparedInput(false)
        preparedTaker = nil
        guard let conv, isSpatial == true, fusesReLU, pool?.poolsIntoPreparedPlanes ?? true,
              conv.takePreparedInput(true) != nil else { return }
        preparedTaker = conv
    }

    /// Runs the gradients of `conv` (the layer before this one) as `handsGradients` says,
    /// where it can take them; nil, or a convolution that cannot, undoes it.
    func handGradients(to conv: Conv2d?) {
        gradientTaker = nil
        guard let conv, isSpatial == true, let group = conv.largestGradientGroup else { return }
        gradientTaker = conv
        groupScratch = FloatBuffer(capacity: max(min(group, capacity), 1) * perSample)
    }

    public var parameterSpecs: [ParameterSpec] {
        [ParameterSpec(name: "weight", shape: [features], role: .normWeight, fanIn: features, fanOut: features),
         ParameterSpec(name: "bias", shape: [features], role: .normBias, fanIn: features, fanOut: features)]
    }

    public var bufferSpecs: [BufferSpec] {
        [BufferSpec(name: "running_mean", shape: [features], initialValue: 0),
         BufferSpec(name: "running_var", shape: [features], initialValue: 1),
         BufferSpec(name: "num_batches_tracked", shape: [], isCounter: true)]
    }

    public func bind(_ storage: LayerStorage) {
        gamma = storage.parameters[0]; beta = storage.parameters[1]
        gammaGrad = storage.gradients[0]; betaGrad = storage.gradients[1]
        runningMean = storage.buffers[0]; runningVar = storage.buffers[1]
        batchesTracked = storage.counters[0]
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try normalize(x, context, residual: nil, into: output)
    }

    /// A residual block's end in one pass: ReLU(BN(x) + residual) into `destination`, where
    /// `forward` and then the block's add and ReLU would write BN(x) and read it back. Each
    /// value is bitwise what the three steps give; backward is this layer's own (it
    /// recomputes from x). For a layer without a fused ReLU or pool.
    func forward(_ x: Tensor, addingResidual residual: Tensor, _ context: ForwardContext,
                 into destination: FloatBuffer) throws -> Tensor {
        precondition(!fusesReLU && pool == nil && residual.shape == x.shape, "BatchNorm: no residual add here")
        return try normalize(x, context, residual: residual.data, into: destination)
    }

    /// `forward`, into `destination`, with ReLU(· + residual) if a residual is given.
    private func normalize(_ x: Tensor, _ context: ForwardContext, residual: UnsafePointer<Float>?,
                           into destination: FloatBuffer) throws -> Tensor {
        try checkBatch(x.shape, capacity: capacity)
        input = x
        trainedForward = context.training
        let n = x.shape.n, area = x.shape.spatial, C = features
        shardSize = context.shardSize
        shards = context.shards(batch: n)
        if context.training {
            try batchStatistics(x, context)
        } else {
            for j in 0..<shards {
                for c in 0..<C {
                    mean.pointer[j * C + c] = Double(runningMean[c])
                    invStd.pointer[j * C + c] = 1 / (Double(runningVar[c]) + Double(eps)).squareRoot()
                }
            }
        }
        let y = destination.tensor(x.shape)
        // ReLU(BN(x)) into the next convolution's prepared input (`writesPreparedInput`).
        let prepared = residual == nil && area > 1 ? preparedOutput : nil
        for j in 0..<shards {
            let mu = mean.pointer + j * C, scale = forwardScale.pointer + j * C, inv = invStd.pointer + j * C
            for c in 0..<C { scale[c] = Float(inv[c]) * gamma[c] }
            // Centre in Float64 (x may be far from 0 against its spread), then scale in Float32.
            // The fused ReLU is ReLU's own max(z, 0), which keeps NaN.
            for s in shardRange(j, batch: n, shardSize: shardSize) {
                if area == 1 {
                    let src = x.data + s * C, dst = y.data + s * C
                    if let residual {
                        let r = residual + s * C
                        for c in 0..<C { dst[c] = max(Float(Double(src[c]) - mu[c]) * scale[c] + beta[c] + r[c], 0) }
                    } else if fusesReLU {
                        for c in 0..<C { dst[c] = max(Float(Double(src[c]) - mu[c]) * scale[c] + beta[c], 0) }
                    } else {
                        for c in 0..<C { dst[c] = Float(Double(src[c]) - mu[c]) * scale[c] + beta[c] }
                    }
                } else if let (buffer, l) = prepared, pool == nil {
                    // Row by row into the padded planes; the padding stays zero.
                    let h = x.shape.h, w = x.shape.w
                    for c in 0..<C {
                        let src = x.data + (s * C + c) * area, dst = buffer.pointer + (s * C + c) * l.channelLength + l.origin
                        let m = mu[c], k = scale[c], shift = beta[c]
                        for r in 0..<h {
                            normalizedReLURow(src + r * w, into: dst + r * l.outRowStride, count: w, mean: m, scale: k, shift: shift)
                        }
                    }
                } else if let pool {
                    // Fused with the pool (after the fused ReLU): a chunk of channels at a time
                    // into the scratch, then pooled.
                    let out = poolScratch!.pointer
                    for channels in poolChunks {
                        for c in channels {
                            let src = x.data + (s * C + c) * area, dst = out + (c - channels.lowerBound) * area
                            let m = mu[c], k = scale[c], shift = beta[c]
                            for i in 0..<area { dst[i] = max(Float(Double(src[i]) - m) * k + shift, 0) }
                        }
                        pool.poolSample(out, sample: s, channels: channels, intoPrepared: prepared.map { (buffer, l) in
                            (buffer.pointer + s * C * l.channelLength, l)
                        })
                    }
                } else {
                    let out = y.data + s * C * area
                    for c in 0..<C {
                        let src = x.data + (s * C + c) * area, dst = out + c * area
                        let m = mu[c], k = scale[c], shift = beta[c]
                        if let residual {
                            let r = residual + (s * C + c) * area
                            for i in 0..<area { dst[i] = max(Float(Double(src[i]) - m) * k + shift + r[i], 0) }
                        } else if fusesReLU {
                            for i in 0..<area { dst[i] = max(Float(Double(src[i]) - m) * k + shift, 0) }
                        } else {
                            for i in 0..<area { dst[i] = Float(Double(src[i]) - m) * k + shift }
                        }
                    }
                }
            }
        }
        let output = pool?.pooledOutput(batch: n) ?? y
        return prepared.map { $0.buffer.tensor(output.shape) } ?? output
    }

    /// The chunks of channels that go through `poolScratch` together (with the pool fused),
    /// else all channels at once.
    private var poolChunks: ChannelChunks { ChannelChunks(count: features, size: pool == nil ? features : poolChunk) }

    /// The output gradient [channels, H, W] of sample s: dy's, or, pooled, rebuilt in the
    /// scratch, the ReLU's mask applied already (the pool's `noWinner`).
    @inline(__always)
    private func sampleGradient(_ dy: Tensor, _ s: Int, channels: Range<Int>) -> UnsafeMutablePointer<Float> {
        guard let pool else { return dy.data + s * perSample + channels.lowerBound * (perSample / features) }
        pool.spreadSampleGradient(dy.data, sample: s, channels: channels, into: poolScratch!.pointer)
        return poolScratch!.pointer
    }

    /// Fills `mean`, `invStd` and `groupCount` per shard with its statistics group's
    /// (DESIGN step 2: each shard's moments, combined by the context's reducer) and updates
    /// the running statistics.
    private func batchStatistics(_ x: Tensor, _ context: ForwardContext) throws {
        let n = x.shape.n, area = x.shape.spatial, C = features
        let size = ShardMoments.recordSize(channels: C)
        for j in 0..<shards {
            let record = moments.pointer + j * size, mu = record + 1, sq = record + 1 + C
            mu.update(repeating: 0, count: C)
            sq.update(repeating: 0, count: C)
            let samples = shardRange(j, batch: n, shardSize: shardSize)
            let count = Double(samples.count * area)
            record[0] = count
            // Two passes (mean, then centred squares): exact even when mean >> std. A 2-D input
            // runs along the rows, across channels, so that the loops vectorize.
            if area == 1 {
                for s in samples {
                    let row = x.data + s * C
                    for c in 0..<C { mu[c] += Double(row[c]) }
                }
                if count > 0 { for c in 0..<C { mu[c] /= count } }
                for s in samples {
                    let row = x.data + s * C
                    for c in 0..<C { let d = Double(row[c]) - mu[c]; sq[c] += d * d }
                }
            } else {
                // Channel by channel, so that the second pass finds the channel's rows still in
                // cache (64 rows of 28x28 are 200 KB) rather than reading x from memory twice;
                // each channel still adds its samples' row sums in sample order.
                let first = x.data + samples.lowerBound * C * area, stride = C * area
                for c in 0..<C {
                    let channel = first + c * area
                    mu[c] = rowSums(channel, rows: samples.count, stride: stride, count: area)
                    if count > 0 { mu[c] /= count }
                    sq[c] = rowSumsOfSquaredDeviations(channel, rows: samples.count, stride: stride, count: area, mean: mu[c])
                }
            }
        }
        // Every rank calls the reducer, one without shards too, so that collectives match.
        let running = runningMoments.pointer
        try context.statistics.combineMoments(ShardMoments(records: moments.pointer, shards: shards, channels: C,
                                                           firstShard: context.firstShard, running: running))
        // Saturating: a loaded state dict may hold any Int64 here (it counts only; the running
        // statistics use `momentum`), and at Int64.max the next batch would overflow.
        if batchesTracked.pointee < Int64.max { batchesTracked.pointee += 1 }
        for j in 0..<shards {
            let record = moments.pointer + j * size, count = record[0]
            // An empty batch (one shard of none): nothing to normalize.
            if shardRange(j, batch: n, shardSize: shardSize).isEmpty { groupCount.pointer[j] = 0; continue }
            guard count > 1 else {
                throw LayerError("Expected more than 1 value per channel when training, got input size \(x.shape.dims)"
                                 + (shards > 1 ? " in a batch-norm group of \(Int(count)) value\(count == 1 ? "" : "s")" : ""))
            }
            groupCount.pointer[j] = count
            for c in 0..<C {
                mean.pointer[j * C + c] = record[1 + c]
                invStd.pointer[j * C + c] = 1 / (record[1 + C + c] / count + Double(eps)).squareRoot()
            }
        }
        // Nothing to follow on a rank whose statistics cover no sample (local, empty slice).
        let count = running[0]
        guard count > 1 else { return }
        let m = Double(momentum)
        for c in 0..<C {
            runningMean[c] = Float((1 - m) * Double(runningMean[c]) + m * running[1 + c])
            runningVar[c] = Float((1 - m) * Double(runningVar[c]) + m * running[1 + C + c] / (count - 1))
        }
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try backward(dy, context, addingToConvolutionInputGradient: nil)
    }

    /// `backward`; where this layer runs the convolution before it (`handsGradients`),
    /// `addend` (shaped like that convolution's input) is added to its input gradient, as
    /// the convolution's own backward would add it.
    func backward(_ dy: Tensor, _ context: ForwardContext, addingToConvolutionInputGradient addend: Tensor?) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        guard let x = input else { throw LayerError("BatchNorm.backward called before forward") }
        let n = x.shape.n, area = x.shape.spatial, C = features, fused = fusesReLU
        sums.zero()
        for j in 0..<shards {
            let mu = mean.pointer + j * C, inv = invStd.pointer + j * C, scale = forwardScale.pointer + j * C
            let sumDy = sums.pointer + j * 2 * C, sumDyXhat = sumDy + C
            // With the ReLU fused, dy is the gradient of ReLU(z): it reaches z only where z > 0.
            @inline(__always) func masked(_ g: Float, _ x: Float, _ c: Int) -> Float {
                !fused || Float(Double(x) - mu[c]) * scale[c] + beta[c] > 0 ? g : 0
            }
            // Σdy and Σdy·(x - μ) per channel over the shard; times invstd below gives Σdy·x̂.
            for s in shardRange(j, batch: n, shardSize: shardSize) {
                if area == 1 {
                    let src = x.data + s * C, grad = dy.data + s * C
                    for c in 0..<C {
                        let g = Double(masked(grad[c], src[c], c))
                        sumDy[c] += g
                        sumDyXhat[c] += g * (Double(src[c]) - mu[c])
                    }
                } else {
                    for channels in poolChunks {
                        let c0 = channels.lowerBound, grad = sampleGradient(dy, s, channels: channels)
                        let src = x.data + (s * C + c0) * area
                        // Two calls, so that each is compiled for its constant `masked`. The
                        // fused pool's gradient is masked already (`noWinner`).
                        if fused && pool == nil {
                            addGradientSums(grad, src, rows: channels.count, stride: area, count: area, mean: mu + c0, scale: scale + c0,
                                            shift: beta + c0, masked: true, sumG: sumDy + c0, sumGX: sumDyXhat + c0)
                        } else {
                            addGradientSums(grad, src, rows: channels.count, stride: area, count: area, mean: mu + c0, scale: scale + c0,
                                            shift: beta + c0, masked: false, sumG: sumDy + c0, sumGX: sumDyXhat + c0)
                        }
                    }
                }
            }
            // The shard's own sums are its parameter gradients (slot j); the trainer combines
            // them with the other shards' along the shard tree.
            let slot = j * context.gradientSlotStride
            for c in 0..<C {
                sumDyXhat[c] *= inv[c]
                gammaGrad[slot + c] = Float(sumDyXhat[c])
                betaGrad[slot + c] = Float(sumDy[c])
            }
        }
        let dx = inputGrad.tensor(x.shape)
        guard needsInputGradient else { return dx }
        // dx = k·(dy - a - x̂·b) with k = γ·invstd; in training a = Σdy/N and b = Σ(dy·x̂)/N
        // over the shard's statistics group (x̂ depends on every sample of the group through
        // its statistics); in evaluation the statistics are constants and a = b = 0.
        if trainedForward {
            try context.statistics.sum(sums.pointer, width: 2 * C, shards: shards, firstShard: context.firstShard)
        }
        let k = coefficients.pointer, invF = k + C, a = k + 2 * C, b = k + 3 * C
        // The convolution before, where this layer runs its gradients group by group.
        let taker = gradientTaker?.gradientGroupSize == nil ? nil : gradientTaker
        // Where it takes them, each group's gradient goes straight into its padded rows, 8
        // floats a store (rows of 7 went one float at a time, slower than their copy).
        let paddedRows = x.shape.w >= 8 ? taker?.handedGradientRows : nil
        let handedAddend = addend.map { UnsafePointer($0.data) }
        taker?.startHandedGradients(adding: handedAddend)
        for j in 0..<shards {
            let mu = mean.pointer + j * C, inv = invStd.pointer + j * C, scale = forwardScale.pointer + j * C
            let sumDy = sums.pointer + j * 2 * C, sumDyXhat = sumDy + C, total = groupCount.pointer[j]
            for c in 0..<C {
                k[c] = Float(Double(gamma[c]) * inv[c])
                invF[c] = Float(inv[c])
                a[c] = trainedForward ? Float(sumDy[c] / total) : 0
                b[c] = trainedForward ? Float(sumDyXhat[c] / total) : 0
            }
            // A group of samples at a time where the convolution before takes their input
            // gradient as its output gradient (its groups), else the whole shard.
            let range = shardRange(j, batch: n, shardSize: shardSize)
            taker?.startShard(j, context)
            let group = taker?.gradientGroupSize ?? max(range.count, 1)
            for first in Swift.stride(from: range.lowerBound, to: range.upperBound, by: group) {
                let samples = first..<min(first + group, range.upperBound)
                for s in samples {
                    if area == 1 {
                        let src = x.data + s * C, grad = dy.data + s * C, d = dx.data + s * C
                        for c in 0..<C {
                            let xhat = Float(Double(src[c]) - mu[c]) * invF[c]
                            let g = !fused || Float(Double(src[c]) - mu[c]) * scale[c] + beta[c] > 0 ? grad[c] : 0
                            d[c] = k[c] * (g - a[c] - xhat * b[c])
                        }
                    } else if let rows = paddedRows {
                        let h = x.shape.h, w = x.shape.w, out = rows.pointer + (s - first) * rows.sampleStride
                        for channels in poolChunks {
                            let chunkGrad = sampleGradient(dy, s, channels: channels)
                            for c in channels {
                                let src = x.data + (s * C + c) * area, grad = chunkGrad + (c - channels.lowerBound) * area
                                let d = out + c * rows.channelStride
                                let m = mu[c], kc = k[c], invC = invF[c], ac = a[c], bc = b[c], sc = scale[c], shift = beta[c]
                                inputGradientRows(d, rowStride: rows.rowStride, grad, src, rows: h, width: w, masked: fused && pool == nil,
                                                  mean: m, scale: sc, shift: shift, k: kc, a: ac, b: bc, invStd: invC)
                            }
                        }
                    } else {
                        let out = taker == nil ? dx.data + s * perSample : groupScratch!.pointer + (s - first) * perSample
                        for channels in poolChunks {
                            let chunkGrad = sampleGradient(dy, s, channels: channels)
                            for c in channels {
                                let src = x.data + (s * C + c) * area, grad = chunkGrad + (c - channels.lowerBound) * area
                                let d = out + c * area
                                let m = mu[c], kc = k[c], invC = invF[c], ac = a[c], bc = b[c]
                                if fused && pool == nil {
                                    reluMaskedInputGradient(d, grad, src, count: area, mean: m, scale: scale[c], shift: beta[c],
                                                            k: kc, a: ac, b: bc, invStd: invC)
                                } else {
                                    for i in 0..<area {
                                        let xhat = Float(Double(src[i]) - m) * invC
                                        d[i] = kc * (grad[i] - ac - xhat * bc)
                                    }
                                }
                            }
                        }
                    }
                }
                taker?.addHandedGroup(paddedRows == nil ? groupScratch!.pointer : nil, samples: samples, shard: j, context,
                                      adding: handedAddend)
            }
            taker?.finishShard(j, context)
        }
        return dx
    }
}

/// Consecutive ranges of `size` channels (the last one shorter) that cover 0..<count.
struct ChannelChunks: Sequence, IteratorProtocol {
    let count: Int, size: Int
    private var start = 0

    init(count: Int, size: Int) {
        precondition(size >= 1, "ChannelChunks needs chunks of at least one channel")
        self.count = count; self.size = size
    }

    mutating func next() -> Range<Int>? {
        guard start < count else { return nil }
        defer { start += size }
        return start..<Swift.min(start + size, count)
    }
}
