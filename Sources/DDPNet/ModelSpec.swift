import DDPKernels
import DDPSystem
import Foundation

/// One entry of a model description: a layer kind, its settings, and an optional
/// per-layer initializer name. Input sizes (in_features, in_channels) are inferred from
/// the shape flowing through the model, so a description only says what is new.
public struct LayerSpec: Equatable, Sendable {
    public enum Kind: String, CaseIterable, Sendable {
        case linear, conv2d, maxpool2d, avgpool2d, globalavgpool2d, flatten, batchnorm
        case relu, leakyrelu, elu, selu, gelu, tanh, sigmoid, dropout, residual, identity
    }

    public var kind: Kind
    public var out: Int?
    public var kernel: Int?
    public var stride: Int?
    public var padding: Int?
    public var bias: Bool?
    public var p: Float?
    public var slope: Float?
    public var alpha: Float?
    public var eps: Float?
    public var momentum: Float?
    /// Initializer for this layer's weights, e.g. "he-normal"; nil: the model-wide one.
    public var initializer: String?

    public init(_ kind: Kind, out: Int? = nil, kernel: Int? = nil, stride: Int? = nil, padding: Int? = nil,
                bias: Bool? = nil, p: Float? = nil, initializer: String? = nil) {
        self.kind = kind; self.out = out; self.kernel = kernel; self.stride = stride
        self.padding = padding; self.bias = bias; self.p = p; self.initializer = initializer
    }
}

public struct ModelSpecError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A model: a name and its layer list, from a preset or a YAML/JSON file.
public struct ModelSpec: Sendable {
    public var name: String
    public var layers: [LayerSpec]

    public init(name: String, layers: [LayerSpec]) {
        self.name = name
        self.layers = layers
    }

    public static let presetNames = ["mlp", "fmnist-cnn", "lenet5", "resnet8"]

    /// A preset by name, or else a YAML or JSON file at that path.
    public static func named(_ nameOrPath: String) throws -> ModelSpec {
        if let preset = preset(nameOrPath) { return preset }
        guard FileManager.default.fileExists(atPath: nameOrPath) else {
            throw ModelSpecError("model '\(nameOrPath)' is neither a preset (\(presetNames.joined(separator: ", "))) nor an existing file")
        }
        let text: String
        do { text = try SpecFile.contents(of: nameOrPath, what: "model file") } catch let error as SpecFileError {
            throw ModelSpecError(error.message)
        }
        return try parse(text, source: nameOrPath)
    }

    public static func preset(_ name: String, classes: Int = 10) -> ModelSpec? {
        switch name {
        case "mlp":
            // 784-256-BN-ReLU-Dropout-128-BN-ReLU-10; no bias before batch norm (BN's beta does its work).
            return ModelSpec(name: name, layers: [
                LayerSpec(.flatten),
                LayerSpec(.linear, out: 256, bias: false), LayerSpec(.batchnorm), LayerSpec(.relu), LayerSpec(.dropout, p: 0.2),
                LayerSpec(.linear, out: 128, bias: false), LayerSpec(.batchnorm), LayerSpec(.relu),
                LayerSpec(.linear, out: classes),
            ])
        case "fmnist-cnn":
            // Exactly the layer list of the PyTorch peer (shared/peers/torch_fmnist.py).
            return ModelSpec(name: name, layers: [
                LayerSpec(.conv2d, out: 32, kernel: 3, padding: 1, bias: false), LayerSpec(.batchnorm), LayerSpec(.relu), LayerSpec(.maxpool2d, kernel: 2),
                LayerSpec(.conv2d, out: 64, kernel: 3, padding: 1, bias: false), LayerSpec(.batchnorm), LayerSpec(.relu), LayerSpec(.maxpool2d, kernel: 2),
                LayerSpec(.flatten),
                LayerSpec(.linear, out: 128, bias: false), LayerSpec(.batchnorm), LayerSpec(.relu), LayerSpec(.dropout, p: 0.25),
                LayerSpec(.linear, out: classes),
            ])
        case "lenet5":
            // LeCun et al. 1998 as usually rebuilt: tanh and average pooling; padding 2 lets
            // 28x28 input reach the original 32x32 geometry.
            return ModelSpec(name: name, layers: [
                LayerSpec(.conv2d, out: 6, kernel: 5, padding: 2), LayerSpec(.tanh), LayerSpec(.avgpool2d, kernel: 2),
                LayerSpec(.conv2d, out: 16, kernel: 5), LayerSpec(.tanh), LayerSpec(.avgpool2d, kernel: 2),
                LayerSpec(.flatten),
                LayerSpec(.linear, out: 120), LayerSpec(.tanh),
                LayerSpec(.linear, out: 84), LayerSpec(.tanh),
                LayerSpec(.linear, out: classes),
            ])
        case "resnet8":
            // A stem and three basic blocks (16, 32, 64 channels), as in He et al.'s CIFAR
            // ResNets with n = 1: 1 + 3*2 + 1 = 8 weight layers. Works for 28x28 and 32x32.
            return ModelSpec(name: name, layers: [
                LayerSpec(.conv2d, out: 16, kernel: 3, padding: 1, bias: false), LayerSpec(.batchnorm), LayerSpec(.relu),
                LayerSpec(.residual, out: 16, stride: 1),
                LayerSpec(.residual, out: 32, stride: 2),
                LayerSpec(.residual, out: 64, stride: 2),
                LayerSpec(.globalavgpool2d), LayerSpec(.flatten),
                LayerSpec(.linear, out: classes),
            ])
        default:
            return nil
        }
    }

    /// Parses a description in YAML or JSON (JSON is YAML):
    ///
    ///     name: small-cnn
    ///     layers:
    ///       - {type: conv2d, out: 16, kernel: 3, padding: 1, init: he-normal}
    ///       - batchnorm
    ///       - relu
    ///       - {type: maxpool2d, kernel: 2}
    ///       - flatten
    ///       - {type: linear, out: 10}
    ///
    /// An entry is a layer name, or a map with `type` and its settings. A top-level list is
    /// accepted as the layer list.
    public static func parse(_ text: String, source: String) throws -> ModelSpec {
        let document: Any?
        do { document = try SpecFile.load(text, source: source) } catch let error as SpecFileError {
            throw ModelSpecError(error.message)
        }
        var name = URL(fileURLWithPath: source).deletingPathExtension().lastPathComponent
        let entries: [Any]
        if let list = document as? [Any] {
            entries = list
        } else if let map = document as? [String: Any] {
            if let n = map["name"] as? String { name = n }
            guard let list = map["layers"] as? [Any] else { throw ModelSpecError("\(source): needs a 'layers' list") }
            let unknown = Set(map.keys).subtracting(["name", "layers"])
            if !unknown.isEmpty { throw ModelSpecError("\(source): unknown key(s) \(unknown.sorted().joined(separator: ", ")); expected name, layers") }
            entries = list
        } else {
            throw ModelSpecError("\(source): expected a map with 'layers' or a list of layers")
        }
        guard !entries.isEmpty else { throw ModelSpecError("\(source): the layer list is empty") }
        return ModelSpec(name: name, layers: try entries.enumerated().map { try parseLayer($1, index: $0, source: source) })
    }

    private static func parseLayer(_ entry: Any, index: Int, source: String) throws -> LayerSpec {
        let place = "\(source): layer \(index)"
        var settings: [String: Any] = [:]
        let typeName: String
        if let name = entry as? String {
            typeName = name
        } else if let map = entry as? [String: Any] {
            if let t = map["type"] as? String {
                typeName = t
                settings = map.filter { $0.key != "type" }
            } else if map.count == 1, let (key, value) = map.first {
                // `- conv2d: {out: 16, kernel: 3}`
                typeName = key
                if let inner = value as? [String: Any] { settings = inner } else if !(value is NSNull) {
                    throw ModelSpecError("\(place): settings of '\(key)' must be a map")
                }
            } else {
                throw ModelSpecError("\(place): a layer map needs a 'type'")
            }
        } else {
            throw ModelSpecError("\(place): expected a layer name or a map")
        }
        let aliases = ["batchnorm1d": "batchnorm", "batchnorm2d": "batchnorm", "bn": "batchnorm", "conv": "conv2d",
                       "maxpool": "maxpool2d", "avgpool": "avgpool2d", "globalavgpool": "globalavgpool2d",
                       "dense": "linear", "basicblock": "residual"]
        let lowered = typeName.lowercased()
        guard let kind = LayerSpec.Kind(rawValue: aliases[lowered] ?? lowered) else {
            throw ModelSpecError("\(place): unknown layer type '\(typeName)'; known: \(LayerSpec.Kind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var spec = LayerSpec(kind)
        func int(_ key: String) throws -> Int? {
            guard let v = settings[key] else { return nil }
            guard let i = v as? Int, i >= 0 else { throw ModelSpecError("\(place) (\(kind.rawValue)): '\(key)' must be a non-negative integer, got \(v)") }
            return i
        }
        func float(_ key: String) throws -> Float? {
            guard let v = settings[key] else { return nil }
            // Layers compute in Float32: a value beyond its range (1e39) would be infinite there.
            let value = (v as? Double).map { Float($0) } ?? (v as? Int).map { Float($0) }
            guard let value, value.isFinite else {
                throw ModelSpecError("\(place) (\(kind.rawValue)): '\(key)' must be a finite number (in Float32's range), got \(v)")
            }
            return value
        }
        let allowed: Set<String>
        switch kind {
        case .linear: allowed = ["out", "bias", "init"]
        case .conv2d: allowed = ["out", "kernel", "stride", "padding", "bias", "init"]
        case .maxpool2d, .avgpool2d: allowed = ["kernel", "stride", "padding"]
        case .batchnorm: allowed = ["eps", "momentum"]
        case .dropout: allowed = ["p"]
        case .leakyrelu: allowed = ["slope"]
        case .elu: allowed = ["alpha"]
        case .residual: allowed = ["out", "stride", "init"]
        default: allowed = []
        }
        let unknown = Set(settings.keys).subtracting(allowed)
        if !unknown.isEmpty {
            throw ModelSpecError("\(place) (\(kind.rawValue)): unknown setting(s) \(unknown.sorted().joined(separator: ", "))"
                                 + (allowed.isEmpty ? "; it takes none" : "; it takes \(allowed.sorted().joined(separator: ", "))"))
        }
        spec.out = try int("out")
        spec.kernel = try int("kernel")
        spec.stride = try int("stride")
        spec.padding = try int("padding")
        if let b = settings["bias"] {
            guard let flag = b as? Bool else { throw ModelSpecError("\(place) (\(kind.rawValue)): 'bias' must be true or false, got \(b)") }
            spec.bias = flag
        }
        spec.p = try float("p")
        spec.slope = try float("slope")
        spec.alpha = try float("alpha")
        spec.eps = try float("eps")
        spec.momentum = try float("momentum")
        if let i = settings["init"] {
            guard let s = i as? String else { throw ModelSpecError("\(place): 'init' must be a name like he-normal, got \(i)") }
            // Checked here, so that the error names the file and the layer (and `summary` refuses it too).
            do { _ = try Initializer(parsing: s) } catch { throw ModelSpecError("\(place) (\(kind.rawValue)): 'init': \(error)") }
            spec.initializer = s
        }
        switch kind {
        case .linear, .residual:
            guard let out = spec.out, out > 0 else { throw ModelSpecError("\(place) (\(kind.rawValue)): needs 'out' > 0") }
        case .conv2d:
            guard let out = spec.out, out > 0 else { throw ModelSpecError("\(place) (conv2d): needs 'out' > 0") }
            guard let k = spec.kernel, k > 0 else { throw ModelSpecError("\(place) (conv2d): needs 'kernel' > 0") }
        case .maxpool2d, .avgpool2d:
            guard let k = spec.kernel, k > 0 else { throw ModelSpecError("\(place) (\(kind.rawValue)): needs 'kernel' > 0") }
        case .dropout:
            if let p = spec.p, !(p >= 0 && p < 1) { throw ModelSpecError("\(place) (dropout): 'p' must be in [0, 1), got \(p)") }
        default: break
        }
        if spec.stride == 0 { throw ModelSpecError("\(place) (\(kind.rawValue)): 'stride' must be at least 1") }
        if let eps = spec.eps, !(eps > 0 && eps.isFinite) { throw ModelSpecError("\(place) (batchnorm): 'eps' must be a positive number, got \(eps)") }
        if let m = spec.momentum, !(m >= 0 && m <= 1) { throw ModelSpecError("\(place) (batchnorm): 'momentum' must be in [0, 1], got \(m)") }
        for (key, value, limit) in [("out", spec.out, 65_536), ("kernel", spec.kernel, 64), ("padding", spec.padding, 64), ("stride", spec.stride, 64)] {
            if let value, value > limit { throw ModelSpecError("\(place) (\(kind.rawValue)): '\(key)' \(value) is larger than \(limit)") }
        }
        return spec
    }

    /// The layers, with sizes inferred from `inputShape` (per sample).
    public func makeLayers(inputShape: Shape) throws -> [Layer] {
        var shape = inputShape.withBatch(1)
        var layers: [Layer] = []
        for (index, spec) in self.layers.enumerated() {
            let layer: Layer
            let needs4D = { (what: String) throws in
                guard shape.rank == 4 else { throw ModelSpecError("layer \(index) (\(what)) needs [c, h, w] input, got \(shape.sampleDims)") }
            }
            switch spec.kind {
            case .linear: layer = Linear(shape.perSample, spec.out!, bias: spec.bias ?? true)
            case .conv2d:
                try needs4D("conv2d")
                layer = Conv2d(inChannels: shape.c, outChannels: spec.out!, kernel: spec.kernel!, stride: spec.stride ?? 1,
                               padding: spec.padding ?? 0, bias: spec.bias ?? true)
            case .maxpool2d:
                try needs4D("maxpool2d")
                layer = MaxPool2d(kernel: spec.kernel!, stride: spec.stride, padding: spec.padding ?? 0)
            case .avgpool2d:
                try needs4D("avgpool2d")
                layer = AvgPool2d(kernel: spec.kernel!, stride: spec.stride, padding: spec.padding ?? 0)
            case .globalavgpool2d:
                try needs4D("globalavgpool2d")
                layer = GlobalAvgPool2d()
            case .flatten: layer = Flatten()
            case .identity: layer = Identity()
            case .batchnorm: layer = BatchNorm(features: shape.c, eps: spec.eps ?? 1e-5, momentum: spec.momentum ?? 0.1)
            case .relu: layer = ReLU()
            case .leakyrelu: layer = LeakyReLU(negativeSlope: spec.slope ?? 0.01)
            case .elu: layer = ELU(alpha: spec.alpha ?? 1)
            case .selu: layer = SELU()
            case .gelu: layer = GELU()
            case .tanh: layer = Tanh()
            case .sigmoid: layer = Sigmoid()
            case .dropout: layer = Dropout(p: spec.p ?? 0.5)
            case .residual:
                try needs4D("residual")
                layer = ResidualBlock(inChannels: shape.c, outChannels: spec.out!, stride: spec.stride ?? 1)
            }
            do {
                shape = try layer.outputShape(for: shape)
            } catch {
                throw ModelSpecError("layer \(index) (\(layer.summary)) does not fit input \(shape.sampleDims): \(error)")
            }
            // BLAS takes 32-bit sizes, and the shape arithmetic below must not overflow.
            guard let values = checkedProduct([shape.c, shape.h, shape.w]), values <= ModelSpec.maxValuesPerSample else {
                throw ModelSpecError("layer \(index) (\(layer.summary)): its output \(shape.sampleDims) has more than \(ModelSpec.maxValuesPerSample) values per sample")
            }
            layers.append(layer)
        }
        return layers
    }

    /// Builds the model over flat storage for batches of up to `maxBatch` samples.
    /// `sharingParametersOf`: a replica reading that model's parameters; `gradientRoom`:
    /// Floats after its gradients, `gradientSlots`: shards per batch (see `Model.init`).
    public func build(inputShape: Shape, maxBatch: Int, sharingParametersOf shared: Model? = nil, gradientRoom: Int = 0,
                      gradientSlots: Int = 1) throws -> Model {
        try Model(layers: makeLayers(inputShape: inputShape), inputShape: inputShape, maxBatch: maxBatch, sharingParametersOf: shared,
                  gradientRoom: gradientRoom, gradientSlots: gradientSlots)
    }

    /// The same model with every batch-norm layer replaced by an identity (`--bn none`),
    /// keeping every layer index. A residual block's batch norms are part of the block and
    /// cannot be taken out, so such a model is refused.
    public func withoutBatchNorm() throws -> ModelSpec {
        if layers.contains(where: { $0.kind == .residual }) {
            throw ModelSpecError("--bn none: model \(name) has batch norm inside its residual blocks, which cannot be removed")
        }
        return ModelSpec(name: name, layers: layers.map { $0.kind == .batchnorm ? LayerSpec(.identity) : $0 })
    }

    /// Per-layer initializer names, by layer index.
    public var layerInitializers: [Int: String] {
        var map: [Int: String] = [:]
        for (i, spec) in layers.enumerated() { if let name = spec.initializer { map[i] = name } }
        return map
    }
}

/// What one replica of a model needs at the least, counted before anything is allocated.
public struct ModelFootprint: Equatable, Sendable {
    /// Trainable parameters (the length of the parameter and gradient buffers).
    public var parameters: Int
    /// Float32 values of layer outputs and convolution columns written by one forward of
    /// the batch it was counted for (backward needs more; this is a lower bound).
    public var activations: Int
}

extension ModelSpec {
    /// Values per sample of any layer's output: BLAS dimensions are 32-bit.
    public static let maxValuesPerSample = Int(Int32.max)

    /// Parameters and activations of one replica for batches of `batch` samples, with
    /// overflow-checked arithmetic; throws naming the layer whose size cannot be counted.
    public func footprint(inputShape: Shape, batch: Int) throws -> ModelFootprint {
        var total = ModelFootprint(parameters: 0, activations: 0)
        var shape = inputShape.withBatch(1)
        for (index, layer) in try makeLayers(inputShape: inputShape).enumerated() {
            let output = try layer.outputShape(for: shape)
            func fail() -> ModelSpecError {
                ModelSpecError("layer \(index) (\(layer.summary)): its sizes for batches of \(batch) overflow 64-bit arithmetic")
            }
            for spec in layer.parameterSpecs {
                guard let count = checkedProduct(spec.shape), case let (sum, false) = total.parameters.addingReportingOverflow(count) else { throw fail() }
                total.parameters = sum
            }
            var values: [Int?] = []
            switch layer {
            case is Flatten, is Identity, is ReLU:
                break  // views of their input (a ReLU after batch norm runs inside it)
            case let conv as Conv2d:
                values.append(checkedProduct([batch, output.c, output.h, output.w]))
                if !(conv.kernel == 1 && conv.stride == 1 && conv.padding == 0) {
                    values.append(checkedProduct([batch, conv.inChannels, conv.kernel, conv.kernel, output.h, output.w]))
                }
            default:
                values.append(checkedProduct([batch, output.c, output.h, output.w]))
            }
            for value in values {
                guard let value, case let (sum, false) = total.activations.addingReportingOverflow(value) else { throw fail() }
                total.activations = sum
            }
            shape = output
        }
        return total
    }

    /// Refuses a model that cannot fit in this machine's memory before anything is
    /// allocated: one parameter buffer, a gradient buffer and the activations of its part of
    /// the batch per replica (compute thread), `optimizerSlots` state buffers, for every
    /// rank on this node, against `available` bytes (MemAvailable; nil: not known, only
    /// the overflow checks apply); and one rank's part against what the process's own
    /// limits leave (`processRoom`: `ulimit -v`, `ulimit -d`). `batch` is the rank's largest batch.
    public func checkMemory(inputShape: Shape, batch: Int, replicas: Int, optimizerSlots: Int, ranksOnNode: Int,
                            gradientSlots: Int = 1, available: Int? = MemoryInfo.availableBytes(),
                            processRoom: (bytes: Int, limit: String)? = MemoryInfo.processRoom()) throws {
        let part = batch / replicas + (batch % replicas == 0 ? 0 : 1)
        let one = try footprint(inputShape: inputShape, batch: part)
        func tooLarge() -> ModelSpecError {
            ModelSpecError("model \(name): \(one.parameters) parameters and batches of \(batch) need more memory than 64-bit sizes can count")
        }
        // Parameters, each replica's gradient slots (one per shard it holds), optimizer state.
        guard let gradientValues = checkedProduct([replicas, max(gradientSlots, 1)]),
              let stateValues = checkedProduct([one.parameters, 1 + gradientValues + optimizerSlots]),
              let activationValues = checkedProduct([one.activations, replicas]),
              case let (rankValues, false) = stateValues.addingReportingOverflow(activationValues),
              let nodeBytes = checkedProduct([rankValues, 4, max(ranksOnNode, 1)]) else { throw tooLarge() }
        func size(_ bytes: Int) -> String {
            bytes >= 1_000_000_000 ? String(format: "%.1f GB", Double(bytes) / 1e9) : String(format: "%.1f MB", Double(bytes) / 1e6)
        }
        let needs = "model \(name) needs \(size(rankValues * 4)) per rank (\(size(stateValues * 4)) for \(one.parameters) parameters, "
            + "gradients and optimizer state; \(size(activationValues * 4)) for the activations of batches of \(batch))"
        if let available, nodeBytes > available {
            let ranks = ranksOnNode > 1 ? ", times \(ranksOnNode) ranks on this node" : ""
            throw ModelSpecError("\(needs)\(ranks); this machine has \(size(available)) available")
        }
        if let processRoom, rankValues * 4 > processRoom.bytes {
            throw ModelSpecError("\(needs); \(processRoom.limit): raise the limit or train a smaller model or batch")
        }
    }
}

extension Model {
    /// A table of layers with output shapes and parameter counts, and the totals.
    public func summaryTable(name: String) -> String {
        var rows: [(String, String, String, String)] = [("#", "layer", "output", "parameters")]
        rows.append(("", "input", "\(inputShape.sampleDims)", ""))
        for (i, layer) in layers.enumerated() {
            let count = parameterViews.filter { $0.layerIndex == i }.reduce(0) { $0 + $1.count }
            rows.append(("\(i)", layer.summary, "\(layerOutputShapes[i].sampleDims)", count == 0 ? "-" : "\(count)"))
        }
        let widths = (0..<4).map { c in rows.map { [$0.0, $0.1, $0.2, $0.3][c].count }.max()! }
        func pad(_ s: String, _ w: Int, right: Bool = false) -> String {
            right ? String(repeating: " ", count: w - s.count) + s : s + String(repeating: " ", count: w - s.count)
        }
        var text = "model \(name)\n"
        for r in rows {
            text += pad(r.0, widths[0], right: true) + "  " + pad(r.1, widths[1]) + "  " + pad(r.2, widths[2]) + "  " + pad(r.3, widths[3], right: true) + "\n"
        }
        let trainable = parameterCount
        let bufferCount = bufferViews.filter { !$0.isCounter }.reduce(0) { $0 + $1.count }
        text += "total parameters: \(trainable) (\(String(format: "%.2f", Double(trainable) * 4 / 1_048_576)) MiB as Float32); buffers: \(bufferCount)\n"
        return text
    }
}

extension LayerSpec {
    /// The settings that are set, as `kind key=value ...` (for messages that compare layers).
    public var settingsText: String {
        var parts = [kind.rawValue]
        for child in Mirror(reflecting: self).children {
            guard let label = child.label, label != "kind" else { continue }
            let value = Mirror(reflecting: child.value)
            if value.displayStyle == .optional {
                if let wrapped = value.children.first?.value { parts.append("\(label)=\(wrapped)") }
            } else {
                parts.append("\(label)=\(child.value)")
            }
        }
        return parts.joined(separator: " ")
    }
}
