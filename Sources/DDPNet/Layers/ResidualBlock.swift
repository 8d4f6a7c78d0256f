import DDPKernels

/// torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x)), both convs
/// 3x3 without bias, conv1 carrying the stride. The skip is the identity, or, when the
/// stride or the channel count changes, a 1x1 strided conv plus batch norm ("downsample").
/// Parameter and buffer names and their order follow torchvision's state_dict.
public final class ResidualBlock: Layer {
    public let inChannels: Int
    public let outChannels: Int
    public let stride: Int
    public var needsInputGradient = true {
        didSet {
            conv1.needsInputGradient = needsInputGradient
            downsample?.conv.needsInputGradient = needsInputGradient
        }
    }

    private let conv1: Conv2d
    private let bn1: BatchNorm
    private let relu = ReLU()
    private let conv2: Conv2d
    private let bn2: BatchNorm
    private let downsample: (conv: Conv2d, bn: BatchNorm)?
    private var output: FloatBuffer!
    /// The batch the buffers were sized for.
    private var capacity = 0
    private var sumGrad: FloatBuffer!
    private var lastOutput: Tensor?

    public init(inChannels: Int, outChannels: Int, stride: Int = 1) {
        self.inChannels = inChannels; self.outChannels = outChannels; self.stride = stride
        conv1 = Conv2d(inChannels: inChannels, outChannels: outChannels, kernel: 3, stride: stride, padding: 1, bias: false)
        bn1 = BatchNorm(features: outChannels)
        conv2 = Conv2d(inChannels: outChannels, outChannels: outChannels, kernel: 3, padding: 1, bias: false)
        bn2 = BatchNorm(features: outChannels)
        if stride != 1 || inChannels != outChannels {
            downsample = (Conv2d(inChannels: inChannels, outChannels: outChannels, kernel: 1, stride: stride, bias: false),
                          BatchNorm(features: outChannels))
        } else {
            downsample = nil
        }
    }

    public var summary: String { "BasicBlock(\(inChannels), \(outChannels), stride=\(stride))" }

    /// Sub-layers with their state-dict prefixes, in torchvision's order.
    private var parts: [(prefix: String, layer: Layer)] {
        var parts: [(String, Layer)] = [("conv1.", conv1), ("bn1.", bn1), ("conv2.", conv2), ("bn2.", bn2)]
        if let downsample { parts += [("downsample.0.", downsample.conv), ("downsample.1.", downsample.bn)] }
        return parts
    }

    public func outputShape(for input: Shape) throws -> Shape { try conv1.outputShape(for: input) }

    public func fuseInnerLayers(_ enabled: Bool) { fuseNeighbours(in: [conv1, bn1, relu, conv2, bn2], enabled: enabled) }

    public func configure(input: Shape, maxBatch: Int, index: Int) throws {
        let inner = try conv1.outputShape(for: input)
        try conv1.configure(input: input, maxBatch: maxBatch, index: index)
        try bn1.configure(input: inner, maxBatch: maxBatch, index: index)
        try relu.configure(input: inner, maxBatch: maxBatch, index: index)
        try conv2.configure(input: inner, maxBatch: maxBatch, index: index)
        try bn2.configure(input: inner, maxBatch: maxBatch, index: index)
        if let downsample {
            try downsample.conv.configure(input: input, maxBatch: maxBatch, index: index)
            try downsample.bn.configure(input: inner, maxBatch: maxBatch, index: index)
        }
        capacity = maxBatch
        output = FloatBuffer(capacity: maxBatch * inner.perSample)
        sumGrad = FloatBuffer(capacity: maxBatch * inner.perSample)
    }

    public var parameterSpecs: [ParameterSpec] {
        parts.flatMap { part in part.layer.parameterSpecs.map { var s = $0; s.name = part.prefix + s.name; return s } }
    }

    public var bufferSpecs: [BufferSpec] {
        parts.flatMap { part in part.layer.bufferSpecs.map { var s = $0; s.name = part.prefix + s.name; return s } }
    }

    /// Hands each sub-layer its own slice of the storage, in spec order.
    public func bind(_ storage: LayerStorage) {
        var parameter = 0, buffer = 0, counter = 0
        for (_, layer) in parts {
            var own = LayerStorage()
            for _ in layer.parameterSpecs {
                own.parameters.append(storage.parameters[parameter]); own.gradients.append(storage.gradients[parameter])
                parameter += 1
            }
            for spec in layer.bufferSpecs {
                if spec.isCounter {
                    own.counters.append(storage.counters[counter]); counter += 1
                } else {
                    own.buffers.append(storage.buffers[buffer]); buffer += 1
                }
            }
            layer.bind(own)
        }
    }

    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(x.shape, capacity: capacity)
        var h = try conv1.forward(x, context)
        h = try bn1.forward(h, context)
        h = try relu.forward(h, context)
        h = try conv2.forward(h, context)
        var skip = x
        if let downsample { skip = try downsample.bn.forward(try downsample.conv.forward(x, context), context) }
        // relu(bn2(h) + skip), in bn2's pass over h.
        let y = try bn2.forward(h, addingResidual: skip, context, into: output)
        lastOutput = y
        return y
    }

    public func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(dy.shape, capacity: capacity)
        guard let y = lastOutput else { throw LayerError("ResidualBlock.backward called before forward") }
        // Through the final ReLU; both branches receive the same gradient.
        let g = sumGrad.tensor(dy.shape)
        let out = y.data, src = dy.data, dst = g.data
        for i in 0..<g.count { let gi = src[i]; dst[i] = out[i] > 0 ? gi : 0 }

        var dxSkip = g
        if let downsample { dxSkip = try downsample.conv.backward(try downsample.bn.backward(g, context), context) }
        var h = try bn2.backward(g, context)
        h = try conv2.backward(h, context)
        h = try relu.backward(h, context)
        // conv1's input gradient plus the skip's, in conv1's pass that writes it (bn1's,
        // where bn1 runs conv1's gradients).
        h = try bn1.backward(h, context, addingToConvolutionInputGradient: dxSkip)
        return try conv1.backward(h, context, addingToInputGradient: dxSkip)
    }
}

extension ResidualBlock {
    /// Both 3x3 convolutions and the 1x1 downsample, if any (for FLOP counts).
    var convolutions: [Conv2d] { [conv1, conv2] + (downsample.map { [$0.conv] } ?? []) }
}
