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

/// The batch statistics of one batch-norm call, shard by shard (virtual shards, DESIGN I2):
/// per shard of the batch, a record of its sample count per channel, then per channel the
/// mean and the centred sum of squares (M2). Combining means and M2s (Chan et al.) rather
/// than raw sums keeps the variance exact for inputs whose mean is large against their spread.
public struct ShardMoments {
    /// `shards` records of `recordSize` Doubles: count, means, M2s.
    public var records: UnsafeMutablePointer<Double>
    public var shards: Int
    public var channels: Int
    /// The global index (in the step's global batch) of the first shard.
    public var firstShard: Int
    /// Out: one record, the statistics the running estimates follow.
    public var running: UnsafeMutablePointer<Double>

    public init(records: UnsafeMutablePointer<Double>, shards: Int, channels: Int, firstShard: Int, running: UnsafeMutablePointer<Double>) {
        self.records = records; self.shards = shards; self.channels = channels; self.firstShard = firstShard; self.running = running
    }
    public var recordSize: Int { 1 + 2 * channels }
    public static func recordSize(channels: Int) -> Int { 1 + 2 * channels }
}

/// Where batch norm gets its batch statistics from. Batch norm knows nothing of MPI: it
/// hands over its shards' moments and gets back, per shard, the statistics that shard
/// normalizes with: those of the shard's statistics group (the rank's shards, a group of
/// consecutive shards, or the whole global batch with sync-BN), combined along the fixed
/// shard tree, so the bits do not depend on who computed which shard.
public protocol BatchStatisticsReducer: AnyObject {
    /// On entry, each shard's own moments; on exit, each shard's group's, and in `running`
    /// the moments the running statistics follow.
    func combineMoments(_ moments: ShardMoments) throws
    /// `shards` records of `width` Doubles, the first of them shard `firstShard`: on exit,
    /// each record is the sum of its group's records.
    func sum(_ records: UnsafeMutablePointer<Double>, width: Int, shards: Int, firstShard: Int) throws
}

/// Chan et al.'s pairwise merge, per channel: folds a part's count, means and M2s into the
/// running (n, mean, m2) of the parts before it.
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

/// Folds moment record `part` into record `into` (both count, means, M2s): Chan's merge,
/// an empty record leaving the other as it is.
@inline(__always)
public func mergeMomentRecord(into a: UnsafeMutablePointer<Double>, _ b: UnsafePointer<Double>, channels: Int) {
    let nb = b[0]
    if nb == 0 { return }
    if a[0] == 0 {
        a.update(from: b, count: 1 + 2 * channels)
        return
    }
    mergeMoments(mean: a + 1, m2: a + 1 + channels, count: a[0], partMean: b + 1, partM2: b + 1 + channels, partCount: nb, channels: channels)
    a[0] += nb
}

/// Statistics of the shards handed over, all together: the batch of the call (a rank's
/// slice with `--bn local`), combined along the shard tree of those shards.
public final class LocalStatistics: BatchStatisticsReducer, Sendable {
    /// It holds nothing, so one instance serves every context.
    public static let shared = LocalStatistics()
    public init() {}

    public func combineMoments(_ m: ShardMoments) throws {
        let size = m.recordSize
        if m.shards > 0 {
            let tree = ShardTree(span: 0..<m.shards)
            let top = tree.reduceShards(tree.root) { i, j in
                mergeMomentRecord(into: m.records + i * size, m.records + j * size, channels: m.channels)
            }
            m.running.update(from: m.records + top * size, count: size)
        } else {
            m.running.update(repeating: 0, count: size)
        }
        for j in 0..<m.shards { (m.records + j * size).update(from: m.running, count: size) }
    }

    public func sum(_ records: UnsafeMutablePointer<Double>, width: Int, shards: Int, firstShard: Int) throws {
        guard shards > 1 else { return }
        let tree = ShardTree(span: 0..<shards)
        let top = tree.reduceShards(tree.root) { i, j in
            let a = records + i * width, b = records + j * width
            for k in 0..<width { a[k] += b[k] }
        }
        for j in 0..<shards where j != top { (records + j * width).update(from: records + top * width, count: width) }
    }
}

/// What a step tells the layers: mode, where randomness comes from, the shards of the
/// batch, and the BN reducer.
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
    /// Samples per shard: sums over samples (parameter gradients, batch statistics) are
    /// taken shard by shard, shard j being samples j·size ..< (j+1)·size of the batch. nil:
    /// the whole batch is one shard.
    public var shardSize: Int?
    /// The global index of the batch's first shard (batch statistics are grouped by it).
    public var firstShard: Int
    /// Floats between the gradient slots of the model: shard j's parameter gradients go to
    /// slot j (the slots are then combined along the shard tree).
    public var gradientSlotStride: Int

    public init(training: Bool, seed: UInt64 = 0, step: Int = 0, sampleIDs: UnsafePointer<Int32>? = nil,
                statistics: BatchStatisticsReducer = LocalStatistics.shared, shardSize: Int? = nil, firstShard: Int = 0,
                gradientSlotStride: Int = 0) {
        self.training = training; self.seed = seed; self.step = step
        self.sampleIDs = sampleIDs; self.statistics = statistics
        self.shardSize = shardSize; self.firstShard = firstShard; self.gradientSlotStride = gradientSlotStride
    }

    /// The identity of local sample `i` (its position when no identities were given).
    @inline(__always)
    public func sampleID(_ i: Int) -> Int { sampleIDs.map { Int($0[i]) } ?? i }

    /// Shards in a batch of `n` samples.
    @inline(__always)
    public func shards(batch n: Int) -> Int { shardCount(batch: n, shardSize: shardSize) }

    /// Samples of shard `j` in a batch of `n`.
    @inline(__always)
    public func shard(_ j: Int, batch n: Int) -> Range<Int> { shardRange(j, batch: n, shardSize: shardSize) }
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
/// accumulated: those of the batch's shard j (`ForwardContext.shard`) go to gradient slot j,
/// each summed over that shard's samples alone.
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
    /// A layer made of layers runs `fuseNeighbours` over its own sequence.
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
