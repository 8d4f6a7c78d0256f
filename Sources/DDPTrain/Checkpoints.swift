import DDPComm
import DDPData
import DDPNet
import Foundation
import SafeTensors

/// Where a run stands, as saved in a checkpoint's metadata.
public struct TrainingPosition: Sendable, Equatable {
    /// Steps completed.
    public var step: Int
    /// Optimizer's own step count (Adam's bias correction): steps not skipped.
    public var optimizerSteps: Int64
    /// Steps skipped for non-finite gradients, in all and in a row at the end, so that a
    /// resumed run stops where an uninterrupted one would (--max-skipped-steps).
    public var skippedSteps: Int
    public var consecutiveSkips: Int
}

/// The checkpoints of a run: RUN_DIR/checkpoints/step-<8 digits>.safetensors, written by
/// rank 0 atomically (temporary file, fsync, rename, fsync of the folder), the newest
/// `keep` kept. Everything needed to continue bit for bit is inside: parameters, buffers,
/// optimizer state and the step; shuffling and dropout are functions of (seed, epoch,
/// step, sample), so no generator state is needed (I4, I7).
public struct CheckpointStore: Sendable {
    public static let formatVersion = "1"
    public let directory: String
    public let keep: Int

    public init(directory: String, keep: Int) {
        self.directory = directory
        self.keep = keep
    }

    public func path(step: Int) -> String { String(format: "%@/step-%08d.safetensors", directory, step) }

    /// Checkpoint files, newest first (by the step in the name).
    public func files() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("step-") && $0.hasSuffix(".safetensors") && !$0.hasPrefix(".") }
            .sorted(by: >).map { "\(directory)/\($0)" }
    }

    /// The metadata a checkpoint carries.
    public static func metadata(config: TrainConfig, position: TrainingPosition, stepsPerEpoch: Int, worldSize: Int,
                                globalBatch: Int, normalization: Normalization, datasetName: String) -> [String: String] {
        [
            "format": "ddptrain-checkpoint",
            "format_version": formatVersion,
            "step": String(position.step),
            "epoch": String(position.step / stepsPerEpoch),
            "position_in_epoch": String(position.step % stepsPerEpoch),
            "steps_per_epoch": String(stepsPerEpoch),
            "optimizer_steps": String(position.optimizerSteps),
            "skipped_steps": String(position.skippedSteps),
            "consecutive_skipped_steps": String(position.consecutiveSkips),
            "world_size": String(worldSize),
            "global_batch": String(globalBatch),
            "seed": String(config.seed),
            "dataset": datasetName,
            "model": config.model,
            "normalize.mean": String(normalization.mean),
            "normalize.std": String(normalization.std),
            "config": config.json,
        ]
    }

    /// Writes, then keeps the newest `keep` files at or before `step`. Files of later steps
    /// are left alone (a damaged one that resume skipped is overwritten when the run gets
    /// there), so pruning never deletes the file just written.
    public func save(model: Model, optimizer: Optimizer, metadata: [String: String], step: Int) throws {
        try StateDict.write(model: model, optimizer: optimizer, metadata: metadata, to: path(step: step))
        let current = path(step: step)
        for old in files().filter({ $0 <= current }).dropFirst(keep) { unlink(old) }
    }
}

/// Reads and checks one checkpoint against the run that wants it. Every problem is an
/// error naming the file (I6).
public struct CheckpointReader {
    public let file: SafeTensorsFile
    public let step: Int
    public let epoch: Int
    public let positionInEpoch: Int
    public let stepsPerEpoch: Int
    public let globalBatch: Int
    public let position: TrainingPosition
    public let config: TrainConfig

    public init(path: String) throws {
        file = try SafeTensorsFile(path: path)
        let m = file.metadata
        guard m["format"] == "ddptrain-checkpoint" else {
            throw CheckpointError(path, "not a ddptrain checkpoint (metadata 'format' is \(m["format"].map { "'\($0)'" } ?? "missing"))")
        }
        guard m["format_version"] == CheckpointStore.formatVersion else {
            throw CheckpointError(path, "checkpoint format version \(m["format_version"] ?? "?") is not \(CheckpointStore.formatVersion)")
        }
        guard file.checksumVerified == true else {
            throw CheckpointError(path, "no data checksum in the header; refusing to trust it")
        }
        func number(_ key: String, atLeast minimum: Int = 0) throws -> Int {
            guard let text = m[key], let value = Int(text), value >= minimum else {
                throw CheckpointError(path, "metadata '\(key)' is missing or not a whole number of at least \(minimum): \(m[key].map { "'\($0)'" } ?? "absent")")
            }
            return value
        }
        step = try number("step")
        epoch = try number("epoch")
        positionInEpoch = try number("position_in_epoch")
        stepsPerEpoch = try number("steps_per_epoch", atLeast: 1)
        globalBatch = try number("global_batch", atLeast: 1)
        let optimizerSteps = try number("optimizer_steps")
        let skipped = try number("skipped_steps"), consecutive = try number("consecutive_skipped_steps")
        // The data section's CRC does not cover the header: cross-check what can be checked.
        guard step == epoch * stepsPerEpoch + positionInEpoch, positionInEpoch < stepsPerEpoch,
              optimizerSteps <= step, consecutive <= skipped, skipped <= step else {
            throw CheckpointError(path, "metadata is inconsistent: step \(step), epoch \(epoch), position \(positionInEpoch) of \(stepsPerEpoch), "
                                  + "optimizer steps \(optimizerSteps), skipped \(skipped) (\(consecutive) in a row)")
        }
        position = TrainingPosition(step: step, optimizerSteps: Int64(optimizerSteps), skippedSteps: skipped, consecutiveSkips: consecutive)
        guard let json = m["config"], let config = try? JSONDecoder().decode(TrainConfig.self, from: Data(json.utf8)) else {
            throw CheckpointError(path, "metadata 'config' is missing or not a valid configuration")
        }
        self.config = config
    }

    public var path: String { file.path }
    public var metadata: [String: String] { file.metadata }

    /// Refuses a checkpoint of another dataset, normalization or (unless allowed) global batch.
    public func checkCompatible(with config: TrainConfig, datasetName: String, normalization: Normalization,
                                globalBatch: Int, allowBatchChange: Bool) throws {
        let m = metadata
        if m["dataset"] != datasetName {
            throw CheckpointError(path, "was trained on dataset '\(m["dataset"] ?? "?")', this run uses '\(datasetName)'")
        }
        if m["normalize.mean"] != String(normalization.mean) || m["normalize.std"] != String(normalization.std) {
            throw CheckpointError(path, "normalization mean \(m["normalize.mean"] ?? "?"), std \(m["normalize.std"] ?? "?") differs from this run's \(normalization.mean), \(normalization.std)")
        }
        if m["model"] != config.model {
            throw CheckpointError(path, "holds model '\(m["model"] ?? "?")', this run uses '\(config.model)'")
        }
        // Whatever decides the weights' shapes, the optimizer state and the data order.
        let saved = self.config
        func same(_ option: String, _ before: String, _ now: String) throws {
            if before != now {
                throw CheckpointError(path, "was trained with \(option) \(before), this run uses \(now); use another --run-dir for another configuration")
            }
        }
        func layers(_ mode: TrainConfig.BNMode) -> String { mode == .disabled ? "none" : "batch norm" }
        func samples(_ n: Int?) -> String { n.map(String.init) ?? "all" }
        try same("--bn", layers(saved.bn), layers(config.bn))
        try same("--optimizer", saved.optimizer, config.optimizer)
        try same("--seed", String(saved.seed), String(config.seed))
        try same("--no-shuffle", String(!saved.shuffle), String(!config.shuffle))
        try same("--train-samples", samples(saved.trainSamples), samples(config.trainSamples))
        if !allowBatchChange, self.globalBatch != globalBatch {
            throw CheckpointError(path, "was trained with global batch \(self.globalBatch), this run uses \(globalBatch); pass --allow-batch-change to continue anyway")
        }
    }
}
