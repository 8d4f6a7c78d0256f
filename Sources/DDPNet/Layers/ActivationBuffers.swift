import DDPKernels

/// What every element-wise activation keeps: its output and input-gradient buffers, sized
/// once, and the views of the last forward that its backward reads.
struct ActivationBuffers {
    private var output: FloatBuffer?
    private var inputGrad: FloatBuffer?
    private var input: Tensor?
    private var result: Tensor?
    /// The batch the buffers were sized for.
    private var capacity = 0

    mutating func configure(_ input: Shape, maxBatch: Int) {
        capacity = maxBatch
        output = FloatBuffer(capacity: maxBatch * input.perSample)
        inputGrad = FloatBuffer(capacity: maxBatch * input.perSample)
    }

    /// Remembers `x` and returns the view the activation writes its output into.
    mutating func forward(_ x: Tensor, layer: String) throws -> Tensor {
        guard x.shape.n <= capacity else { throw LayerError.batchTooLarge(layer, batch: x.shape.n, capacity: capacity) }
        let y = output!.tensor(x.shape)
        input = x
        result = y
        return y
    }

    /// The last forward's input and output, and the view to write the input gradient into.
    func backward(_ dy: Tensor, layer: String) throws -> (x: Tensor, y: Tensor, dx: Tensor) {
        guard let input, let result else { throw LayerError("\(layer).backward called before forward") }
        guard dy.shape.n <= capacity else { throw LayerError.batchTooLarge(layer, batch: dy.shape.n, capacity: capacity) }
        return (input, result, inputGrad!.tensor(dy.shape))
    }
}
