import DDPKernels

/// y = x Wᵀ + b, with W stored [out, in] as in PyTorch.
public final class Linear: Layer {
    public let inFeatures: Int
    public let outFeatures: Int
    public let hasBias: Bool
    public var needsInputGradient = true

    private var weight: UnsafeMutablePointer<Float>!
    private var bias: UnsafeMutablePointer<Float>?
    private var weightGrad: UnsafeMutablePointer<Float>!
    private var biasGrad: UnsafeMutablePointer<Float>?
    private var output: FloatBuffer!
    /// The batch the buffers were sized for.
    private var capacity = 0
    /// Forward's chunks of Wᵀ (`rowProductsTransposing`), or backward's dyᵀ [out, batch].
    private var transposed: FloatBuffer!
    private var inputGrad: FloatBuffer!
    private var input: Tensor?

    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true) {
        self.inFeatures = inFeatures; self.outFeatures = outFeatures; self.hasBias = bias
    }

    public var summary: String {
        "Linear(in_features=\(inFeatures), out_features=\(outFeatures), bias=\(hasBias ? "True" : "False"))"
    }

    public func outputShape(for input: Shape) throws -> Shape {
        guard input.perSample == inFeatures else {
            throw LayerError("Linear expects \(inFeatures) input features, got \(input.perSample) (input \(input.sampleDims))")
        }
        return Shape(n: input.n, features: outFeatures)
    }

    public func configure(input: Shape, maxBatch: Int, index: Int) throws {
        _ = try outputShape(for: input)
        capacity = maxBatch
        output = FloatBuffer(capacity: maxBatch * outFeatures)
        transposed = FloatBuffer(capacity: max(transposeScratchCount(inner: inFeatures, columns: outFeatures), outFeatures * maxBatch))
        inputGrad = FloatBuffer(capacity: maxBatch * inFeatures)
    }

    public var parameterSpecs: [ParameterSpec] {
        var specs = [ParameterSpec(name: "weight", shape: [outFeatures, inFeatures], role: .weight, fanIn: inFeatures, fanOut: outFeatures)]
        if hasBias { specs.append(ParameterSpec(name: "bias", shape: [outFeatures], role: .bias, fanIn: inFeatures, fanOut: outFeatures)) }
        return specs
    }

    public func bind(_ storage: LayerStorage) {
        weight = storage.parameters[0]; weightGrad = storage.gradients[0]
        if hasBias { bias = storage.parameters[1]; biasGrad = storage.gradients[1] }
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(x.shape, capacity: capacity)
        let n = x.shape.n
        input = x
        let y = output.tensor(Shape(n: n, features: outFeatures))
        // y = x Wᵀ by `rowProductsTransposing`, every output one FMA chain over the inputs in order: a
        // sample's outputs depend on that sample alone (not on its batch, shard, rank or
        // thread), which OpenBLAS's size-dependent kernels do not promise.
        rowProductsTransposing(x.data, rows: n, inner: inFeatures, weight, columns: outFeatures, scratch: transposed.pointer, into: y.data)
        if let bias {
            for s in 0..<n {
                let row = y.data + s * outFeatures
                for o in 0..<outFeatures { row[o] += bias[o] }
            }
        }
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        guard let x = input else { throw LayerError("Linear.backward called before forward") }
        let n = dy.shape.n
        // Per shard j, into gradient slot j: dW = dyᵀ x : [out, m] x [m, in]. `rowProducts`
        // rather than sgemm: it packs nothing (OpenBLAS copied x and W into its panels on every
        // call, a sixth of its time) and reads b a cache-sized panel at a time.
        for j in 0..<context.shards(batch: n) {
            let rows = context.shard(j, batch: n), slot = j * context.gradientSlotStride
            let dyT = transposed.pointer
            transpose(dy.data + rows.lowerBound * outFeatures, rows: rows.count, columns: outFeatures, into: dyT)
            rowProducts(dyT, rows: outFeatures, inner: rows.count, x.data + rows.lowerBound * inFeatures, columns: inFeatures,
                        into: weightGrad + slot)
            if let biasGrad {
                let grad = biasGrad + slot
                grad.update(repeating: 0, count: outFeatures)
                for i in rows {
                    let row = dy.data + i * outFeatures
                    for o in 0..<outFeatures { grad[o] += row[o] }
                }
            }
        }
        let dx = inputGrad.tensor(x.shape)
        if needsInputGradient {
            // dx = dy W : [n, out] x [out, in], the whole batch at once: each row is one chain
            // per element, so shards would change no bit.
            rowProducts(dy.data, rows: n, inner: outFeatures, weight, columns: inFeatures, into: dx.data)
        }
        return dx
    }
}
