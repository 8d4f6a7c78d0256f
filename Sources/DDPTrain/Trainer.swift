import DDPComm
import DDPData
import DDPKernels
import DDPNet
import DDPSystem
import Foundation

/// One data-parallel training run on this rank. After its set-up (init), `run()` is the
/// loop and its cadence (DESIGN's step 9: log, replica check, evaluation, checkpoint, the
/// stop at a step boundary) and `trainStep()`, right below it, is DESIGN's steps 1 to 8:
/// shard, forward, loss, backward, one allreduce of the gradients with the counts at their
/// tail, the exact mean, the non-finite check, clipping, the optimizer step.
public final class Trainer {
    public let config: TrainConfig
    public let world: Communicator
    public let model: Model
    /// The model once per compute thread; `model` is the first.
    public let replicas: ComputeReplicas
    let spec: ModelSpec
    let data: TrainingData
    let sampler: Sampler
    let optimizer: Optimizer
    let schedule: LearningRatePlan
    /// The shard groups' batch statistics (sync, group:G); nil for local.
    let shardStatistics: ShardStatistics?
    /// Steps 5 and 6: the gradient reduction along the shard tree with its counts, and the
    /// exact mean.
    let gradientSync: GradientSync
    var log: RunLog
    /// Said once the run starts (e.g. a hidden layer initialized to a constant).
    var warnings: [String] = []
    public let globalBatch: Int
    /// Samples per virtual shard (resolved: config.shardSize).
    public let shardSize: Int
    /// --lr, scaled to the global batch when --lr-reference-batch is given.
    public let baseLearningRate: Double
    public let totalSteps: Int
    let evalBatch: Int

    // Step buffers, sized once.
    let x: FloatBuffer
    let labels: UnsafeMutablePointer<Int32>
    let sampleIDs: UnsafeMutablePointer<Int32>
    /// The batch-norm running statistics and counters as they were before this step's
    /// forward: a skipped step puts them back, so that it leaves no trace.
    let buffersBeforeStep: FloatBuffer
    let countersBeforeStep: UnsafeMutablePointer<Int64>
    /// This rank's stop vote and the agreed one (StopRequest.agree).
    let stopVote: UnsafeMutablePointer<Int64>

    public private(set) var step = 0
    /// The checkpoint resumed from, if any, with the step it records (RunDirectory sets aside later ones).
    public private(set) var resumedCheckpoint: ResumedCheckpoint?
    /// The path of the checkpoint this run resumed from, if any.
    public var resumedFrom: String? { resumedCheckpoint?.path }
    /// Global batches in an epoch.
    public var stepsPerEpoch: Int { sampler.stepsPerEpoch }
    var checkpoints: CheckpointStore?
    /// The step of the newest checkpoint in the run dir that this run wrote or resumed from.
    var checkpointedStep: Int?
    var consecutiveSkips = 0
    /// The step after which the local batch-norm statistics were last averaged.
    var buffersAveragedAtStep = -1
    /// The last replica check: its step, whether it hashed the buffers too, and the hashes.
    var replicasVerified: (step: Int, includeBuffers: Bool, hashes: [UInt64])?
    /// Samples this rank's batch norms normalized (in steps not skipped) since the local
    /// statistics were last averaged: a rank with none holds statistics that did not move.
    var samplesSinceAveraging = 0
    var skippedSteps = 0

    /// Sees each step (bench's timer); the trainer keeps no benchmark state of its own.
    public weak var observer: TrainingObserver?
    /// Where tests act on the run (fault injection); nil unless a test asks.
    public var hooks: StepHooks?
    /// The epoch whose sample order `order` holds.
    var order: [Int32] = []
    var orderEpoch = -1
    /// Seconds from process start to the start of this rank's first step in `run`.
    public private(set) var secondsToFirstStep: Double?
    public private(set) var firstStepUnixTime: Double?

    /// Loads and checks data, model and options on every rank, and initializes the
    /// replicas; writes nothing.
    public init(config: TrainConfig, world: Communicator) throws {
        // Every check here ends the job the same way on every rank (agreeOnSuccess): one
        // message, every rank leaving with its status, no MPI_Abort.
        try agreeOnSuccess(world) { try config.validate(worldSize: world.size) }
        // The thread count is part of what a run computes (it orders some sums), so the
        // resolved count is what the run dir and the checkpoints record.
        var config = config
        config.threads = try agreeOnSuccess(world) { try config.threads ?? ComputeReplicas.defaultThreads() }
        self.world = world
        self.log = try RunLog(rank: world.rank, logEvery: config.logEvery, json: false, metricsPath: nil, quiet: true)
        // A resume keeps the checkpoint's shard size (it decides the bits: the units of every
        // sum) and, when no batch option is given, its global batch, so that a run continues
        // as it was at another world size. Rank 0 looks them up before anything is sized.
        if let resume = config.resume, config.shardSize == nil || (config.globalBatch == nil && config.perRankBatch == nil) {
            let saved = try decideOnRankZero(world) { Self.resumedBatching(config: config, resume: resume) }
            if config.shardSize == nil { config.shardSize = saved?.shardSize }
            if config.globalBatch == nil && config.perRankBatch == nil { config.globalBatch = saved?.globalBatch }
        }
        let globalBatch = config.resolvedGlobalBatch(worldSize: world.size)
        self.globalBatch = globalBatch
        // The default follows rank 0's thread count: ranks may resolve different counts (plain
        // mpirun on unlike nodes), and every rank must cut the batch the same way.
        let shardSize = try config.shardSize ?? decideOnRankZero(world) {
            TrainConfig.defaultShardSize(globalBatch: globalBatch, worldSize: world.size, threads: config.threads ?? 1)
        }
        config.shardSize = shardSize
        self.shardSize = shardSize
        baseLearningRate = config.baseLearningRate(worldSize: world.size)

        // Data and model are validated on every rank before any training collective.
        let data = try TrainingData.load(config: config, world: world, withTest: config.evalEvery > 0)
        let spec = try agreeOnSuccess(world) { try config.modelSpec() }
        try agreeOnSettings(world, what: "model \(config.model)",
                            [("name", spec.name)] + spec.layers.enumerated().map { ("layer \($0.offset)", $0.element.settingsText) }
                                + [("layers", String(spec.layers.count))])
        self.data = data
        self.spec = spec
        try agreeOnSuccess(world) {
            if globalBatch > data.train.count {
                throw ConfigError("the global batch (\(globalBatch)) is larger than the training set (\(plural(data.train.count, "sample")))")
            }
        }

        let sampler = Sampler(datasetSize: data.train.count, globalBatch: globalBatch, worldSize: world.size,
                              rank: world.rank, seed: config.seed, shuffle: config.shuffle)
        self.sampler = sampler
        let totalSteps = config.steps ?? config.epochs * sampler.stepsPerEpoch
        // Like the thread count, the warm-up is resolved here and recorded as resolved.
        config.warmupSteps = config.warmupSteps ?? TrainConfig.defaultWarmupSteps(totalSteps: totalSteps)
        self.config = config
        // The most shards a rank holds in a step (the first batch's block is the largest).
        let firstPlan = sampler.shardPlan(ofBatch: 0, shardSize: shardSize)
        let maxShards = max(firstPlan.block(rank: 0).count, 1)
        let localCapacity = min(maxShards * shardSize, globalBatch)
        // Every layer's buffers are sized for the largest batch, so evaluation batches larger
        // than training's cost memory (at per-rank batch 64, batches of 256 took fmnist-cnn
        // from 200 to 358 MiB per rank) for little speed: a sample's outputs do not depend on
        // the batch it is in, so the results are the same.
        let evalBatch = max(localCapacity, 64)
        self.totalSteps = totalSteps
        self.evalBatch = evalBatch

        let shardStatistics = config.bn.isWorldInvariant
            ? ShardStatistics(world: world, groupSize: config.bn.groupSize, plan: firstPlan) : nil
        self.shardStatistics = shardStatistics
        let statistics: BatchStatisticsReducer = shardStatistics ?? LocalStatistics.shared
        let threads = config.threads ?? 1
        let replicas = try agreeOnSuccess(world) { () throws -> ComputeReplicas in
            try config.checkMemory(spec: spec, inputShape: data.sampleShape, batch: localCapacity, threads: threads,
                                   gradientSlots: (maxShards + threads - 1) / threads)
            let replicas = try ComputeReplicas(spec: spec, inputShape: data.sampleShape, maxBatch: evalBatch, threads: threads,
                                               classes: data.train.classes, labelSmoothing: Float(config.labelSmoothing),
                                               rankStatistics: statistics, dropout: config.dropout,
                                               gradientRoom: GradientSync.tailCount, shardSize: shardSize, maxShards: maxShards)
            guard replicas.main.outputShape.perSample == data.train.classes else {
                throw ConfigError("model '\(config.model)' outputs \(replicas.main.outputShape.perSample) values but \(config.dataset) has \(data.train.classes) classes")
            }
            return replicas
        }
        self.replicas = replicas
        let model = replicas.main
        self.model = model
        gradientSync = GradientSync(parameterCount: model.parameterCount, world: world)

        (optimizer, schedule) = try agreeOnSuccess(world) {
            try makeOptimizerAndSchedule(config: config, model: model, totalSteps: totalSteps)
        }

        x = FloatBuffer(capacity: evalBatch * data.sampleShape.perSample)
        labels = .allocate(capacity: evalBatch)
        sampleIDs = .allocate(capacity: evalBatch)
        buffersBeforeStep = FloatBuffer(capacity: model.buffers.capacity)
        countersBeforeStep = .allocate(capacity: max(model.counterCount, 1))
        stopVote = .allocate(capacity: 1)

        try agreeOnSuccess(world) { try checkBatchNormCounts() }
        if let warning = ComputeReplicas.oversubscriptionWarning(threads: threads) { warnings.append(warning) }
        let workers = world.size * threads
        if firstPlan.shardCount < workers {
            warnings.append("shard size \(shardSize): the global batch of \(globalBatch) is \(plural(firstPlan.shardCount, "shard")) for "
                            + "\(plural(world.size, "rank")) x \(plural(threads, "thread")): \(workers - firstPlan.shardCount) of them have no shard to train")
        }
        if config.optimizer != "sgd" && config.momentum != TrainConfig().momentum {
            warnings.append("--momentum applies to --optimizer sgd only; \(config.optimizer) uses its betas")
        }
        if schedule.warmupSteps * 2 > totalSteps {
            warnings.append("--warmup-steps \(schedule.warmupSteps) covers \(Int((100 * Double(schedule.warmupSteps) / Double(totalSteps)).rounded()))% "
                            + "of this run's \(plural(totalSteps, "step")): the learning rate \(schedule.warmupSteps >= totalSteps ? "never reaches" : "reaches")"
                            + " --lr \(baseLearningRate)\(schedule.warmupSteps >= totalSteps ? "" : " only at step \(schedule.warmupSteps)")")
        }
        if config.dropout != nil && !model.layers.contains(where: { $0 is Dropout }) {
            warnings.append("--dropout: model \(config.model) has no dropout layer")
        }
        try initializeWeights()
        if let resume = config.resume { try resumeFrom(resume) }
    }

    /// config.json: the options with every default filled in (the thread count and warm-up
    /// as resolved), and under "resolved" what follows from them on this world: world size,
    /// batches, steps, epochs (the steps' share of epochs when --steps decides) and rates.
    public var resolvedConfigJSON: String {
        var object = (try? JSONSerialization.jsonObject(with: Data(config.json.utf8))) as? [String: Any] ?? [:]
        let size = world.size, stepsPerEpoch = sampler.stepsPerEpoch
        let peak = schedule.peak(base: Float(baseLearningRate))
        var resolved: [String: Any] = [
            "world_size": size, "global_batch": globalBatch, "per_rank_batch": (globalBatch + size - 1) / size,
            "threads": replicas.threads, "warmup_steps": schedule.warmupSteps, "total_steps": totalSteps,
            "steps_per_epoch": stepsPerEpoch, "shards_per_step": sampler.shardPlan(ofBatch: 0, shardSize: shardSize).shardCount, "epochs": Double(totalSteps) / Double(stepsPerEpoch), "train_samples": data.train.count,
            "base_lr": baseLearningRate, "peak_lr": Double(peak.rate), "peak_lr_step": peak.step,
        ]
        // Slices are whole shards: the largest, and where they differ the smallest.
        let plan = sampler.shardPlan(ofBatch: 0, shardSize: shardSize)
        let slices = (0..<size).map { plan.samples(ofShards: plan.block(rank: $0)).count }
        resolved["per_rank_batch"] = slices.max() ?? 0
        if slices.min() != slices.max() { resolved["per_rank_batch_min"] = slices.min() ?? 0 }
        object["resolved"] = resolved
        object["ddptrain_version"] = DDPTrainVersion.current
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    deinit {
        labels.deallocate()
        sampleIDs.deallocate()
        countersBeforeStep.deallocate()
        stopVote.deallocate()
    }

    // MARK: The loop

    /// Trains to the end. `checkpointDirectory` nil: no checkpoints.
    public func run(log: RunLog, checkpointDirectory: String?) throws -> TrainSummary {
        self.log = log
        checkpoints = checkpointDirectory.map { CheckpointStore(directory: $0, keep: config.keep) }
        if let resumedFrom { log.info("resumed from \(resumedFrom) at step \(step)") }
        let firstStep = step, start = Clock.seconds()
        log.start(trainer: self)
        for warning in warnings { log.warn(warning) }
        var totals = StepTimes()
        var lastLoss = Double.nan
        var evaluations = EvaluationHistory()
        let stepsPerEpoch = sampler.stepsPerEpoch
        let watchdog = config.collectiveTimeout > 0 ? StepWatchdog(seconds: config.collectiveTimeout, rank: world.rank) : nil
        defer { watchdog?.stop() }
        hooks?.runWillStart(step: step)
        // A stop requested while MPI started or the data loaded (or, left by launch/mpirun,
        // before this rank started): leave before the first step.
        StopRequest.takeLauncherRequest()
        let startSignal = try StopRequest.agree(world, scratch: stopVote)
        if startSignal != 0 { try stopOnRequest(signal: startSignal) }
        observer?.runWillStart()

        while step < totalSteps {
            watchdog?.begin(step: step)
            if secondsToFirstStep == nil {
                // Once, before the first step's clock starts (it reads /proc).
                secondsToFirstStep = ProcessClock.secondsSinceProcessStart()
                firstStepUnixTime = ProcessClock.unixTime()
            }
            let outcome = try trainStep()
            if !outcome.skipped { lastLoss = outcome.loss }
            totals += outcome.times
            observer?.stepDidEnd(outcome)

            // 9. The cadence: log, replica check, evaluation at an epoch's end, checkpoint.
            try log.step(StepRecord(outcome), totalSteps: totalSteps, stepsPerEpoch: stepsPerEpoch)
            if outcome.skipped && consecutiveSkips >= config.maxSkippedSteps {
                // Every rank decided on the same reduced numbers: reported once, all leave
                // together, the step logged like the skipped ones before it.
                throw CollectiveFailure(message: "stopping at step \(step): \(consecutiveSkips) consecutive steps had non-finite gradients "
                                        + "(--max-skipped-steps \(config.maxSkippedSteps))", exitCode: ExitStatus.diverged)
            }
            var checkpointDue = config.checkpointEvery > 0 && step % config.checkpointEvery == 0
            if config.checkReplicas > 0 && step % config.checkReplicas == 0 {
                try verifyReplicas(includeBuffers: config.bn.isWorldInvariant)
            }
            if step % stepsPerEpoch == 0 || step == totalSteps {
                try endEpoch((step - 1) / stepsPerEpoch + 1, &evaluations)
                checkpointDue = true
            }
            if checkpointDue { try saveCheckpoint() }

            // 10. The step boundary: stop if asked, with this step's checkpoint. An evaluation
            // or a checkpoint takes long: a request that came meanwhile is asked for again.
            // The last step has no boundary after it: the run ends as usual.
            if step < totalSteps {
                var stopSignal = outcome.stopSignal
                if stopSignal == 0 && checkpointDue { stopSignal = try StopRequest.agree(world, scratch: stopVote) }
                if stopSignal != 0 { try stopOnRequest(signal: stopSignal) }
            }
        }
        let summary = try summarize(steps: step - firstStep, totals: totals, lastLoss: lastLoss, evaluations: evaluations,
                                    wallSeconds: Clock.seconds() - start, runDir: checkpointDirectory == nil ? nil : config.resolvedRunDir)
        log.finish(summary)
        return summary
    }

    /// The evaluations of a run: each one's epoch and accuracy, the last, the best.
    struct EvaluationHistory {
        var accuracies: [Double] = []
        var epochs: [Int] = []
        var last: Evaluation?
        var best: (accuracy: Double, epoch: Int)?

        mutating func add(_ evaluation: Evaluation, epoch: Int) {
            last = evaluation
            accuracies.append(evaluation.accuracy)
            epochs.append(epoch)
            if best == nil || evaluation.accuracy > best!.accuracy { best = (evaluation.accuracy, epoch) }
        }
    }

    /// One training step, DESIGN's steps 1 to 8, on every rank: this rank's slice of global
    /// batch `step`, forward, loss, backward, one allreduce of the gradients with the counts at
    /// their tail (and the stop vote beside it), the exact mean, the non-finite check, clipping
    /// and the optimizer step. Advances `step`.
    func trainStep() throws -> StepOutcome {
        let stepsPerEpoch = sampler.stepsPerEpoch
        let epoch = step / stepsPerEpoch
        let p = model.parameterCount
        let g = model.gradients.pointer
        var times = StepTimes()
        var t = Clock.seconds()

        // 1. This rank's part of global batch k: its block of shards.
        if epoch != orderEpoch { order = sampler.epochOrder(epoch); orderEpoch = epoch }
        let batch = step % stepsPerEpoch
        let plan = sampler.shardPlan(ofBatch: batch, shardSize: shardSize)
        let block = plan.block(rank: world.rank)
        let slice = sampler.localSlice(ofBatch: batch, shardSize: shardSize)
        let n = slice.count
        for (i, j) in slice.enumerated() { sampleIDs[i] = order[j] }
        data.gather(data.train, indices: sampleIDs, count: n, into: x.pointer, labels: labels)
        shardStatistics?.plan = plan
        times.data = lap(&t)

        // 2-4. Forward, loss, backward, every sum over samples taken per shard; the rank's
        // shards summed along the shard tree into its pieces. Forward moves the running
        // statistics: keep them, in case the step is skipped.
        buffersBeforeStep.pointer.update(from: model.buffers.pointer, count: model.buffers.capacity)
        countersBeforeStep.update(from: model.counters, count: model.counterCount)
        hooks?.beforeForward(step: step, input: x.pointer, count: n)
        let result = try replicas.trainingPass(x: x.pointer, sampleShape: data.sampleShape, labels: labels, ids: sampleIDs,
                                               count: n, plan: plan, block: block, seed: config.seed, step: step,
                                               communicationSeconds: { self.shardStatistics?.takeSeconds() ?? 0 })
        if let first = result.pieces.first { try hooks?.afterBackward(step: step, gradients: first) }
        // Sync-BN's collectives ran inside forward and backward: count them as communication.
        let syncBN = result.forwardCommunicationSeconds + (shardStatistics?.takeSeconds() ?? 0)
        let pass = lap(&t)
        times.forward = result.forwardSeconds
        times.backward = pass - result.forwardSeconds - syncBN

        // 5. The pieces of every rank summed along the shard tree, gradients and the three
        // counts together. The stop vote (StopRequest: was any rank asked to stop?) rides
        // along: started just before, completed just after, it adds no wait of its own.
        var vote = try StopRequest.startVote(world, scratch: stopVote)
        try gradientSync.reduce(pieces: result.pieces, plan: plan, into: g)
        let stopSignal = try StopRequest.finishVote(world, &vote, scratch: stopVote)
        times.communication = lap(&t) + syncBN

        // 6. Exact mean over the global batch, whatever the slice sizes.
        let (loss, accuracy, globalCount) = gradientSync.mean(g)

        // 7. Every rank sees the same reduced numbers, so every rank makes the same call.
        var norm = Double.nan
        var clipped = false
        let skipped = !isFinite(g, count: p) || !loss.isFinite
        let lr = Double(schedule.learningRate(base: Float(baseLearningRate), step: step))
        if skipped {
            // No trace: parameters and optimizer state were not touched; the running
            // statistics and counters that forward moved (maybe to NaN) are put back.
            model.buffers.pointer.update(from: buffersBeforeStep.pointer, count: model.buffers.capacity)
            model.counters.update(from: countersBeforeStep, count: model.counterCount)
            consecutiveSkips += 1
            skippedSteps += 1
            // Steps are numbered from 1, as in metrics.jsonl and the checkpoints' names.
            log.warn("step \(step + 1): non-finite gradient or loss; step skipped (\(consecutiveSkips) in a row)")
        } else {
            consecutiveSkips = 0
            samplesSinceAveraging += n
            // 8. Clip the global gradient, then step.
            if let maxNorm = config.clipNorm {
                let r = clipGradNorm(g, count: p, maxNorm: Float(maxNorm))
                norm = r.normBeforeClip
                clipped = r.clipped
            } else {
                norm = globalNorm(g, count: p)
            }
            if let limit = config.clipValue {
                clipped = clipGradValue(g, count: p, limit: Float(limit)) || clipped
            }
            optimizer.step(parameters: model.parameters.pointer, gradients: g, learningRate: Float(lr))
            hooks?.afterUpdate(step: step, parameters: model.parameters.pointer)
        }
        times.optimizer = lap(&t)
        step += 1
        return StepOutcome(step: step, epoch: epoch + 1, loss: loss, accuracy: accuracy, samples: Int(globalCount),
                           learningRate: lr, gradientNorm: norm, clipped: clipped, skipped: skipped, times: times, endTime: t,
                           stopSignal: stopSignal)
    }

    /// An epoch's end (or the run's): local batch-norm statistics averaged, and the
    /// evaluation when --eval-every asks for one (always after the last step).
    func endEpoch(_ finishedEpoch: Int, _ evaluations: inout EvaluationHistory) throws {
        try averageLocalStatistics()
        guard config.evalEvery > 0 && (finishedEpoch % config.evalEvery == 0 || step == totalSteps), data.test != nil else { return }
        hooks?.beforeEvaluation(step: step)
        let e = try evaluate()
        evaluations.add(e, epoch: finishedEpoch)
        try log.evaluation(epoch: finishedEpoch, e)
    }

    /// The run's summary, after a last replica check; communication share, time to the
    /// first step and its Unix time are the largest over ranks.
    func summarize(steps: Int, totals: StepTimes, lastLoss: Double, evaluations: EvaluationHistory,
                   wallSeconds: Double, runDir: String?) throws -> TrainSummary {
        let hashes = try verifyReplicas(includeBuffers: true)
        var largest = [totals.communication / max(totals.total, 1e-12), secondsToFirstStep ?? -1, firstStepUnixTime ?? -1]
        try world.allreduce(&largest, op: .max)
        return TrainSummary(
            worldSize: world.size, globalBatch: globalBatch, steps: step,
            epochs: Double(step) / Double(sampler.stepsPerEpoch), skippedSteps: skippedSteps, finalTrainLoss: lastLoss,
            testLoss: evaluations.last?.loss, testAccuracy: evaluations.last?.accuracy,
            bestTestAccuracy: evaluations.best?.accuracy, bestEpoch: evaluations.best?.epoch,
            wallSeconds: wallSeconds, samplesPerSecond: Double(steps * globalBatch) / max(totals.total, 1e-12),
            communicationShare: largest[0], parameterHashes: hashes.map { String($0, radix: 16) },
            accuracyPerEpoch: evaluations.accuracies, evaluatedEpochs: evaluations.epochs,
            secondsToFirstStep: steps > 0 ? largest[1] : nil, firstStepUnixTime: steps > 0 ? largest[2] : nil,
            runDir: runDir)
    }

    // MARK: Start: initial weights, resume

    /// Rank 0 initializes from the seed (or loads --init-from) and broadcasts, so every
    /// replica starts from the same bits (I1).
    func initializeWeights() throws {
        warnings += try setModelStateOnRankZero(model, world: world) { () throws -> [String] in
            if let path = config.initFrom {
                try loadStateDict(path: path, into: model)
                return []
            }
            let perLayer = try spec.layerInitializers.mapValues { try Initializer(parsing: $0) }
            return try model.initialize(try Initializer(parsing: config.initializer), perLayer: perLayer, seed: config.seed)
        } ?? []
    }

    /// Restores parameters, buffers, optimizer state, the step and the skip counters from a
    /// checkpoint that rank 0 picks and validates; every rank receives the same bits.
    /// `auto` takes the newest checkpoint in the run dir that is intact, skipping damaged
    /// files (truncated, failed checksum, bad metadata, non-finite values) with a warning,
    /// or starts fresh when there is none; a named file must be intact. A file that cannot
    /// be read (permissions, I/O error, not a regular file) stops the run either way with
    /// the reason: skipping it would start over and later prune the good files. So is a
    /// sound checkpoint of another configuration (dataset, normalization, model, optimizer,
    /// seed, data order, batch-norm mode, global batch): that run dir belongs to another run.
    /// The checkpoint a resume continues from, and where in the run it is.
    struct ResumePoint: Codable { var path: String; var recordedStep: Int; var position: TrainingPosition }

    func resumeFrom(_ resume: String) throws {
        let store = CheckpointStore(directory: RunDirectory(path: config.resolvedRunDir).checkpointsPath, keep: config.keep)
        // Rank 0 looks, checks and loads; every rank learns what it found, then receives the state.
        let found = try decideOnRankZero(world) { () throws -> ResumePoint? in
            let candidates = resume == "auto" ? try store.files() : [resume]
            for path in candidates {
                let reader: CheckpointReader
                let position: TrainingPosition, batchChange: String?
                do {
                    reader = try CheckpointReader(path: path)
                    try reader.checkCompatible(with: config, datasetName: data.name, normalization: data.normalization,
                                               globalBatch: globalBatch, allowBatchChange: config.allowBatchChange)
                    try reader.checkLayers(model.layersText)
                    (position, batchChange) = try reader.resumePosition(globalBatch: globalBatch, stepsPerEpoch: sampler.stepsPerEpoch)
                    try StateDict.check(reader.file, fits: model, optimizer: optimizer)
                } catch where resume == "auto" && isCheckpointDamage(error) {
                    warnings.append("skipping damaged checkpoint: \(error)")
                    continue
                }
                // The shard size orders every sum: another one continues the run up to
                // rounding only (a checkpoint of an earlier version, which has none, too).
                if let saved = reader.config.shardSize, saved != shardSize {
                    throw ConfigError("\(path) was trained with --shard-size \(saved), this run uses \(shardSize): "
                                      + "run with --shard-size \(saved) (or leave it out) to continue it bit for bit")
                }
                if reader.config.shardSize == nil {
                    warnings.append("\(path) was written before virtual shards: it continues with --shard-size \(shardSize), "
                                    + "the same run up to the rounding of some sums, not bit for bit")
                }
                try StateDict.load(reader.file, into: model)
                try StateDict.loadOptimizer(reader.file, into: optimizer, model: model)
                if let batchChange { warnings.append(batchChange) }
                if let change = scheduleChange(from: reader, atStep: position.step) { warnings.append(change) }
                let changes = TrainConfig.options.compactMap { $0.resumeChange(saved: reader.config, now: config) }
                if !changes.isEmpty {
                    warnings.append("\(path) was trained with other settings: \(changes.joined(separator: ", ")); the run goes on with the new ones from step \(position.step)")
                }
                return ResumePoint(path: path, recordedStep: reader.step, position: position)
            }
            return nil
        }
        guard let found else {
            warnings.append("--resume auto: no intact checkpoint in \(store.directory); starting fresh")
            return
        }
        try broadcastModelState(model, world: world)
        try world.broadcast(optimizer.state.pointer, count: optimizer.state.capacity, root: 0)
        let (path, position) = (found.path, found.position)
        step = position.step
        optimizer.stepCount = position.optimizerSteps
        skippedSteps = position.skippedSteps
        consecutiveSkips = position.consecutiveSkips
        resumedCheckpoint = ResumedCheckpoint(path: path, step: found.recordedStep)
        if resume == "auto" { checkpointedStep = step }
        if step > totalSteps {
            throw CollectiveFailure(message: "\(path) is at step \(step), past this run's \(plural(totalSteps, "step"))")
        }
    }

    /// The shard size and global batch of the checkpoint a resume would start from (the
    /// newest readable one for `auto`), so that the replicas are sized for them; nil when
    /// there is none (the resume itself then reports what it finds).
    struct SavedBatching: Codable { var shardSize: Int?; var globalBatch: Int }

    static func resumedBatching(config: TrainConfig, resume: String) -> SavedBatching? {
        let candidates: [String]
        if resume == "auto" {
            let store = CheckpointStore(directory: RunDirectory(path: config.resolvedRunDir).checkpointsPath, keep: config.keep)
            candidates = (try? store.files()) ?? []
        } else {
            candidates = [resume]
        }
        for path in candidates {
            if let reader = try? CheckpointReader(path: path) {
                return SavedBatching(shardSize: reader.config.shardSize, globalBatch: reader.globalBatch)
            }
        }
        return nil
    }

    /// What a resume changes in the learning-rate schedule (its length or warm-up, e.g.
    /// `--resume auto --epochs 3` after a 1-epoch run): the rate would jump without a word.
    func scheduleChange(from reader: CheckpointReader, atStep resumedStep: Int) -> String? {
        let saved = reader.config
        let (epochSteps, overflow) = saved.epochs.multipliedReportingOverflow(by: reader.stepsPerEpoch)
        guard let savedTotal = saved.steps ?? (overflow ? nil : epochSteps), savedTotal > 0 else { return nil }
        let savedWarmup = saved.warmupSteps ?? TrainConfig.defaultWarmupSteps(totalSteps: savedTotal)
        guard savedTotal != totalSteps || savedWarmup != schedule.warmupSteps || saved.schedule != config.schedule,
              let savedSchedule = try? LRSchedule(parsing: saved.schedule, totalSteps: savedTotal) else { return nil }
        let before = savedSchedule.learningRate(base: Float(saved.baseLearningRate(worldSize: reader.worldSize)), step: resumedStep,
                                                warmupSteps: savedWarmup)
        let after = schedule.learningRate(base: Float(baseLearningRate), step: resumedStep)
        return "the learning-rate schedule changes on resume: \(reader.path) was planned as \(plural(savedTotal, "step")) of "
            + "\(saved.schedule) with \(plural(savedWarmup, "warm-up step")), this run is \(plural(totalSteps, "step")) of \(config.schedule) "
            + "with \(plural(schedule.warmupSteps, "warm-up step")); at step \(resumedStep) the learning rate goes from \(before) to \(after)"
    }

    /// Batch norm in training needs more than one value per channel (PyTorch refuses it
    /// too). A batch that gives it one (the leftover last batch of an epoch, or a rank's
    /// slice of 1 with local statistics) is found here rather than an epoch into the run.
    func checkBatchNormCounts() throws {
        var spatial: [(index: Int, values: Int)] = []
        for (i, layer) in model.layers.enumerated() {
            let input = i == 0 ? model.inputShape : model.layerOutputShapes[i - 1]
            if layer is BatchNorm { spatial.append((i, input.spatial)) }
            if layer is ResidualBlock { spatial.append((i, model.layerOutputShapes[i].spatial)) }
        }
        guard let smallest = spatial.min(by: { $0.values < $1.values }), config.bn != .disabled else { return }
        let lastBatch = sampler.stepsPerEpoch - 1
        let batches = totalSteps > lastBatch ? [0, lastBatch] : [0]
        for k in batches {
            let globalSize = sampler.globalBatchRange(k).count
            let plan = sampler.shardPlan(ofBatch: k, shardSize: shardSize)
            var samples = globalSize
            var who = "the global batch"
            switch config.bn {
            case .local:
                samples = (0..<world.size).map { plan.samples(ofShards: plan.block(rank: $0)).count }.filter { $0 > 0 }.min() ?? 0
                who = "a rank's slice (--bn local)"
            case .group(let size):
                samples = stride(from: 0, to: plan.shardCount, by: size).map {
                    plan.samples(ofShards: $0 ..< min($0 + size, plan.shardCount)).count
                }.min() ?? 0
                who = "a statistics group of \(plural(samples, "sample")) (--bn \(config.bn.rawValue), shard size \(shardSize))"
            default:
                break
            }
            if samples * smallest.values < 2 {
                let which = k == 0 ? "every batch" : "the last batch of each epoch (\(sampler.datasetSize) samples, global batch \(globalBatch): \(globalSize) left over)"
                throw ConfigError("batch norm in layer \(smallest.index) (\(model.layers[smallest.index].summary)) would see 1 value per channel "
                                  + "in \(who) for \(which); change --global-batch, --per-rank-batch, --train-samples"
                                  + (config.bn.groupSize != nil ? ", --shard-size or --bn" : (config.bn == .local ? " or --bn" : "")))
            }
        }
    }

    // MARK: Checkpoints and stops

    /// Rank 0 writes a checkpoint; every rank learns whether it worked, so a failed write
    /// (disk full, no permission) stops the whole job cleanly and leaves earlier files intact.
    func saveCheckpoint() throws {
        guard let checkpoints else { return }
        try averageLocalStatistics()
        // Never write a checkpoint of replicas that disagree: a resume would spread one of them.
        try verifyReplicas(includeBuffers: true)
        try agreeOnSuccess(world, exitCode: ExitStatus.checkpointWriteFailed) {
            guard world.rank == 0 else { return }
            var metadata = CheckpointStore.metadata(
                config: config, position: TrainingPosition(step: step, optimizerSteps: optimizer.stepCount,
                                                           skippedSteps: skippedSteps, consecutiveSkips: consecutiveSkips),
                stepsPerEpoch: sampler.stepsPerEpoch, worldSize: world.size, globalBatch: globalBatch,
                normalization: data.normalization, datasetName: data.name)
            metadata["model_layers"] = model.layersText
            hooks?.beforeCheckpoint(step: step)
            try checkpoints.save(model: model, optimizer: optimizer, metadata: metadata, step: step)
        }
        checkpointedStep = step
    }

    /// Every rank agreed to stop (StopRequest) at this step boundary: rank 0 writes the
    /// checkpoint of this step unless the run dir has it already, then every rank leaves
    /// with ExitStatus.stoppedOnRequest. Before the first step of a fresh run there is
    /// nothing to save: the same command starts over identically.
    func stopOnRequest(signal: Int32) throws -> Never {
        log.info("stop requested (\(StopRequest.name(of: signal))): every rank stops at step \(step)")
        var saved: String?
        if let checkpoints, step > 0 {
            if checkpointedStep != step { try saveCheckpoint() }
            saved = checkpoints.path(step: step)
        }
        let next = saved.map { "checkpoint \($0) holds it; to continue, run the same command with --resume auto" }
            ?? (step == 0 ? "no step was trained, nothing to save; run it again to start" : "no checkpoints in this run")
        throw CollectiveFailure(message: "stopped on request (\(StopRequest.name(of: signal))) at step \(step) of \(totalSteps): \(next)",
                                exitCode: ExitStatus.stoppedOnRequest)
    }

    // MARK: Replicas and evaluation

    /// With local batch norm the running statistics drift apart per rank; they are averaged
    /// before evaluation and checkpoints so that every replica evaluates the same model; once
    /// per step (an epoch end evaluates and then checkpoints): averaging equal copies again
    /// is a wasted allreduce, and not exact in Float32 when the world size is not a power of 2.
    /// A rank that normalized no sample since the last averaging (its slices were empty)
    /// holds the statistics of then, or the initial ones: it is left out, so that the
    /// average is that of the ranks that had data. When every rank had data, this is the
    /// plain mean, bit for bit as before.
    func averageLocalStatistics() throws {
        guard config.bn == .local, world.size > 1, model.buffers.capacity > 0, buffersAveragedAtStep != step else { return }
        buffersAveragedAtStep = step
        // None moved since the replicas last had equal statistics (broadcast or averaged):
        // nothing to do, and the count stays.
        if try averageRunningStatistics(model, samplesNormalized: samplesSinceAveraging, world: world) { samplesSinceAveraging = 0 }
    }

    /// Compares the replicas' hashes (I1), once per step: the last step checks before its
    /// checkpoint and again at the end, and a --check-replicas step may be a checkpoint's.
    /// Every rank sees the same hashes, so a divergence is reported once and all ranks leave
    /// together; a restart from the last checkpoint may cure it (a bit flip), so it is a
    /// runtime failure.
    @discardableResult
    func verifyReplicas(includeBuffers: Bool) throws -> [UInt64] {
        if let last = replicasVerified, last.step == step, last.includeBuffers || !includeBuffers { return last.hashes }
        do {
            let hashes = try checkReplicas(model, world: world, step: step, includeBuffers: includeBuffers)
            replicasVerified = (step, includeBuffers, hashes)
            return hashes
        } catch let divergence as ReplicaDivergence {
            throw CollectiveFailure(message: "stopping: \(divergence)", exitCode: ExitStatus.runtimeFailure)
        }
    }

    /// Distributed, exact evaluation on the test set: every sample counted once, no padding.
    public func evaluate() throws -> Evaluation {
        guard let test = data.test else { throw TrainingError("no test set to evaluate on") }
        return try evaluateModel(replicas, on: test, normalization: data.normalization, world: world,
                                 x: x, labels: labels, ids: sampleIDs, batch: evalBatch)
    }

    @inline(__always)
    private func lap(_ t: inout Double) -> Double {
        let now = Clock.seconds()
        defer { t = now }
        return now - t
    }
}
