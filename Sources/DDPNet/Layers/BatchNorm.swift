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

    private var isSpatial: Bool?
    private var gamma: UnsafeMutablePointer<Float>!
    private var beta: UnsafeMutablePointer<Float>!
    private var gammaGrad: UnsafeMutablePointer<Float>!
    private var betaGrad: UnsafeMutablePointer<Float>!
    private var runningMean: UnsafeMutablePointer<Float>!
    private var runningVar: UnsafeMutablePointer<Float>!
    private var batchesTracked: UnsafeMutablePointer<Int64>!
    private var output: FloatBuffer!
    /// The batch the buffers were sized for.
    private var capacity = 0
    private var inputGrad: FloatBuffer!
    /// Per channel: the mean and 1/sqrt(var + eps) the last forward normalized with.
    private var mean: DoubleBuffer!
    private var invStd: DoubleBuffer!
    private var m2: DoubleBuffer!
    /// Σdy and Σdy·x̂ per channel, side by side so that one reducer call sums both.
    private var sums: DoubleBuffer!
    /// Per-channel Float32 factors of the element loops (up to four per channel).
    private var coefficients: FloatBuffer!
    /// Per channel, the γ·invstd forward scaled with (backward recomputes forward's output).
    private var forwardScale: FloatBuffer!
    private var input: Tensor?
    private var trainedForward = false
    /// Samples per channel of the last training forward, over all ranks.
    private var globalCount = 0.0

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
        output = FloatBuffer(capacity: maxBatch * input.perSample)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
        mean = DoubleBuffer(capacity: features)
        invStd = DoubleBuffer(capacity: features)
        m2 = DoubleBuffer(capacity: features)
        sums = DoubleBuffer(capacity: 2 * features)
        coefficients = FloatBuffer(capacity: 4 * features)
        forwardScale = FloatBuffer(capacity: features)
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
        try checkBatch(x.shape, capacity: capacity)
        input = x
        trainedForward = context.training
        if context.training {
            try batchStatistics(x, context)
        } else {
            for c in 0..<features {
                mean.pointer[c] = Double(runningMean[c])
                invStd.pointer[c] = 1 / (Double(runningVar[c]) + Double(eps)).squareRoot()
            }
        }
        let y = output.tensor(x.shape)
        let n = x.shape.n, area = x.shape.spatial, mu = mean.pointer, scale = forwardScale.pointer
        for c in 0..<features { scale[c] = Float(invStd.pointer[c]) * gamma[c] }
        // Centre in Float64 (x may be far from 0 against its spread), then scale in Float32.
        // The fused ReLU is ReLU's own max(z, 0), which keeps NaN.
        if area == 1 {
            for s in 0..<n {
                let src = x.data + s * features, dst = y.data + s * features
                if fusesReLU {
                    for c in 0..<features { dst[c] = max(Float(Double(src[c]) - mu[c]) * scale[c] + beta[c], 0) }
                } else {
                    for c in 0..<features { dst[c] = Float(Double(src[c]) - mu[c]) * scale[c] + beta[c] }
                }
            }
        } else {
            for s in 0..<n {
                for c in 0..<features {
                    let offset = (s * features + c) * area
                    let src = x.data + offset, dst = y.data + offset
                    let m = mu[c], k = scale[c], shift = beta[c]
                    if fusesReLU {
                        for i in 0..<area { dst[i] = max(Float(Double(src[i]) - m) * k + shift, 0) }
                    } else {
                        for i in 0..<area { dst[i] = Float(Double(src[i]) - m) * k + shift }
                    }
                }
            }
        }
        return y
    }

    /// Fills `mean` and `invStd` with the global batch statistics and updates the running ones.
    private func batchStatistics(_ x: Tensor, _ context: ForwardContext) throws {
        let n = x.shape.n, area = x.shape.spatial
        let mu = mean.pointer, sq = m2.pointer
        mu.update(repeating: 0, count: features)
        sq.update(repeating: 0, count: features)
        var count = Double(n * area)
        // Two passes (mean, then centred squares): exact even when mean >> std. A 2-D input
        // runs along the rows, across channels, so that the loops vectorize.
        if area == 1 {
            for s in 0..<n {
                let row = x.data + s * features
                for c in 0..<features { mu[c] += Double(row[c]) }
            }
        } else {
            for s in 0..<n {
                for c in 0..<features { mu[c] += sum(x.data + (s * features + c) * area, count: area) }
            }
        }
        if count > 0 { for c in 0..<features { mu[c] /= count } }
        if area == 1 {
            for s in 0..<n {
                let row = x.data + s * features
                for c in 0..<features { let d = Double(row[c]) - mu[c]; sq[c] += d * d }
            }
        } else {
            for s in 0..<n {
                for c in 0..<features {
                    sq[c] += sumOfSquaredDeviations(x.data + (s * features + c) * area, count: area, mean: mu[c])
                }
            }
        }
        // Every rank calls the reducer, an empty one too, so that collectives match.
        try context.statistics.combineMoments(count: &count, mean: mu, m2: sq, channels: features)
        globalCount = count
        batchesTracked.pointee += 1
        guard count > 1 else {
            // Nothing to normalize on an empty slice; elsewhere it is PyTorch's error.
            if n == 0 { return }
            throw LayerError("Expected more than 1 value per channel when training, got input size \(x.shape.dims)")
        }
        let m = Double(momentum)
        for c in 0..<features {
            invStd.pointer[c] = 1 / (sq[c] / count + Double(eps)).squareRoot()
            runningMean[c] = Float((1 - m) * Double(runningMean[c]) + m * mu[c])
            runningVar[c] = Float((1 - m) * Double(runningVar[c]) + m * sq[c] / (count - 1))
        }
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        guard let x = input else { throw LayerError("BatchNorm.backward called before forward") }
        let n = x.shape.n, area = x.shape.spatial, mu = mean.pointer, inv = invStd.pointer
        let sumDy = sums.pointer, sumDyXhat = sums.pointer + features
        let scale = forwardScale.pointer, fused = fusesReLU
        sums.zero()
        // With the ReLU fused, dy is the gradient of ReLU(z): it reaches z only where z > 0.
        @inline(__always) func masked(_ g: Float, _ x: Float, _ c: Int) -> Float {
            !fused || Float(Double(x) - mu[c]) * scale[c] + beta[c] > 0 ? g : 0
        }
        // Σdy and Σdy·(x - μ) per channel; times invstd below gives Σdy·x̂.
        if area == 1 {
            for s in 0..<n {
                let src = x.data + s * features, grad = dy.data + s * features
                for c in 0..<features {
                    let g = Double(masked(grad[c], src[c], c))
                    sumDy[c] += g
                    sumDyXhat[c] += g * (Double(src[c]) - mu[c])
                }
            }
        } else {
            for s in 0..<n {
                for c in 0..<features {
                    let offset = (s * features + c) * area
                    let (a, b) = fused
                        ? reluMaskedGradientSums(dy.data + offset, x.data + offset, count: area, mean: mu[c], scale: scale[c], shift: beta[c])
                        : gradientSums(dy.data + offset, x.data + offset, count: area, mean: mu[c])
                    sumDy[c] += a
                    sumDyXhat[c] += b
                }
            }
        }
        // Local sums: the trainer all-reduces parameter gradients with the others.
        for c in 0..<features {
            sumDyXhat[c] *= inv[c]
            gammaGrad[c] = Float(sumDyXhat[c])
            betaGrad[c] = Float(sumDy[c])
        }
        let dx = inputGrad.tensor(x.shape)
        guard needsInputGradient else { return dx }
        // dx = k·(dy - a - x̂·b) with k = γ·invstd; in training a = Σdy/N and b = Σ(dy·x̂)/N
        // over the global batch (x̂ depends on every sample through the batch statistics);
        // in evaluation the statistics are constants and a = b = 0.
        let k = coefficients.pointer, invF = k + features, a = k + 2 * features, b = k + 3 * features
        if trainedForward { try context.statistics.sum(sums.pointer, count: 2 * features) }
        for c in 0..<features {
            k[c] = Float(Double(gamma[c]) * inv[c])
            invF[c] = Float(inv[c])
            a[c] = trainedForward ? Float(sumDy[c] / globalCount) : 0
            b[c] = trainedForward ? Float(sumDyXhat[c] / globalCount) : 0
        }
        if area == 1 {
            for s in 0..<n {
                let src = x.data + s * features, grad = dy.data + s * features, d = dx.data + s * features
                for c in 0..<features {
                    let xhat = Float(Double(src[c]) - mu[c]) * invF[c]
                    d[c] = k[c] * (masked(grad[c], src[c], c) - a[c] - xhat * b[c])
                }
            }
        } else {
            for s in 0..<n {
                for c in 0..<features {
                    let offset = (s * features + c) * area
                    let src = x.data + offset, grad = dy.data + offset, d = dx.data + offset
                    let m = mu[c], kc = k[c], invC = invF[c], ac = a[c], bc = b[c]
                    if fused {
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
        return dx
    }
}
