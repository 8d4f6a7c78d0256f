import DDPKernels

/// A named view of one parameter inside the flat parameter buffer.
public struct ParameterView: Sendable {
    /// PyTorch state-dict name: "<layer index>.<name>", e.g. "0.weight".
    public var name: String
    public var layerIndex: Int
    public var spec: ParameterSpec
    /// Offset in elements into `Model.parameters` (and `Model.gradients`).
    public var offset: Int
    public var count: Int { spec.count }
    public var shape: [Int] { spec.shape }
    public var role: ParameterRole { spec.role }
}

/// A named view of one buffer: Float32 in `Model.buffers`, or Int64 in `Model.counters`.
public struct BufferView: Sendable {
    public var name: String
    public var layerIndex: Int
    public var spec: BufferSpec
    public var offset: Int
    public var count: Int { spec.count }
    public var shape: [Int] { spec.shape }
    public var isCounter: Bool { spec.isCounter }
}

/// A sequence of layers over one flat parameter buffer, one flat gradient buffer, and flat
/// buffer storage, so that broadcast, allreduce, clipping, the optimizer and checkpoints
/// each make one pass over one buffer (DESIGN: memory layout).
public final class Model {
    public let layers: [Layer]
    /// Per-sample input shape (n = 1).
    public let inputShape: Shape
    public let outputShape: Shape
    public let maxBatch: Int
    public let parameterViews: [ParameterView]
    public let bufferViews: [BufferView]
    public let parameterCount: Int
    public let parameters: FloatBuffer
    /// Gradients in the same layout as `parameters`, followed by `gradientRoom` Floats left
    /// for whoever reduces them to carry along (the trainer's loss and sample counts); that
    /// is slot 0, and `gradientSlots - 1` more slots of the same layout follow it, one per
    /// further shard of a batch (`ForwardContext.shardSize`).
    public let gradients: FloatBuffer
    public let gradientSlots: Int
    /// Floats from one gradient slot to the next.
    public var gradientSlotStride: Int { parameterCount + gradientRoom }
    public let gradientRoom: Int
    public let buffers: FloatBuffer
    public let counters: UnsafeMutablePointer<Int64>
    public let counterCount: Int
    /// Per-layer output shapes (n = 1), for summaries.
    public let layerOutputShapes: [Shape]


    /// `sharingParametersOf`: a replica of that model (same layers) that reads its
    /// parameters from the same buffer and has its own gradients, buffers and activations;
    /// one per compute thread of a rank.
    /// `fuseLayers`: batch norm followed by ReLU runs as one layer (`BatchNorm.fusesReLU`),
    /// and with a 2x2 max pool after them too (`BatchNorm.fusesPool`), and a batch norm
    /// runs the gradients of the convolution before it (`BatchNorm.handsGradients`), which
    /// gives the same bits with fewer passes over the activations each way.
    /// `gradientRoom`: Floats of room after the gradients (see `gradients`);
    /// `gradientSlots`: the most shards a batch of this model will hold.
    public init(layers: [Layer], inputShape: Shape, maxBatch: Int, sharingParametersOf shared: Model? = nil,
                fuseLayers: Bool = true, gradientRoom: Int = 0, gradientSlots: Int = 1) throws {
        guard !layers.isEmpty else { throw LayerError("a model needs at least one layer") }
        guard maxBatch >= 1 else { throw LayerError("the largest batch must be at least 1, got \(maxBatch)") }
        self.layers = layers
        self.inputShape = inputShape.withBatch(1)
        self.maxBatch = maxBatch

        var shape = inputShape.withBatch(1)
        var shapes: [Shape] = []
        var params: [ParameterView] = []
        var bufs: [BufferView] = []
        var paramOffset = 0, bufferOffset = 0, counterOffset = 0
        for (index, layer) in layers.enumerated() {
            do {
                try layer.configure(input: shape, maxBatch: maxBatch, index: index)
                shape = try layer.outputShape(for: shape)
            } catch let error as LayerError {
                throw LayerError("layer \(index) (\(layer.summary)): \(error.message)")
            }
            shapes.append(shape)
            for spec in layer.parameterSpecs {
                params.append(ParameterView(name: "\(index).\(spec.name)", layerIndex: index, spec: spec, offset: paramOffset))
                paramOffset += spec.count
            }
            for spec in layer.bufferSpecs {
                let offset = spec.isCounter ? counterOffset : bufferOffset
                bufs.append(BufferView(name: "\(index).\(spec.name)", layerIndex: index, spec: spec, offset: offset))
                if spec.isCounter { counterOffset += spec.count } else { bufferOffset += spec.count }
            }
        }
        fuseNeighbours(in: layers, enabled: fuseLayers)
        // Nothing uses the input gradient of the layers up to and including the first one
        // with parameters (e.g. Flatten then Linear), so they do not compute it.
        for layer in layers {
            layer.needsInputGradient = false
            if !layer.parameterSpecs.isEmpty { break }
        }
        outputShape = shape
        layerOutputShapes = shapes
        parameterViews = params
        bufferViews = bufs
        parameterCount = paramOffset
        if let shared {
            guard shared.parameterViews.map(\.name) == params.map(\.name), shared.parameterViews.map(\.shape) == params.map(\.shape),
                  shared.bufferViews.map(\.name) == bufs.map(\.name) else {
                throw LayerError("a replica must have the same parameters and buffers as the model it shares them with")
            }
            parameters = shared.parameters
        } else {
            parameters = FloatBuffer(capacity: paramOffset)
        }
        self.gradientRoom = max(gradientRoom, 0)
        self.gradientSlots = max(gradientSlots, 1)
        gradients = FloatBuffer(capacity: (paramOffset + self.gradientRoom) * self.gradientSlots)
        buffers = FloatBuffer(capacity: bufferOffset)
        counterCount = counterOffset
        counters = UnsafeMutablePointer<Int64>.allocate(capacity: max(counterOffset, 1))
        counters.initialize(repeating: 0, count: max(counterOffset, 1))

        for (index, layer) in layers.enumerated() {
            var storage = LayerStorage()
            for view in params where view.layerIndex == index {
                storage.parameters.append(parameters.pointer + view.offset)
                storage.gradients.append(gradients.pointer + view.offset)
            }
            for view in bufs where view.layerIndex == index {
                if view.isCounter {
                    storage.counters.append(counters + view.offset)
                } else {
                    storage.buffers.append(buffers.pointer + view.offset)
                    (buffers.pointer + view.offset).update(repeating: view.spec.initialValue, count: view.count)
                }
            }
            layer.bind(storage)
        }
    }

    deinit { counters.deallocate() }

    /// Once per call: the batch must fit the buffers, which were sized for `maxBatch`.
    private func checkBatch(_ shape: Shape) throws {
        guard shape.n <= maxBatch else { throw LayerError.batchTooLarge("the model", batch: shape.n, capacity: maxBatch) }
    }

    /// Logits for a batch of at most `maxBatch` samples.
    public func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor {
        try checkBatch(x.shape)
        var h = x
        for layer in layers { h = try layer.forward(h, context) }
        return h
    }

    /// Backpropagates the gradient of the loss with respect to the logits; fills
    /// `gradients` (parameter part) for the batch of the last `forward`.
    public func backward(_ dLogits: Tensor, _ context: ForwardContext) throws {
        try checkBatch(dLogits.shape)
        var g = dLogits
        for layer in layers.reversed() { g = try layer.backward(g, context) }
    }

    /// Batch-norm running statistics and counters from the model this replica shares
    /// parameters with (or any model of the same layers).
    public func copyBuffers(from other: Model) {
        buffers.pointer.update(from: other.buffers.pointer, count: buffers.capacity)
        counters.update(from: other.counters, count: counterCount)
    }

    /// Channels of the widest batch norm, residual blocks' own included (its gamma has one
    /// value per channel); 1 when there is none. Statistics exchanges are sized for it.
    public var widestBatchNorm: Int {
        parameterViews.filter { $0.role == .normWeight }.map(\.count).max() ?? 1
    }

    public func parameter(named name: String) -> ParameterView? { parameterViews.first { $0.name == name } }
    public func buffer(named name: String) -> BufferView? { bufferViews.first { $0.name == name } }

    /// The parameters as a buffer pointer (without the gradient tail).
    public var parameterBuffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: parameters.pointer, count: parameterCount)
    }
}

/// Fuses neighbours in a sequence of layers, each with the same bits: every batch norm
/// directly followed by a ReLU (`BatchNorm.fusesReLU`), and by a 2x2 max pool on its fast
/// path after them (`BatchNorm.fusesPool`) or a convolution that takes its input prepared
/// (`BatchNorm.writesPreparedInput`); every batch norm directly after a convolution
/// runs that convolution's gradients group by group (`BatchNorm.handsGradients`); and each
/// layer made of layers does the same with its own sequence.
func fuseNeighbours(in layers: [Layer], enabled: Bool) {
    for i in layers.indices.dropLast() {
        if let conv = layers[i] as? Conv2d, let norm = layers[i + 1] as? BatchNorm {
            norm.handGradients(to: enabled ? conv : nil)
        }
        if let norm = layers[i] as? BatchNorm, let relu = layers[i + 1] as? ReLU {
            norm.fusesReLU = enabled
            relu.passesThrough = enabled
            let pool = i + 2 < layers.count ? layers[i + 2] as? MaxPool2d : nil
            norm.fusePool(enabled ? pool : nil)
            let next = i + (norm.fusesPool ? 3 : 2)
            norm.writePreparedInput(of: enabled && next < layers.count ? layers[next] as? Conv2d : nil)
        }
    }
    for layer in layers { layer.fuseInnerLayers(enabled) }
}

extension Model {
    /// The layers as PyTorch prints them, one a line, defaults spelled out and initializers
    /// left out: what a checkpoint records of its model, so that a model file changed since
    /// (another activation, same shapes) is found. A dropout's rate is left out too: it does
    /// not act in evaluation, and --dropout may change it on resume (with a warning).
    public var layersText: String {
        layers.map { $0 is Dropout ? "Dropout" : $0.summary }.joined(separator: "\n")
    }
}
