import DDPKernels

/// Which samples each rank trains on (DESIGN step 1, I2, I3). One global permutation per
/// (seed, epoch), computed identically on every rank without communication; global batch k
/// is a fixed slice of it whatever the world size, cut into shards; rank r takes its own
/// contiguous block of shards. So the union over ranks of a step's samples, in rank order, is the same
/// global batch for any world size.
///
/// An epoch has ceil(N / B) steps: the last global batch holds the N mod B samples left over
/// (if any), so every sample is seen once per epoch.
public struct Sampler: Equatable, Sendable {
    public let datasetSize: Int
    public let globalBatch: Int
    public let worldSize: Int
    public let rank: Int
    public let seed: UInt64
    public let shuffle: Bool

    public init(datasetSize: Int, globalBatch: Int, worldSize: Int, rank: Int, seed: UInt64,
                shuffle: Bool = true) {
        precondition(datasetSize >= 0 && datasetSize <= Int(Int32.max), "dataset size \(datasetSize) out of range")
        precondition(globalBatch >= 1, "global batch must be at least 1")
        precondition(worldSize >= 1 && (0..<worldSize).contains(rank), "rank \(rank) outside world of \(worldSize)")
        self.datasetSize = datasetSize
        self.globalBatch = globalBatch
        self.worldSize = worldSize
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
    }

    public var stepsPerEpoch: Int { (datasetSize + globalBatch - 1) / globalBatch }

    /// The sample order of `epoch`: a permutation of 0..<N, or 0, 1, ... without shuffle.
    /// Fisher-Yates where the swap partner of position i is Philox word i of stream `epoch`,
    /// so the order depends only on (seed, epoch).
    public func epochOrder(_ epoch: Int) -> [Int32] {
        var order = (0..<Int32(datasetSize)).map { $0 }
        guard shuffle, datasetSize > 1 else { return order }
        let random = Philox(seed: seed, purpose: .shuffle)
        let stream = UInt32(truncatingIfNeeded: epoch)
        order.withUnsafeMutableBufferPointer { order in
            for i in stride(from: datasetSize - 1, to: 0, by: -1) {
                order.swapAt(i, random.below(i + 1, index: UInt64(i), stream: stream))
            }
        }
        return order
    }

    /// Positions in the epoch order of global batch k.
    public func globalBatchRange(_ k: Int) -> Range<Int> {
        precondition(k >= 0 && k < stepsPerEpoch, "batch \(k) outside 0..<\(stepsPerEpoch)")
        return k * globalBatch ..< min((k + 1) * globalBatch, datasetSize)
    }

    /// Global batch k cut into shards of `shardSize` samples, shared among the ranks.
    public func shardPlan(ofBatch k: Int, shardSize: Int) -> ShardPlan {
        ShardPlan(samples: globalBatchRange(k).count, shardSize: shardSize, worldSize: worldSize)
    }

    /// Positions in the epoch order of this rank's part of global batch k: the samples of
    /// its block of shards (`ShardPlan.block`), in order. A part is empty when there are
    /// fewer shards than ranks; that rank still joins every collective (I3).
    public func localSlice(ofBatch k: Int, shardSize: Int) -> Range<Int> {
        let plan = shardPlan(ofBatch: k, shardSize: shardSize)
        let inBatch = plan.samples(ofShards: plan.block(rank: rank))
        let start = globalBatchRange(k).lowerBound
        return start + inBatch.lowerBound ..< start + inBatch.upperBound
    }

    /// This rank's share of `count` evaluation samples: contiguous, sizes differ by at most
    /// one, every sample on exactly one rank, no padding.
    public static func evaluationSlice(count: Int, worldSize: Int, rank: Int) -> Range<Int> {
        contiguousPart(0..<count, parts: worldSize, index: rank)
    }
}
