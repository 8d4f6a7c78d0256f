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
    /// yᵀ, [out, batch]: see `forward`.
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
        transposed = FloatBuffer(capacity: maxBatch * outFeatures)
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
        // yᵀ = W xᵀ puts the batch in GEMM's column dimension, as convolution does: a
        // sample's outputs then do not depend on how many samples share the call, so 4
        // ranks x 8 compute the same activations as 1 rank x 32 (I2). With the batch as
        // GEMM's row dimension OpenBLAS picks kernels by row count, and the rounding of
        // one sample's outputs changed with the batch size.
        let t = transposed.pointer
        sgemm(transB: true, m: outFeatures, n: n, k: inFeatures, a: weight, lda: inFeatures,
              b: x.data, ldb: inFeatures, c: t, ldc: n)
        for i in 0..<n {
            let row = y.data + i * outFeatures
            if let bias {
                for j in 0..<outFeatures { row[j] = t[j * n + i] + bias[j] }
            } else {
                for j in 0..<outFeatures { row[j] = t[j * n + i] }
            }
        }
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        guard let x = input else { throw LayerError("Linear.backward called before forward") }
        let n = dy.shape.n
        // dW = dyᵀ x : [out, n] x [n, in]
        sgemm(transA: true, m: outFeatures, n: inFeatures, k: n, a: dy.data, lda: outFeatures,
              b: x.data, ldb: inFeatures, c: weightGrad, ldc: inFeatures)
        if let biasGrad {
            biasGrad.update(repeating: 0, count: outFeatures)
            for i in 0..<n {
                let row = dy.data + i * outFeatures
                for j in 0..<outFeatures { biasGrad[j] += row[j] }
            }
        }
        let dx = inputGrad.tensor(x.shape)
        if needsInputGradient {
            // dx = dy W : [n, out] x [out, in]
            sgemm(m: n, n: inFeatures, k: outFeatures, a: dy.data, lda: outFeatures,
                  b: weight, ldb: inFeatures, c: dx.data, ldc: inFeatures)
        }
        return dx
    }
}
