import DDPKernels
import DDPNet
import Foundation

/// This rank's model, one replica per compute thread (`--threads`), all reading one
/// parameter buffer: data parallelism inside the rank, as across ranks.
///
/// A step's slice is cut into contiguous parts, one per thread (`ThreadTeam.part`). Each
/// replica runs forward, loss and backward on its part with BLAS single-threaded; batch
/// norm sees the statistics of the whole slice (TeamStatistics); then the replicas'
/// gradients are summed, in thread order, into the first replica's buffer, the one the
/// allreduce, clipping, the optimizer and checkpoints use. Dropout masks are drawn per
/// sample identity, so they do not depend on the split either. The result equals one
/// thread's up to the order of floating-point sums, as with another world size (DESIGN
/// I2); runs with the same world size and thread count are bitwise reproducible.
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
    let losses: [SoftmaxCrossEntropy]
    /// Per member: the reducer its batch norms use in training.
    let statistics: [BatchStatisticsReducer]
    private let lossSums: UnsafeMutablePointer<Double>
    private let corrects: UnsafeMutablePointer<Int>

    /// `maxBatch`: the largest batch of the rank (training or evaluation); each replica is
    /// sized for its part of it. `gradientRoom`: Floats after the rank's model's gradients
    /// (the gradient allreduce's counts: GradientSync.tailCount).
    public init(spec: ModelSpec, inputShape: Shape, maxBatch: Int, threads: Int, classes: Int, labelSmoothing: Float,
                rankStatistics: BatchStatisticsReducer, dropout: Double?, gradientRoom: Int = 0) throws {
        team = try ThreadTeam(size: threads)
        self.maxBatch = maxBatch
        let part = (maxBatch + threads - 1) / threads
        let first = try spec.build(inputShape: inputShape, maxBatch: part, gradientRoom: gradientRoom)
        var models = [first]
        for _ in 1..<threads {
            models.append(try spec.build(inputShape: inputShape, maxBatch: part, sharingParametersOf: first))
        }
        if let p = dropout {
            for model in models { for case let layer as Dropout in model.layers { layer.p = Float(p) } }
        }
        self.models = models
        losses = models.map { _ in SoftmaxCrossEntropy(classes: classes, maxBatch: part, labelSmoothing: labelSmoothing) }
        if threads == 1 {
            statistics = [rankStatistics]
        } else {
            statistics = TeamStatistics(team: team, rankReducer: rankStatistics, channels: first.widestBatchNorm).members
        }
        lossSums = .allocate(capacity: threads)
        corrects = .allocate(capacity: threads)
        // One BLAS thread inside each compute thread: OpenBLAS's own pool would fight ours
        // for the cores, and its threads gain nothing on per-sample GEMMs this small.
        BLASThreads.set(1)
    }

    deinit {
        lossSums.deallocate()
        corrects.deallocate()
    }

    public var threads: Int { team.size }

    /// Forward, loss and backward of `count` samples (`sampleShape` with n = 1) at `x`,
    /// with their labels and dataset indices. Leaves the gradient of the summed loss in
    /// `main.gradients`; returns the loss sum, the correct count, and the seconds member 0
    /// spent in forward and loss (the rest of the call is backward and the gradient sum).
    /// `communicationSeconds` (sync-BN's clock) is read right after forward, so that the
    /// caller can tell forward's collectives from backward's.
    public func trainingPass(x: UnsafeMutablePointer<Float>, sampleShape: Shape, labels: UnsafePointer<Int32>,
                             ids: UnsafePointer<Int32>, count: Int, seed: UInt64, step: Int,
                             communicationSeconds: () -> Double = { 0 }) throws
        -> (lossSum: Double, correct: Int, forwardSeconds: Double, forwardCommunicationSeconds: Double) {
        try checkBatch(count)
        for model in models.dropFirst() { model.copyBuffers(from: main) }
        let perSample = sampleShape.perSample
        let parameterCount = main.parameterCount
        var forwardSeconds = 0.0, forwardCommunication = 0.0
        try team.run { member in
            let part = team.part(member, of: count)
            let model = models[member]
            let start = member == 0 ? Clock.seconds() : 0
            let context = ForwardContext(training: true, seed: seed, step: step, sampleIDs: ids + part.lowerBound,
                                         statistics: statistics[member])
            let logits = try model.forward(Tensor(x + part.lowerBound * perSample, sampleShape.withBatch(part.count)), context)
            let result = losses[member](logits, labels: labels + part.lowerBound)
            lossSums[member] = result.lossSum
            corrects[member] = result.correct
            if member == 0 {
                forwardCommunication = communicationSeconds()
                forwardSeconds = Clock.seconds() - start - forwardCommunication
            }
            try model.backward(result.gradient, context)
            guard threads > 1 else { return }
            // Every replica's gradient is complete: each member sums its own range of
            // parameters over the replicas, in replica order.
            try team.barrier()
            let range = team.part(member, of: parameterCount)
            let total = main.gradients.pointer
            for other in models.dropFirst() {
                let g = other.gradients.pointer
                for i in range { total[i] += g[i] }
            }
        }
        let sums = partialSums()
        return (sums.lossSum, sums.correct, forwardSeconds, forwardCommunication)
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
