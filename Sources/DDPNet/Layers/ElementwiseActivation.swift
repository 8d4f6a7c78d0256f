import DDPKernels

/// What every element-wise activation but ReLU shares: its buffers (ActivationBuffers), the
/// batch checks and the input-gradient switch. Each one gives `function`, y = f(x), and
/// `derivative`, dx = f'(x)·dy, which may read x, y or both.
public class ElementwiseActivation: Layer {
    public typealias Function = (_ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int) -> Void
    public typealias Derivative = (_ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                   _ dy: UnsafeMutablePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ count: Int) -> Void

    public var needsInputGradient = true
    public let summary: String
    private let name: String
    private let function: Function
    private let derivative: Derivative
    private var buffers = ActivationBuffers()

    init(name: String, summary: String? = nil, function: @escaping Function, derivative: @escaping Derivative) {
        self.name = name
        self.summary = summary ?? "\(name)()"
        self.function = function
        self.derivative = derivative
    }

    public func outputShape(for input: Shape) throws -> Shape { input }
    public func configure(input: Shape, maxBatch: Int, index: Int) throws { buffers.configure(input, maxBatch: maxBatch) }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        let y = try buffers.forward(x, layer: name)
        function(x.data, y.data, x.count)
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        let (x, y, dx) = try buffers.backward(dy, layer: name)
        guard needsInputGradient else { return dx }
        derivative(x.data, y.data, dy.data, dx.data, dy.count)
        return dx
    }
}
