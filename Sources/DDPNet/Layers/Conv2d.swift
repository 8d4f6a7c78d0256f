import DDPKernels

/// 2-D convolution over NCHW input, weight [out, in, k, k] as in PyTorch.
///
/// im2col unfolds the whole local batch into columns [C*k*k, n*OH*OW]; forward is then
/// W [OC, C*k*k] x columns, one GEMM per sample over its block of columns, written straight
/// into NCHW (each output element is the same K-long dot product as in one GEMM over the
/// whole batch: the batch only changes GEMM's column count). The weight gradient is one
/// GEMM per shard of the batch (each into its gradient slot). The input gradient goes sample by sample: Wᵀ x dy_s into a
/// one-sample column buffer that stays in cache, folded back by col2im at once, instead of
/// a batch-sized column gradient making a round trip through memory. A 1x1, stride-1,
/// unpadded convolution needs no unfolding: each sample [C, H*W] already is its own column
/// matrix, so it runs one GEMM per sample straight into NCHW.
///
/// A 3x3, padding-1 convolution of stride 1 or 2 with a multiple of 4 output channels runs
/// direct kernels instead (DirectConv3x3.swift): forward, weight gradient and input gradient
/// read padded planes with vector loads, no im2col and no GEMM packing (the input gradient
/// of an input channel count that is not a multiple of 4 still goes by GEMM). Stride-1 ones
/// with at least 32 input channels go by Winograd's F(2x2, 3x3) (Winograd.swift), forward,
/// weight gradient and input gradient each where it wins. Every output element is one FMA
/// chain in a fixed order per sample, so a sample's output does not depend on the rest of
/// the batch, nor on the BLAS threads.
public final class Conv2d: Layer {
    /// How the layer computes: `automatic` takes Winograd's or the direct 3x3 kernels where
    /// they apply and win; `direct` the direct kernels but never Winograd's; `winograd`
    /// Winograd's on every stride-1 shape the direct kernels take; `gemm` always unfolds
    /// with im2col (the last three kept to measure one against another).
    public enum Algorithm: Sendable { case automatic, direct, winograd, gemm }
    public let inChannels: Int
    public let outChannels: Int
    public let kernel: Int
    public let stride: Int
    public let padding: Int
    public let hasBias: Bool
    public var needsInputGradient = true
    public let algorithm: Algorithm

    private var geometry: ConvGeometry!
    private var isPointwise: Bool { kernel == 1 && stride == 1 && padding == 0 }
    private var isDirect: Bool {
        algorithm != .gemm && kernel == 3 && (stride == 1 || stride == 2) && padding == 1 && outChannels % 4 == 0
    }
    /// Whether a stride-1 direct convolution from `channels` to `outChannels` goes by
    /// Winograd's F(2x2, 3x3) (forward; the input gradient is the convolution from OC to C).
    /// Measured (docs/PERFORMANCE.md "Round three"): it wins where there are enough input
    /// channels to carry its transforms (32 and 64 did at 14x14 and 7x7; 1 and 16 did not).
    private func winogradWins(channels: Int, outChannels: Int) -> Bool {
        guard isDirect && stride == 1 && outChannels % 4 == 0 else { return false }
        return algorithm == .winograd || (algorithm == .automatic && channels >= 32)
    }
    /// The Winograd layouts of forward and of the input gradient, where they run.
    private var winograd: WinogradLayout?
    private var winogradGradient: WinogradLayout?
    /// Transformed weights [16, C, OC] (or [16, OC, C]); a group's transformed input (of
    /// the input gradient) and products, [16, max(C, OC), group x tiles] each; a row of
    /// outputs.
    private var winogradWeights: FloatBuffer?
    /// Both gradients by Winograd: backward runs the input gradient on each group of samples
    /// while the group's padded output gradient is in cache (`addGroupGradients`).
    private var winogradGradientsInGroups: Bool { winograd != nil && winogradGradient != nil }
    /// Both gradients by the direct kernels: backward runs the input gradient of each
    /// sample right after the weight gradient of its group, while the group's padded output
    /// gradient is in cache.
    private var directGradientsInGroups: Bool { winograd == nil && winogradGradient == nil && inChannels % 4 == 0 }
    /// Samples whose weight gradients share their lane sums: groups of at least 512 output
    /// positions (a 7x7 plane is 64 positions).
    private var weightGradientGroup: Int { max(1, 512 / layout.outLength) }
    private var winogradInput: FloatBuffer?
    private var winogradProducts: FloatBuffer?
    private var winogradRow: FloatBuffer?
    /// The weight gradient's transformed input of a group [16, C, group x tiles], computed
    /// again from the layer's input rather than kept from forward (see `addGroupGradients`).
    private var winogradGroupInput: FloatBuffer?
    /// The weight gradient's transformed output gradient of a group [16, OC, group x tiles].
    private var winogradGradients: FloatBuffer?
    /// dU's 8 lane sums, [16, OC / 2, C, 2, 8] (`winogradWeightProducts`).
    private var winogradLanes: FloatBuffer?
    /// The direct path's prepared input [group, C, channelLength] and padded output gradient
    /// [group or n, OC, gradChannel]: padded for stride 1, as the flat output for stride 2;
    /// their padding and gaps stay zero. The input is prepared a sample (or a Winograd group)
    /// at a time in forward and a weight-gradient group at a time, again from the kept input,
    /// in backward; the output gradient holds a group where each group's input gradient
    /// follows its weight gradient, else the whole batch. A group stays in cache, where the
    /// whole batch's copy went to memory and back.
    private var preparedInput: FloatBuffer?
    /// The whole batch's prepared input [n, C, channelLength] where the batch norm and ReLU
    /// before this layer write their output straight into it (`takePreparedInput`); its
    /// padding stays zero (they write the image only).
    private(set) var preparedBatch: FloatBuffer?
    private var preparedGrad: FloatBuffer?
    private var gradChannel = 0
    /// One sample's flat output [max(C, OC), outLength], and the repacked weights.
    private var flatOutput: FloatBuffer?
    /// The direct weight gradient's copy of a group's output gradient, channel pairs interleaved.
    private var weightGradientScratch: FloatBuffer?
    private var packedWeights: FloatBuffer?
    private var layout: DirectConvLayout!
    private var strideTwoInputGradient: StrideTwoInputGradient?
    private var weight: UnsafeMutablePointer<Float>!
    private var bias: UnsafeMutablePointer<Float>?
    private var weightGrad: UnsafeMutablePointer<Float>!
    private var biasGrad: UnsafeMutablePointer<Float>?
    /// Columns [C*k*k, n*P], kept from forward for the weight gradient.
    private var columns: FloatBuffer?
    /// [OC, n*P]: the output gradient permuted for the weight-gradient GEMM.
    private var product: FloatBuffer?
    /// [C*k*k, P]: one sample's column gradient.
    private var sampleColumns: FloatBuffer?
    private var output: FloatBuffer!
    /// The batch the buffers were sized for.
    private var capacity = 0
    private var inputGrad: FloatBuffer!
    private var input: Tensor?

    public init(inChannels: Int, outChannels: Int, kernel: Int, stride: Int = 1, padding: Int = 0, bias: Bool = true,
                algorithm: Algorithm = .automatic) {
        self.inChannels = inChannels; self.outChannels = outChannels; self.kernel = kernel
        self.stride = stride; self.padding = padding; self.hasBias = bias; self.algorithm = algorithm
    }

    public var summary: String {
        var s = "Conv2d(\(inChannels), \(outChannels), kernel_size=(\(kernel), \(kernel)), stride=(\(stride), \(stride))"
        if padding != 0 { s += ", padding=(\(padding), \(padding))" }
        if !hasBias { s += ", bias=False" }
        return s + ")"
    }

    private func geometry(for input: Shape) throws -> ConvGeometry {
        guard kernel >= 1, stride >= 1, padding >= 0 else {
            throw LayerError("Conv2d needs kernel >= 1, stride >= 1 and padding >= 0, got \(kernel), \(stride), \(padding)")
        }
        guard input.rank == 4, input.c == inChannels else {
            throw LayerError("Conv2d expects input [n, \(inChannels), h, w], got \(input.sampleDims)")
        }
        let g = ConvGeometry(channels: inChannels, height: input.h, width: input.w, kernelH: kernel, kernelW: kernel,
                             strideH: stride, strideW: stride, padH: padding, padW: padding)
        guard input.h + 2 * padding >= kernel, input.w + 2 * padding >= kernel else {
            throw LayerError("Conv2d kernel \(kernel) is larger than the padded input \(input.sampleDims)")
        }
        return g
    }

    public func outputShape(for input: Shape) throws -> Shape {
        let g = try geometry(for: input)
        return Shape(n: input.n, c: outChannels, h: g.outHeight, w: g.outWidth)
    }

    public func configure(input: Shape, maxBatch: Int, index: Int) throws {
        let g = try geometry(for: input)
        geometry = g
        capacity = maxBatch
        // Winograd's output transform writes past the last row (floats nobody reads).
        output = FloatBuffer(capacity: maxBatch * outChannels * g.outSpatial + winogradOutputSlack)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample + winogradOutputSlack)
        if isDirect {
            if winogradWins(channels: inChannels, outChannels: outChannels) {
                winograd = WinogradLayout(height: input.h, width: input.w)
            }
            if winogradWins(channels: outChannels, outChannels: inChannels) {
                winogradGradient = WinogradLayout(height: input.h, width: input.w)
            }
            // Winograd's transforms read a little past the padded plane (lanes no real
            // output uses): one more zero row keeps those reads inside the channel.
            let reach = (winograd ?? winogradGradient)?.reach ?? 0
            let l = DirectConvLayout(height: input.h, width: input.w, stride: stride, minimumChannelLength: reach)
            layout = l
            gradChannel = stride == 1 ? l.channelLength : StrideTwoInputGradient.channelLength(l)
            if stride == 2 { strideTwoInputGradient = StrideTwoInputGradient(l) }
            if let w = winograd ?? winogradGradient {
                let channels = max(inChannels, outChannels)
                winogradWeights = FloatBuffer(capacity: 16 * inChannels * outChannels)
                winogradInput = FloatBuffer(capacity: w.group * channels * w.floatsPerChannel)
                winogradProducts = FloatBuffer(capacity: w.group * channels * w.floatsPerChannel)
                winogradRow = FloatBuffer(capacity: 2 * w.rowTiles)
            }
            if let w = winograd {
                winogradGroupInput = FloatBuffer(capacity: w.group * inChannels * w.floatsPerChannel)
                winogradGradients = FloatBuffer(capacity: w.group * outChannels * w.floatsPerChannel)
                winogradLanes = FloatBuffer(capacity: 16 * outChannels * inChannels * 8)
            }
            // Winograd's forward prepares a group of samples at a time, and keeps their
            // transform (not the prepared input) for the weight gradient; with both gradients
            // by Winograd, backward pads the output gradient a group at a time too. Group-sized
            // buffers stay in cache between their writer and their readers.
            preparedInput = FloatBuffer(capacity: max(winograd?.group ?? min(weightGradientGroup, maxBatch), 1) * inChannels * l.channelLength)
            let gradSamples = winogradGradientsInGroups ? winograd!.group
                : directGradientsInGroups ? min(weightGradientGroup, maxBatch) : maxBatch
            preparedGrad = FloatBuffer(capacity: max(gradSamples, 1) * outChannels * gradChannel)
            // Stride 2's input gradient keeps its four phases' outputs.
            flatOutput = FloatBuffer(capacity: max(inChannels, outChannels) * l.outLength * (stride == 2 ? 4 : 1))
            packedWeights = FloatBuffer(capacity: outChannels * inChannels * 9)
            if winograd == nil {
                weightGradientScratch = FloatBuffer(capacity: conv3x3WeightGradientScratch(l, samples: max(min(weightGradientGroup, maxBatch), 1)))
            }
            // The input gradient of a channel count the kernel does not take goes by GEMM
            // and col2im, a sample at a time.
            if inChannels % 4 != 0 { sampleColumns = FloatBuffer(capacity: g.patchSize * g.outSpatial) }
        } else if !isPointwise {
            columns = FloatBuffer(capacity: g.patchSize * maxBatch * g.outSpatial)
            product = FloatBuffer(capacity: outChannels * maxBatch * g.outSpatial)
            sampleColumns = FloatBuffer(capacity: g.patchSize * g.outSpatial)
        }
    }

    public var parameterSpecs: [ParameterSpec] {
        let fanIn = inChannels * kernel * kernel, fanOut = outChannels * kernel * kernel
        var specs = [ParameterSpec(name: "weight", shape: [outChannels, inChannels, kernel, kernel], role: .weight,
                                   fanIn: fanIn, fanOut: fanOut)]
        if hasBias { specs.append(ParameterSpec(name: "bias", shape: [outChannels], role: .bias, fanIn: fanIn, fanOut: fanOut)) }
        return specs
    }

    public func bind(_ storage: LayerStorage) {
        weight = storage.parameters[0]; weightGrad = storage.gradients[0]
        if hasBias { bias = storage.parameters[1]; biasGrad = storage.gradients[1] }
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(x.shape, capacity: capacity)
        let g = geometry!
        let n = x.shape.n, oc = outChannels, p = g.outSpatial
        input = x
        let y = output.tensor(Shape(n: n, c: oc, h: g.outHeight, w: g.outWidth))
        if isPointwise {
            for s in 0..<n {
                sgemm(m: oc, n: p, k: inChannels, a: weight, lda: inChannels,
                      b: x.data + s * inChannels * p, ldb: p, c: y.data + s * oc * p, ldc: p)
            }
            if let bias { addBias(bias, to: y.data, samples: n, spatial: p) }
            return y
        }
        if isDirect {
            let c = inChannels, l = layout!, prepared = preparedInput!.pointer, flat = flatOutput!.pointer
            let packed = packedWeights!.pointer
            if let w = winograd {
                let u = winogradWeights!.pointer, v = winogradInput!.pointer, m = winogradProducts!.pointer
                winogradWeightTransform(weight, outChannels: oc, inChannels: c, transposed: false, into: u)
                let sample = c * l.channelLength
                for j in 0..<context.shards(batch: n) {
                    let samples = context.shard(j, batch: n)
                    for first in Swift.stride(from: samples.lowerBound, to: samples.upperBound, by: w.group) {
                        let count = min(w.group, samples.upperBound - first)
                        let group = preparedSamples(x, first..<(first + count), into: prepared)
                        winogradConv3x3(group, channels: c, channelStride: l.channelLength, sampleStride: sample,
                                        samples: count, u, outChannels: oc, w, bias: bias, v: v,
                                        m: m, scratch: winogradRow!.pointer, into: y.data + first * oc * p)
                    }
                }
                return y
            }
            packConv3x3Weights(weight, outChannels: oc, inChannels: c, into: packed)
            for s in 0..<n {
                conv3x3Flat(preparedSamples(x, s..<(s + 1), into: prepared), channels: c, packed, outChannels: oc, l, into: flat)
                unflattenOutput(flat, count: oc, l, bias: bias, into: y.data + s * oc * p)
            }
            return y
        }
        let cols = columns!.pointer
        let pixels = n * p
        im2col(x.data, batch: n, g, into: cols)
        if BLASThreads.current > 1 {
            // Several BLAS threads split one large GEMM well and small ones badly: one GEMM
            // over the batch into [OC, n, P], then permuted to NCHW (same dot products).
            let prod = product!.pointer
            sgemm(m: oc, n: pixels, k: g.patchSize, a: weight, lda: g.patchSize, b: cols, ldb: pixels, c: prod, ldc: pixels)
            for o in 0..<oc {
                let b = bias?[o] ?? 0
                for s in 0..<n {
                    let src = prod + o * pixels + s * p, dst = y.data + (s * oc + o) * p
                    for i in 0..<p { dst[i] = src[i] + b }
                }
            }
            return y
        }
        // y_s [OC, P] = W [OC, CKK] x columns_s [CKK, P], straight into NCHW.
        for s in 0..<n {
            sgemm(m: oc, n: p, k: g.patchSize, a: weight, lda: g.patchSize, b: cols + s * p, ldb: pixels,
                  c: y.data + s * oc * p, ldc: p)
        }
        if let bias { addBias(bias, to: y.data, samples: n, spatial: p) }
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try backward(dy, context, addingToInputGradient: nil)
    }

    /// `backward`, with `addend` (shaped like the input) added to the input gradient: a
    /// residual block's skip gradient. The direct kernels add it in the pass that writes the
    /// input gradient, the other paths in one pass after; each value is bitwise the sum of
    /// the two gradients.
    func backward(_ dy: Tensor, _ context: ForwardContext, addingToInputGradient addend: Tensor?) throws -> Tensor {
        if let addend, let x = input, addend.shape != x.shape {
            throw LayerError("Conv2d: a gradient of shape \(addend.shape.dims) cannot be added to one of \(x.shape.dims)")
        }
        var unadded = needsInputGradient ? addend.map { UnsafePointer($0.data) } : nil
        let dx = try inputAndParameterGradients(dy, context, adding: &unadded)
        if let more = unadded { add(more, into: dx.data, count: dx.count) }
        return dx
    }

    /// d[i] = d[i] + more[i]: the skip gradient added after a path that does not add it in
    /// its own pass.
    private func add(_ more: UnsafePointer<Float>, into d: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { d[i] = d[i] + more[i] }
    }

    /// The gradients; the direct kernels add `addend` into the input gradient and set it to nil.
    private func inputAndParameterGradients(_ dy: Tensor, _ context: ForwardContext,
                                            adding addend: inout UnsafePointer<Float>?) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        guard let x = input else { throw LayerError("Conv2d.backward called before forward") }
        let g = geometry!
        let n = dy.shape.n, oc = outChannels, p = g.outSpatial, ckk = g.patchSize
        let dx = inputGrad.tensor(x.shape)
        let shards = context.shards(batch: n), stride = context.gradientSlotStride
        if isPointwise {
            let c = inChannels
            for j in 0..<shards {
                let samples = context.shard(j, batch: n), slot = j * stride
                if samples.isEmpty { (weightGrad + slot).update(repeating: 0, count: oc * c) }
                for s in samples {
                    // dW += dy_s [OC, P] x x_sᵀ [P, C]
                    sgemm(transB: true, m: oc, n: c, k: p, a: dy.data + s * oc * p, lda: p,
                          b: x.data + s * c * p, ldb: p, beta: s == samples.lowerBound ? 0 : 1, c: weightGrad + slot, ldc: c)
                }
                if let biasGrad { sumBias(dy.data, into: biasGrad + slot, samples: samples, spatial: p) }
            }
            if needsInputGradient {
                for s in 0..<n {
                    // dx_s = Wᵀ [C, OC] x dy_s [OC, P]
                    sgemm(transA: true, m: c, n: p, k: oc, a: weight, lda: c,
                          b: dy.data + s * oc * p, ldb: p, c: dx.data + s * c * p, ldc: p)
                }
            }
            return dx
        }
        if isDirect { return directBackward(dy, x: x, dx: dx, context, adding: &addend) }
        let cols = columns!.pointer, dyp = product!.pointer
        let pixels = n * p
        // [n, OC, P] -> [OC, n, P]
        for o in 0..<oc {
            for s in 0..<n {
                (dyp + o * pixels + s * p).update(from: dy.data + (s * oc + o) * p, count: p)
            }
        }
        for j in 0..<shards {
            let samples = context.shard(j, batch: n), slot = j * stride
            let first = samples.lowerBound * p, count = samples.count * p
            // dW = dy' [OC, mP] x colsᵀ [mP, CKK], over the shard's columns
            sgemm(transB: true, m: oc, n: ckk, k: count, a: dyp + first, lda: pixels, b: cols + first, ldb: pixels,
                  c: weightGrad + slot, ldc: ckk)
            if let biasGrad {
                for o in 0..<oc {
                    biasGrad[slot + o] = sumFloat(dyp + o * pixels + first, count: count)
                }
            }
        }
        if needsInputGradient && BLASThreads.current > 1 {
            // One large GEMM for several BLAS threads: dcols = Wᵀ x dy' over the batch,
            // written over the columns (no longer needed), then folded back.
            sgemm(transA: true, m: ckk, n: pixels, k: oc, a: weight, lda: ckk, b: dyp, ldb: pixels, c: cols, ldc: pixels)
            dx.data.update(repeating: 0, count: dx.count)
            col2imOverwriting(cols, batch: n, g, into: dx.data)
        } else if needsInputGradient {
            // Per sample: dcols_s = Wᵀ [CKK, OC] x dy_s [OC, P], folded into dx_s while in cache
            // (a 1x1 stride-2 downsample's written whole, with its zeros, not added into zeros).
            let dcols = sampleColumns!.pointer, plane = x.shape.perSample
            let downsample = g.kernelH == 1 && g.kernelW == 1 && g.strideH == 2 && g.strideW == 2 && g.padH == 0 && g.padW == 0
            if !downsample { dx.data.update(repeating: 0, count: dx.count) }
            for s in 0..<n {
                sgemm(transA: true, m: ckk, n: p, k: oc, a: weight, lda: ckk, b: dy.data + s * oc * p, ldb: p, c: dcols, ldc: p)
                if downsample {
                    strideTwoPointwiseInputGradient(dcols, g, into: dx.data + s * plane)
                } else {
                    col2imOverwriting(dcols, batch: 1, g, into: dx.data + s * plane)
                }
            }
        }
        return dx
    }

    private func directBackward(_ dy: Tensor, x: Tensor, dx: Tensor, _ context: ForwardContext,
                                adding addend: inout UnsafePointer<Float>?) -> Tensor {
        let g = geometry!
        let n = dy.shape.n, oc = outChannels, c = inChannels, p = g.outSpatial
        let grouped = gradientGroupSize != nil
        if grouped && handedGroupsRan {
            // The batch norm after this layer has run every group (`BatchNorm.handsGradients`).
            handedGroupsRan = false
            precondition(addend == handedAddend, "Conv2d: backward's addend is not the one its batch norm added")
            addend = nil
            return dx
        }
        let preparedDy = preparedGrad!.pointer, plane = x.shape.perSample, sampleDy = oc * gradChannel
        // Per shard, into its gradient slot, a group of samples at a time; the groups start
        // at the shard's first sample, so they depend on the shard alone. Grouped, each
        // group's input gradient follows its weight gradient, and its padded output gradient
        // lands at the start of the buffer, in cache. Otherwise the input gradient reads the
        // padded output gradient of the whole batch after the weight gradient, where it goes
        // by a kernel (input channels a multiple of 4).
        let keepsPaddedDy = needsInputGradient && !grouped && c % 4 == 0
        if grouped { startGradients() }
        let group = winograd?.group ?? weightGradientGroup
        for j in 0..<context.shards(batch: n) {
            let samples = context.shard(j, batch: n)
            startShard(j, context)
            for first in Swift.stride(from: samples.lowerBound, to: samples.upperBound, by: group) {
                let count = min(group, samples.upperBound - first)
                addGroupGradients(dy.data + first * oc * p, samples: first..<(first + count), shard: j, context, x: x, dx: dx,
                                  paddingInto: preparedDy + (keepsPaddedDy ? first * sampleDy : 0),
                                  inputGradient: grouped && needsInputGradient, adding: addend)
            }
            finishShard(j, context)
        }
        if grouped {
            addend = nil
            return dx
        }
        guard needsInputGradient else { return dx }
        if let w = winogradGradient {
            // The padded dy convolved with the flipped kernel, channels swapped, by F(2x2, 3x3).
            let u = winogradWeights!.pointer, v = winogradInput!.pointer, m = winogradProducts!.pointer
            winogradWeightTransform(weight, outChannels: oc, inChannels: c, transposed: true, into: u)
            for first in Swift.stride(from: 0, to: n, by: w.group) {
                winogradConv3x3(preparedDy + first * sampleDy, channels: oc, channelStride: gradChannel,
                                sampleStride: sampleDy, samples: min(w.group, n - first), u, outChannels: c, w,
                                bias: nil, v: v, m: m, scratch: winogradRow!.pointer, into: dx.data + first * plane)
            }
        } else if c % 4 == 0 {
            packDirectInputGradientWeights()
            for s in 0..<n { directInputGradient(preparedDy + s * sampleDy, sample: s, adding: addend, into: dx) }
            addend = nil
        } else {
            let ckk = g.patchSize, dcols = sampleColumns!.pointer
            dx.data.update(repeating: 0, count: dx.count)
            for s in 0..<n {
                sgemm(transA: true, m: ckk, n: p, k: oc, a: weight, lda: ckk, b: dy.data + s * oc * p, ldb: p, c: dcols, ldc: p)
                col2imOverwriting(dcols, batch: 1, g, into: dx.data + s * plane)
            }
        }
        return dx
    }

    /// The prepared input of consecutive `samples`, [samples, C, channelLength]: in the
    /// batch the layer before wrote (`takePreparedInput`: x is that buffer), or prepared from
    /// x into `scratch`.
    private func preparedSamples(_ x: Tensor, _ samples: Range<Int>, into scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
        let l = layout!, sample = inChannels * l.channelLength
        if let batch = preparedBatch, x.data == batch.pointer { return UnsafePointer(batch.pointer + samples.lowerBound * sample) }
        for s in samples {
            prepareConvInput(x.data + s * x.shape.perSample, channels: inChannels, l, into: scratch + (s - samples.lowerBound) * sample)
        }
        return UnsafePointer(scratch)
    }

    // MARK: Input prepared by the layer before

    /// Where the batch norm (and ReLU) before this layer may write its output as this
    /// layer's prepared input: stride 1, by the direct kernels or Winograd's, whose prepared
    /// input is the padded image, channel after channel (`DirectConvLayout`, stride 1).
    var preparedInputLayout: DirectConvLayout? { isDirect && stride == 1 ? layout : nil }

    /// The buffer [maxBatch, C, channelLength] that the layer before writes this layer's
    /// prepared input into, allocated on the first call; nil (and none kept) when not
    /// `enabled` or the layer takes none. A forward whose input tensor is this buffer reads
    /// its samples from it, as backward does, instead of preparing each sample from the
    /// input, once in forward and again in backward. Same bits: the same floats in the same
    /// places.
    func takePreparedInput(_ enabled: Bool) -> FloatBuffer? {
        guard enabled, let l = preparedInputLayout else {
            preparedBatch = nil
            return nil
        }
        if preparedBatch == nil { preparedBatch = FloatBuffer(capacity: max(capacity, 1) * inChannels * l.channelLength) }
        return preparedBatch
    }

    // MARK: Gradients a group of samples at a time

    /// Samples per group where backward takes both gradients a group of samples at a time,
    /// each group's input gradient right after its weight gradient (both by Winograd or both
    /// by the direct kernels), or the weight gradient alone where no input gradient is
    /// wanted; nil where the input gradient needs the whole batch's output gradient. A batch
    /// norm right after this layer may then hand it its output gradient a group at a time
    /// (`BatchNorm.handsGradients`). Asked each step: a caller may still change
    /// `needsInputGradient`.
    var gradientGroupSize: Int? {
        guard isDirect else { return nil }
        if let w = winograd { return !needsInputGradient || winogradGradient != nil ? w.group : nil }
        return !needsInputGradient || directGradientsInGroups ? weightGradientGroup : nil
    }

    /// The largest `gradientGroupSize` can be, whatever `needsInputGradient`.
    var largestGradientGroup: Int? { isDirect ? winograd?.group ?? weightGradientGroup : nil }

    /// Set when the batch norm right after this layer has started this step's groups
    /// (`BatchNorm.handsGradients`): backward then has nothing left to do (and clears it).
    private var handedGroupsRan = false
    /// The addend that batch norm adds to the input gradient (backward checks it is its own).
    private var handedAddend: UnsafePointer<Float>?

    /// `startGradients` for the batch norm after this layer, which then adds `addend` to
    /// the input gradient and runs every group.
    func startHandedGradients(adding addend: UnsafePointer<Float>?) {
        handedGroupsRan = true
        handedAddend = needsInputGradient ? addend : nil
        startGradients()
    }

    /// Before the groups of a grouped backward: the input gradient's weights, repacked for
    /// the direct kernels or transformed for Winograd's.
    private func startGradients() {
        guard needsInputGradient else { return }
        if winograd != nil {
            winogradWeightTransform(weight, outChannels: outChannels, inChannels: inChannels, transposed: true,
                                    into: winogradWeights!.pointer)
        } else {
            packDirectInputGradientWeights()
        }
    }

    /// Before shard j's groups: its weight gradient slot (Winograd's: the lane sums) and
    /// bias gradient slot zeroed.
    func startShard(_ j: Int, _ context: ForwardContext) {
        let slot = j * context.gradientSlotStride
        if winograd != nil {
            winogradLanes!.pointer.update(repeating: 0, count: 16 * outChannels * inChannels * 8)
        } else {
            (weightGrad + slot).update(repeating: 0, count: outChannels * inChannels * 9)
        }
        if let biasGrad { (biasGrad + slot).update(repeating: 0, count: outChannels) }
    }

    /// After shard j's groups: Winograd's lane sums summed into its weight gradient slot (Gᵀ dU G).
    func finishShard(_ j: Int, _ context: ForwardContext) {
        guard winograd != nil else { return }
        winogradWeightGradient(winogradLanes!.pointer, outChannels: outChannels, inChannels: inChannels,
                               into: weightGrad + j * context.gradientSlotStride)
    }

    /// The gradients of `samples`, a group of shard j (groups start at the shard's first
    /// sample), from their output gradient dy [samples, OC, OH, OW]: the weight (and bias)
    /// gradient added into shard j's slot, and with `inputGradient` their input gradient
    /// into dx, plus `addend`'s samples. Their output gradient is padded into `paddingInto`.
    ///
    /// Winograd: the group's transformed output gradient and input (prepared again from x, or
    /// read from the batch the layer before prepared: forward's transform of the whole batch
    /// went to memory and back), dU's 8 lane sums
    /// added over the shard's groups in order (`finishShard` sums the lanes), then the input
    /// gradient by F(2x2, 3x3) while the padded output gradient is in cache. Winograd's lanes
    /// are independent, so the grouping changes no bit.
    /// With dy nil, the group's output gradient is already padded in `dys` (`handedGradientRows`).
    private func addGroupGradients(_ dy: UnsafePointer<Float>?, samples: Range<Int>, shard j: Int, _ context: ForwardContext,
                                   x: Tensor, dx: Tensor, paddingInto dys: UnsafeMutablePointer<Float>, inputGradient: Bool,
                                   adding addend: UnsafePointer<Float>?) {
        let l = layout!, oc = outChannels, c = inChannels, p = geometry.outSpatial
        let slot = j * context.gradientSlotStride, count = samples.count, first = samples.lowerBound
        let plane = x.shape.perSample, sampleDy = oc * gradChannel
        if let dy {
            spreadRows(dy, count: count * oc, height: l.outHeight, width: l.outWidth, rowStride: l.outRowStride,
                       channelStride: gradChannel, offset: paddedGradientOffset, into: dys)
        }
        if let w = winograd {
            let preparedX = preparedInput!.pointer, groupInput = winogradGroupInput!.pointer
            let transformed = winogradGradients!.pointer, row = count * w.tiles
            for s in 0..<count {
                winogradGradientTransform(dys + s * sampleDy, channels: oc, channelStride: gradChannel, w,
                                          rowLength: row, into: transformed + 2 * s * w.tiles)
                let prepared = preparedSamples(x, (first + s)..<(first + s + 1), into: preparedX + s * c * l.channelLength)
                winogradInputTransform(prepared, channels: c, channelStride: l.channelLength, w, rowLength: row,
                                       into: groupInput + s * w.tiles)
            }
            winogradWeightProducts(transformed, outChannels: oc, groupInput, channels: c, rowLength: row,
                                   addingInto: winogradLanes!.pointer)
            if inputGradient {
                let d = dx.data + first * plane
                winogradConv3x3(dys, channels: oc, channelStride: gradChannel, sampleStride: sampleDy, samples: count,
                                winogradWeights!.pointer, outChannels: c, w, bias: nil, v: winogradInput!.pointer,
                                m: winogradProducts!.pointer, scratch: winogradRow!.pointer, into: d)
                if let addend { add(addend + first * plane, into: d, count: count * plane) }
            }
        } else {
            let preparedX = preparedInput!.pointer, dyOffset = paddedGradientOffset
            conv3x3WeightGradient(preparedSamples(x, samples, into: preparedX), channels: c, dys + dyOffset, outChannels: oc,
                                  dyChannel: gradChannel, dySample: sampleDy, l, samples: count,
                                  scratch: weightGradientScratch!.pointer, addingInto: weightGrad + slot)
            if inputGradient {
                for s in samples { directInputGradient(dys + (s - first) * sampleDy, sample: s, adding: addend, into: dx) }
            }
        }
        if let biasGrad {
            guard let dy else { preconditionFailure("Conv2d: a bias gradient needs the unpadded output gradient") }
            for s in 0..<count {
                for o in 0..<oc { biasGrad[slot + o] += sumFloat(dy + (s * oc + o) * p, count: p) }
            }
        }
    }

    /// Where a group's output gradient starts in each padded channel of `preparedGrad`.
    /// Stride 1 (and Winograd): padded like an input (the input gradient convolves it), its
    /// flat output layout starting at `origin`; stride 2: the flat output layout, with room
    /// for the input gradient's farthest taps.
    private var paddedGradientOffset: Int { stride == 1 ? layout!.origin : 0 }

    /// Where the batch norm after this layer (`BatchNorm.handsGradients`) writes each group's
    /// output gradient straight into the padded rows the kernels read, which `spreadRows`
    /// would otherwise copy it into from the batch norm's group buffer: row y of channel o of
    /// the group's sample s at `pointer + s * sampleStride + o * channelStride + y * rowStride`.
    /// The gaps between the rows stay zero: nothing else writes there. nil for a layer with a
    /// bias (its gradient sums the unpadded rows) or off the grouped path.
    var handedGradientRows: PaddedRows? {
        guard bias == nil, largestGradientGroup != nil, let l = layout, let buffer = preparedGrad else { return nil }
        return PaddedRows(pointer: buffer.pointer + paddedGradientOffset, sampleStride: outChannels * gradChannel,
                          channelStride: gradChannel, rowStride: l.outRowStride)
    }

    /// `addGroupGradients` for the batch norm after this layer (`BatchNorm.handsGradients`):
    /// into the layer's own input gradient, the padded output gradient at the start of its buffer.
    /// dy nil: the batch norm wrote the group into `handedGradientRows`.
    func addHandedGroup(_ dy: UnsafePointer<Float>?, samples: Range<Int>, shard j: Int, _ context: ForwardContext,
                        adding addend: UnsafePointer<Float>?) {
        guard let x = input else { preconditionFailure("Conv2d: gradients handed before forward") }
        addGroupGradients(dy, samples: samples, shard: j, context, x: x, dx: inputGrad.tensor(x.shape),
                          paddingInto: preparedGrad!.pointer, inputGradient: needsInputGradient, adding: addend)
    }

    /// One sample's input gradient by the direct kernels, from its padded output gradient,
    /// plus the addend's sample.
    private func directInputGradient(_ dys: UnsafePointer<Float>, sample s: Int, adding addend: UnsafePointer<Float>?,
                                     into dx: Tensor) {
        let l = layout!, plane = dx.shape.perSample, flat = flatOutput!.pointer, packed = packedWeights!.pointer
        let more = addend.map { $0 + s * plane }
        if let strideTwo = strideTwoInputGradient {
            strideTwo.run(dys, outChannels: outChannels, packed, inChannels: inChannels, l, flat: flat, adding: more,
                          into: dx.data + s * plane)
        } else {
            // dx = the padded dy convolved with the flipped kernel, channels swapped.
            conv3x3Flat(dys, channels: outChannels, packed, outChannels: inChannels, l, into: flat)
            unflattenOutput(flat, count: inChannels, l, bias: nil, adding: more, into: dx.data + s * plane)
        }
    }

    private func packDirectInputGradientWeights() {
        if let strideTwo = strideTwoInputGradient {
            strideTwo.pack(weight, outChannels: outChannels, inChannels: inChannels, into: packedWeights!.pointer)
        } else {
            packConv3x3WeightsTransposed(weight, outChannels: outChannels, inChannels: inChannels, into: packedWeights!.pointer)
        }
    }

    private func addBias(_ bias: UnsafeMutablePointer<Float>, to y: UnsafeMutablePointer<Float>, samples n: Int, spatial p: Int) {
        for s in 0..<n {
            for o in 0..<outChannels {
                let row = y + (s * outChannels + o) * p, b = bias[o]
                for i in 0..<p { row[i] += b }
            }
        }
    }

    private func sumBias(_ dy: UnsafeMutablePointer<Float>, into grad: UnsafeMutablePointer<Float>, samples: Range<Int>, spatial p: Int) {
        grad.update(repeating: 0, count: outChannels)
        for s in samples {
            for o in 0..<outChannels {
                grad[o] += sumFloat(dy + (s * outChannels + o) * p, count: p)
            }
        }
    }
}

/// Rows of planes laid out with gaps (a convolution's padded channels), by where row 0 of
/// sample 0's channel 0 is and how far apart samples, channels and rows are.
struct PaddedRows {
    let pointer: UnsafeMutablePointer<Float>
    let sampleStride: Int, channelStride: Int, rowStride: Int
}
