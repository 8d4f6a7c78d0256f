import DDPComm
import DDPKernels
import DDPNet
import Foundation

/// This rank's model, one replica per compute thread (`--threads`), all reading one
/// parameter buffer: data parallelism inside the rank, as across ranks.
///
/// A step's shards (virtual shards, DESIGN I2) are dealt out in contiguous runs, one per
/// thread (`ThreadTeam.part`): a thread takes whole shards. Each replica runs forward, loss
/// and backward on its shards with BLAS single-threaded, every parameter gradient and loss
/// sum taken per shard into the replica's gradient slot of that shard; batch norm's
/// statistics go through TeamStatistics. Then the members sum the shards' slots along the
/// shard tree, each member its own range of the vector, into the pieces of the tree the
/// rank's shards cover: what GradientSync combines across ranks. Dropout masks are drawn per
/// sample identity. So the result does not depend on the thread count, bit for bit.
///
/// Splitting the batch, rather than each layer's loops, keeps every thread on its own
/// activations from the first layer to the last (no hand-over between layers, one
/// synchronization per batch norm) and lets OpenBLAS run its small per-sample GEMMs
/// single-threaded, where they are fastest.
public final class ComputeReplicas {
    public let team: ThreadTeam
    /// models[0] is the rank's model; the others read its parameters.
    public let models: [Model]
    public var main: Model { models[0] }
    /// The largest batch of the rank the replicas were sized for.
    public let maxBatch: Int
    /// Samples per shard in training, and the most shards a rank holds in a step.
    public let shardSize: Int
    public let maxShards: Int
    let losses: [SoftmaxCrossEntropy]
    /// Per member: the reducer its batch norms use in training.
    let statistics: [BatchStatisticsReducer]
    let teamStatistics: TeamStatistics?
    private let lossSums: UnsafeMutablePointer<Double>
    private let corrects: UnsafeMutablePointer<Int>
    /// Per member, per shard of its part: loss sum and correct count.
    private let shardSums: [DoubleBuffer]

    /// `maxBatch`: the largest evaluation batch of the rank; `shardSize` and `maxShards`:
    /// the training shards (a member is sized for its part of both). `gradientRoom`: Floats
    /// after each shard's gradients (GradientSync.tailCount).
    public init(spec: ModelSpec, inputShape: Shape, maxBatch: Int, threads: Int, classes: Int, labelSmoothing: Float,
                rankStatistics: BatchStatisticsReducer, dropout: Double?, gradientRoom: Int = 0,
                shardSize: Int? = nil, maxShards: Int = 1) throws {
        team = try ThreadTeam(size: threads)
        self.maxBatch = maxBatch
        let shardSize = shardSize ?? max(maxBatch, 1)
        self.shardSize = shardSize
        self.maxShards = max(maxShards, 1)
        let memberShards = (self.maxShards + threads - 1) / threads
        // A member holds at most its shards' samples, and never more than the rank's batch.
        let part = max((maxBatch + threads - 1) / threads, min(memberShards * shardSize, maxBatch))
        let first = try spec.build(inputShape: inputShape, maxBatch: part, gradientRoom: gradientRoom, gradientSlots: memberShards)
        var models = [first]
        for _ in 1..<threads {
            models.append(try spec.build(inputShape: inputShape, maxBatch: part, sharingParametersOf: first,
                                         gradientRoom: gradientRoom, gradientSlots: memberShards))
        }
        if let p = dropout {
            for model in models { for case let layer as Dropout in model.layers { layer.p = Float(p) } }
        }
        self.models = models
        losses = models.map { _ in SoftmaxCrossEntropy(classes: classes, maxBatch: part, labelSmoothing: labelSmoothing) }
        if threads == 1 {
            statistics = [rankStatistics]
            teamStatistics = nil
        } else {
            let shared = TeamStatistics(team: team, rankReducer: rankStatistics, channels: first.widestBatchNorm, maxShards: self.maxShards)
            statistics = shared.members
            teamStatistics = shared
        }
        lossSums = .allocate(capacity: threads)
        corrects = .allocate(capacity: threads)
        shardSums = models.map { _ in DoubleBuffer(capacity: 2 * memberShards) }
        // One BLAS thread inside each compute thread: OpenBLAS's own pool would fight ours
        // for the cores, and its threads gain nothing on per-sample GEMMs this small.
        BLASThreads.set(1)
    }

    deinit {
        lossSums.deallocate()
        corrects.deallocate()
    }

    public var threads: Int { team.size }

    /// What a training pass leaves: this rank's pieces of the shard tree (GradientSync's
    /// input, each the gradient sums and counts of its shards), the rank's loss sum and
    /// correct count, and the seconds member 0 spent in forward and loss (the rest of the
    /// call is backward and the shard sums), and of those in sync-BN's collectives.
    public struct TrainingResult {
        public var pieces: [UnsafeMutablePointer<Float>]
        public var lossSum: Double
        public var correct: Int
        public var forwardSeconds: Double
        public var forwardCommunicationSeconds: Double
    }

    /// Forward, loss and backward of the rank's shards `block` of `plan` (their `count`
    /// samples at `x`, `sampleShape` with n = 1, with labels and dataset indices).
    /// `communicationSeconds` (sync-BN's clock) is read right after forward, so that the
    /// caller can tell forward's collectives from backward's.
    public func trainingPass(x: UnsafeMutablePointer<Float>, sampleShape: Shape, labels: UnsafePointer<Int32>,
                             ids: UnsafePointer<Int32>, count: Int, plan: ShardPlan, block: Range<Int>, seed: UInt64, step: Int,
                             communicationSeconds: () -> Double = { 0 }) throws -> TrainingResult {
        precondition(plan.shardSize == shardSize && plan.samples(ofShards: block).count == count,
                     "a pass over \(count) samples as shards \(block) of \(plan)")
        try checkBatch(count)
        guard block.count <= maxShards else {
            throw LayerError("\(block.count) shards in a step, more than the \(maxShards) the replicas were sized for")
        }
        for model in models.dropFirst() { model.copyBuffers(from: main) }
        teamStatistics?.beginPass(firstShard: block.lowerBound, shards: block.count)
        let perSample = sampleShape.perSample
        let stride = main.gradientSlotStride
        let m = shardSize
        let width = main.parameterCount + main.gradientRoom
        // Where each of the rank's shards leaves its sums: its member's slot.
        var slots: [UnsafeMutablePointer<Float>] = []
        for member in 0..<threads {
            for j in 0..<team.part(member, of: block.count).count { slots.append(models[member].gradients.pointer + j * stride) }
        }
        let pieces = plan.tree.pieces(of: block)
        var tops = [Int](repeating: 0, count: pieces.count)
        var forwardSeconds = 0.0, forwardCommunication = 0.0
        try team.run { member in
            let shards = team.part(member, of: block.count)
            let samples = min(shards.lowerBound * m, count) ..< min(shards.upperBound * m, count)
            let model = models[member]
            let start = member == 0 ? Clock.seconds() : 0
            let context = ForwardContext(training: true, seed: seed, step: step, sampleIDs: ids + samples.lowerBound,
                                         statistics: statistics[member], shardSize: m, firstShard: block.lowerBound + shards.lowerBound,
                                         gradientSlotStride: stride)
            let logits = try model.forward(Tensor(x + samples.lowerBound * perSample, sampleShape.withBatch(samples.count)), context)
            let sums = shardSums[member].pointer
            let result = losses[member](logits, labels: labels + samples.lowerBound, shardSize: m, shardSums: sums)
            lossSums[member] = result.lossSum
            corrects[member] = result.correct
            if member == 0 {
                forwardCommunication = communicationSeconds()
                forwardSeconds = Clock.seconds() - start - forwardCommunication
            }
            try model.backward(result.gradient, context)
            for j in 0..<shards.count {
                GradientSync.pack(model.gradients.pointer + j * stride, parameterCount: model.parameterCount,
                                  lossSum: sums[2 * j], correct: sums[2 * j + 1], samples: shardRange(j, batch: samples.count, shardSize: m).count)
            }
            // Every shard's sums are complete: each member adds its own range of the vector
            // along the tree under each of the rank's pieces.
            if threads > 1 { try team.barrier() }
            let range = team.part(member, of: width)
            for (p, piece) in pieces.enumerated() {
                let top = plan.tree.reduceShards(piece) { i, j in
                    let a = slots[i - block.lowerBound], b = slots[j - block.lowerBound]
                    for k in range { a[k] += b[k] }
                }
                if member == 0 { tops[p] = top - block.lowerBound }
            }
        }
        let sums = partialSums()
        return TrainingResult(pieces: tops.map { slots[$0] }, lossSum: sums.lossSum, correct: sums.correct,
                              forwardSeconds: forwardSeconds, forwardCommunicationSeconds: forwardCommunication)
    }

    /// Loss sum and correct count of `count` samples in evaluation mode; with `predictions`,
    /// each sample's predicted class too (its largest logit, the first on ties, as the
    /// correct count takes it).
    public func evaluationPass(x: UnsafeMutablePointer<Float>, sampleShape: Shape, labels: UnsafePointer<Int32>,
                               count: Int, predictions: UnsafeMutablePointer<Int32>? = nil) throws -> (lossSum: Double, correct: Int) {
        try checkBatch(count)
        for model in models.dropFirst() { model.copyBuffers(from: main) }
        let perSample = sampleShape.perSample
        try team.run { member in
            let part = team.part(member, of: count)
            let logits = try models[member].forward(Tensor(x + part.lowerBound * perSample, sampleShape.withBatch(part.count)),
                                                    ForwardContext(training: false))
            let result = losses[member](logits, labels: labels + part.lowerBound)
            lossSums[member] = result.lossSum
            corrects[member] = result.correct
            guard let predictions else { return }
            let k = logits.shape.perSample
            for i in 0..<part.count {
                let row = logits.data + i * k
                var best = 0
                for j in 1..<k where row[j] > row[best] { best = j }
                predictions[part.lowerBound + i] = Int32(best)
            }
        }
        return partialSums()
    }

    /// Once per pass, before any thread runs: the batch must fit what the replicas were sized for.
    private func checkBatch(_ count: Int) throws {
        guard count <= maxBatch else {
            throw LayerError.batchTooLarge("compute replicas (\(plural(threads, "thread")))", batch: count, capacity: maxBatch)
        }
    }

    /// The members' loss sums and correct counts, added in member order.
    private func partialSums() -> (lossSum: Double, correct: Int) {
        var lossSum = 0.0, correct = 0
        for m in 0..<threads { lossSum += lossSums[m]; correct += corrects[m] }
        return (lossSum, correct)
    }
}

extension ComputeReplicas {
    /// Cores on this node, and those this process may run on (its CPU affinity mask, which
    /// mpirun narrows when it binds ranks to cores).
    public static func cores() -> (node: Int, usable: Int) {
        let node = ProcessInfo.processInfo.activeProcessorCount
        // The kernel's own account of the mask ("Cpus_allowed:\tff,ffffffff"): Glibc's
        // sched_getaffinity needs _GNU_SOURCE, which Swift's Glibc module does not set.
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") }) else { return (node, node) }
        let usable = line.dropFirst("Cpus_allowed:".count).reduce(0) { count, digit in
            count + (digit.hexDigitValue?.nonzeroBitCount ?? 0)
        }
        return (node, max(1, min(usable, node)))
    }

    /// Compute threads per rank when --threads is not given: OPENBLAS_NUM_THREADS or else
    /// OMP_NUM_THREADS when set (the usual ways to say "threads per process";
    /// launch/mpirun sets the first to the cores per rank); otherwise, for a rank bound to
    /// some of the node's cores, those cores; otherwise the node's cores shared among the
    /// node's ranks (Open MPI's OMPI_COMM_WORLD_LOCAL_SIZE). A variable that is set must
    /// hold a count from 1 to 256.
    public static func defaultThreads(environment: [String: String] = ProcessInfo.processInfo.environment,
                                      cores: (node: Int, usable: Int) = cores()) throws -> Int {
        for name in ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"] {
            guard let raw = environment[name] else { continue }
            // OMP_NUM_THREADS may list one count per nesting level; the first is ours.
            let first = raw.split(separator: ",", omittingEmptySubsequences: false).first.map(String.init) ?? raw
            guard let value = Int(first.trimmingCharacters(in: .whitespaces)), TrainConfig.threadRange.contains(value) else {
                throw ConfigError("\(name)=\(raw) is not a thread count from 1 to 256 (ddptrain takes it as --threads); fix it or pass --threads")
            }
            return value
        }
        // Clamped to what --threads accepts, so that the recorded count (config.json,
        // checkpoints) loads again on a node with more cores than that.
        let cap = TrainConfig.threadRange.upperBound
        if cores.usable < cores.node { return min(max(1, cores.usable), cap) }
        return min(max(1, cores.node / localRanks(environment)), cap)
    }

    static func localRanks(_ environment: [String: String]) -> Int {
        max(1, environment["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap { Int($0) } ?? 1)
    }

    /// Said when a rank's threads (more than one) outnumber the cores they have: this rank's
    /// (when it is bound to some cores), or the node's shared by its ranks. Every step then waits for threads
    /// that are off their core.
    public static func oversubscriptionWarning(threads: Int, environment: [String: String] = ProcessInfo.processInfo.environment,
                                               cores: (node: Int, usable: Int) = cores()) -> String? {
        // One thread per rank is the least there is: more ranks than cores is mpirun's matter.
        guard threads > 1 else { return nil }
        if cores.usable < cores.node {
            guard threads > cores.usable else { return nil }
            return "\(plural(threads, "compute thread")) on the \(plural(cores.usable, "core")) this rank is bound to: threads will wait for each other; "
                + "use --threads \(cores.usable), or bind ranks to more cores"
        }
        let ranks = localRanks(environment)
        guard ranks * threads > cores.node else { return nil }
        return "\(plural(ranks, "rank")) x \(plural(threads, "compute thread")) on this node's \(plural(cores.node, "core")): threads will wait for each other; "
            + "use --threads \(max(1, cores.node / ranks))"
    }
}
