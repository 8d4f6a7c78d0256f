import DDPComm
import DDPData
import DDPNet
import Foundation
import SafeTensors

/// Where a run stands, as saved in a checkpoint's metadata.
public struct TrainingPosition: Sendable, Equatable {
    /// Steps completed.
    public var step: Int
    /// Optimizer's own step count (Adam's bias correction).
    public var optimizerSteps: Int64
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

    /// Writes, then removes all but the newest `keep` files.
    public func save(model: Model, optimizer: Optimizer, metadata: [String: String], step: Int) throws {
        try StateDict.write(model: model, optimizer: optimizer, metadata: metadata, to: path(step: step))
        for old in files().dropFirst(keep) { unlink(old) }
    }
}

/// Reads and checks one checkpoint against the run that wants it. Every problem is an
/// error naming the file (I6).
public struct CheckpointReader {
    public let file: SafeTensorsFile
    public let step: Int
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
        guard let stepText = m["step"], let step = Int(stepText), step >= 0 else {
            throw CheckpointError(path, "metadata 'step' is missing or not a number")
        }
        self.step = step
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
        if !allowBatchChange, let saved = m["global_batch"], saved != String(globalBatch) {
            throw CheckpointError(path, "was trained with global batch \(saved), this run uses \(globalBatch); pass --allow-batch-change to continue anyway")
        }
    }

    public var optimizerSteps: Int64 { Int64(metadata["optimizer_steps"] ?? "") ?? Int64(step) }
}
