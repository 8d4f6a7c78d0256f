import DDPKernels

/// What a parameter is, which decides weight decay (weights only) and default initialization.
public enum ParameterRole: String, Sendable {
    /// Linear or convolution weight: decayed, initialized by the chosen scheme.
    case weight
    /// Linear or convolution bias: never decayed; zero except under `default` init.
    case bias
    /// Batch-norm gamma: never decayed; starts at 1.
    case normWeight
    /// Batch-norm beta: never decayed; starts at 0.
    case normBias

    public var isDecayed: Bool { self == .weight }
}

/// A parameter a layer owns, described before storage exists.
public struct ParameterSpec: Sendable {
    /// Name relative to the layer, PyTorch style: "weight", "bias", "conv1.weight".
    public var name: String
    /// PyTorch layout: linear [out, in], conv [out, in, kh, kw], vectors [n].
    public var shape: [Int]
    public var role: ParameterRole
    /// Fans for initializers; a convolution's include the kernel area. A bias carries
    /// its layer's fans (PyTorch's default bias bound is 1/sqrt(fan_in)).
    public var fanIn: Int
    public var fanOut: Int

    public init(name: String, shape: [Int], role: ParameterRole, fanIn: Int, fanOut: Int) {
        self.name = name; self.shape = shape; self.role = role; self.fanIn = fanIn; self.fanOut = fanOut
    }
    public var count: Int { shape.reduce(1, *) }
}

/// A non-learned tensor a layer keeps (batch-norm running statistics).
public struct BufferSpec: Sendable {
    public var name: String
    public var shape: [Int]
    public var initialValue: Float
    /// PyTorch's int64 `num_batches_tracked`: kept in the model's Int64 storage.
    public var isCounter: Bool

    public init(name: String, shape: [Int], initialValue: Float = 0, isCounter: Bool = false) {
        self.name = name; self.shape = shape; self.initialValue = initialValue; self.isCounter = isCounter
    }
    public var count: Int { shape.reduce(1, *) }
}

/// Views into the model's flat storage, one per spec, in spec order.
public struct LayerStorage {
    public var parameters: [UnsafeMutablePointer<Float>] = []
    public var gradients: [UnsafeMutablePointer<Float>] = []
    public var buffers: [UnsafeMutablePointer<Float>] = []
    public var counters: [UnsafeMutablePointer<Int64>] = []
    public init() {}
}

/// Where batch norm gets its batch statistics from. Batch norm knows nothing of MPI: it is
/// handed a local reducer (statistics of this rank's slice) or a cross-rank one (sync-BN).
public protocol BatchStatisticsReducer: AnyObject {
    /// On entry: this rank's sample count per channel (the same for all channels), and per
    /// channel the mean and the centred sum of squares (M2). On exit: the same over all
    /// ranks. Combining means and M2 (Chan et al.) rather than raw sums keeps the variance
    /// exact for inputs whose mean is large against their spread.
    func combineMoments(count: inout Double, mean: UnsafeMutablePointer<Double>, m2: UnsafeMutablePointer<Double>, channels: Int) throws
    /// Sums `count` values across ranks, in place.
    func sum(_ values: UnsafeMutablePointer<Double>, count: Int) throws
}

/// Chan et al.'s pairwise merge, per channel: folds a part's count, means and M2s into the
/// running (n, mean, m2) of the parts before it. Sync-BN merges ranks with it, a rank's
/// compute threads their parts.
@inline(__always)
public func mergeMoments(mean: UnsafeMutablePointer<Double>, m2: UnsafeMutablePointer<Double>, count n: Double,
                         partMean: UnsafePointer<Double>, partM2: UnsafePointer<Double>, partCount nb: Double, channels: Int) {
    let total = n + nb
    for c in 0..<channels {
        let delta = partMean[c] - mean[c]
        mean[c] += delta * nb / total
        m2[c] += partM2[c] + delta * delta * n * nb / total
    }
}

/// Statistics of this rank's own slice only.
public final class LocalStatistics: BatchStatisticsReducer, Sendable {
    /// It holds nothing, so one instance serves every context.
    public static let shared = LocalStatistics()
    public init() {}
    public func combineMoments(count: inout Double, mean: UnsafeMutablePointer<Double>, m2: UnsafeMutablePointer<Double>, channels: Int) throws {}
    public func sum(_ values: UnsafeMutablePointer<Double>, count: Int) throws {}
}

/// What a step tells the layers: mode, where randomness comes from, and the BN reducer.
public struct ForwardContext {
    public var training: Bool
    /// Run seed; dropout masks are Philox(seed, .dropout) at (layer, step, sample, element).
    public var seed: UInt64
    /// Global step number, the same on every rank.
    public var step: Int
    /// For each local sample, its identity (dataset index). Dropout masks are drawn per
    /// sample identity so that they do not depend on how the batch is split (DESIGN I2).
    public var sampleIDs: UnsafePointer<Int32>?
    public var statistics: BatchStatisticsReducer

    public init(training: Bool, seed: UInt64 = 0, step: Int = 0, sampleIDs: UnsafePointer<Int32>? = nil,
                statistics: BatchStatisticsReducer = LocalStatistics.shared) {
        self.training = training; self.seed = seed; self.step = step
        self.sampleIDs = sampleIDs; self.statistics = statistics
    }

    /// The identity of local sample `i` (its position when no identities were given).
    @inline(__always)
    public func sampleID(_ i: Int) -> Int { sampleIDs.map { Int($0[i]) } ?? i }
}

public struct LayerError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }

    /// A batch larger than the one `what`'s buffers were sized for.
    public static func batchTooLarge(_ what: String, batch: Int, capacity: Int) -> LayerError {
        LayerError("\(what): a batch of \(batch) samples is larger than the \(capacity) its buffers were sized for")
    }
}

/// One layer: forward in training and evaluation, backward.
///
/// Life cycle: `configure` once with the per-sample input shape and the largest batch (the
/// layer sizes its own output and workspace buffers there, and fixes its specs), then
/// `bind` once with views of the model's flat storage. After that, `forward` and
/// `backward` allocate nothing. `backward` must follow the `forward` of the same batch: a
/// layer may keep views of its input and output. Parameter gradients are overwritten, not
/// accumulated.
public protocol Layer: AnyObject {
    /// PyTorch's module text, e.g. "Linear(in_features=784, out_features=256, bias=False)".
    var summary: String { get }
    /// Output shape for an input shape (batch carried through). Throws on a mismatch.
    func outputShape(for input: Shape) throws -> Shape
    /// Sizes buffers for `maxBatch` samples of shape `input`.
    func configure(input: Shape, maxBatch: Int, index: Int) throws
    var parameterSpecs: [ParameterSpec] { get }
    var bufferSpecs: [BufferSpec] { get }
    func bind(_ storage: LayerStorage)
    /// False for the first layer: its input gradient is never used, so it is not computed.
    var needsInputGradient: Bool { get set }
    func forward(_ x: Tensor, _ context: ForwardContext) throws -> Tensor
    /// Takes the gradient of the loss with respect to this layer's output; returns the one
    /// with respect to its input (unspecified contents when `needsInputGradient` is false).
    func backward(_ dy: Tensor, _ context: ForwardContext) throws -> Tensor
    /// A layer made of layers runs `fuseBatchNormReLU` over its own sequence.
    func fuseInnerLayers(_ enabled: Bool)
}

public extension Layer {
    /// Every entry point that takes a batch checks it once against the batch its buffers
    /// were sized for in `configure` (outside the element loops, which trust it).
    func checkBatch(_ shape: Shape, capacity: Int) throws {
        guard shape.n <= capacity else { throw LayerError.batchTooLarge(summary, batch: shape.n, capacity: capacity) }
    }

    var parameterSpecs: [ParameterSpec] { [] }
    var bufferSpecs: [BufferSpec] { [] }
    func bind(_ storage: LayerStorage) {}
    func fuseInnerLayers(_ enabled: Bool) {}
}
