import DDPData
import DDPNet
import Foundation
import SafeTensors

/// Where a run stands, as saved in a checkpoint's metadata.
public struct TrainingPosition: Codable, Sendable, Equatable {
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
///
/// Format version 2 files carry a CRC-32 of the whole file, header included
/// (`SafeTensorsWriter.checksumKey`); version 1 files, still read, one of the data only.
public struct CheckpointStore: Sendable {
    public static let formatVersion = "2"
    public let directory: String
    public let keep: Int

    public init(directory: String, keep: Int) {
        self.directory = directory
        self.keep = keep
    }

    public func path(step: Int) -> String { directory + "/" + Self.name(step: step) }

    static func name(step: Int) -> String { String(format: "step-%08d.safetensors", step) }

    /// The step of a name `path(step:)` writes (`step-` and 8 or more digits, no sign, no
    /// extra leading zero), else nil: anything else in the folder (`step-final.safetensors`,
    /// `step-00000010-best.safetensors`) is the user's, never loaded, counted or deleted.
    static func step(ofName name: String) -> Int? {
        guard name.hasPrefix("step-"), name.hasSuffix(".safetensors") else { return nil }
        let digits = name.dropFirst("step-".count).dropLast(".safetensors".count)
        guard digits.count >= 8, digits.allSatisfy({ ("0"..."9").contains($0) }), let step = Int(digits),
              Self.name(step: step) == name else { return nil }
        return step
    }

    /// Every checkpoint by step, newest first, whatever its type: a directory or a FIFO under
    /// such a name is listed too, so that resume says it cannot read it rather than pass over
    /// it in silence. No folder yet means no checkpoints; a folder that cannot be listed
    /// (permissions, an I/O error, not a directory) is an error naming it: taking it for
    /// empty would start the run over.
    public func checkpoints() throws -> [(step: Int, path: String)] {
        guard let folder = opendir(directory) else {
            let code = errno
            if code == ENOENT { return [] }
            throw CheckpointError(directory, "cannot list the checkpoints folder: opendir failed: \(String(cString: strerror(code))) (errno \(code))")
        }
        defer { closedir(folder) }
        var found: [(step: Int, path: String)] = []
        while true {
            errno = 0
            guard let entry = readdir(folder) else {
                let code = errno
                if code == 0 { break }
                throw CheckpointError(directory, "cannot list the checkpoints folder: readdir failed: \(String(cString: strerror(code))) (errno \(code))")
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if let step = Self.step(ofName: name) { found.append((step, directory + "/" + name)) }
        }
        return found.sorted { $0.step > $1.step }
    }

    /// The paths of `checkpoints()`, newest first.
    public func files() throws -> [String] { try checkpoints().map(\.path) }

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
    /// are left alone (a resume sets them aside: RunDirectory.setAsideCheckpoints), so
    /// pruning never deletes the file just written. Only regular files are
    /// counted and deleted: anything else under a checkpoint's name (a directory, a FIFO, a
    /// dangling link) is not ours to judge and stays.
    public func save(model: Model, optimizer: Optimizer, metadata: [String: String], step: Int) throws {
        try StateDict.write(model: model, optimizer: optimizer, metadata: metadata, to: path(step: step))
        for old in try checkpoints().filter({ $0.step <= step && Self.isRegularFile($0.path) }).dropFirst(keep) { unlink(old.path) }
    }

    private static func isRegularFile(_ path: String) -> Bool {
        var status = stat()
        return lstat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFREG
    }
}

/// Whether `--resume auto` may pass over a checkpoint that failed with `error`: only when
/// the file was read and found damaged (format, checksum, metadata, non-finite values).
/// A file that cannot be read (permissions, an I/O error, not a regular file) stops the
/// run with the reason, as does a sound checkpoint of another run (DESIGN, "Checkpoints").
public func isCheckpointDamage(_ error: Error) -> Bool {
    switch error {
    case let error as SafeTensorsError: error.isDamage
    case let error as CheckpointError: error.isDamage
    default: false
    }
}

/// Reads and checks one checkpoint against the run that wants it. Every problem is an
/// error naming the file (I6); damage (`isCheckpointDamage`) names the key and value or
/// the tensor and index.
public struct CheckpointReader {
    public let file: SafeTensorsFile
    public let step: Int
    public let epoch: Int
    public let positionInEpoch: Int
    public let stepsPerEpoch: Int
    public let globalBatch: Int
    public let worldSize: Int
    public let position: TrainingPosition
    public let config: TrainConfig

    /// Largest step, epoch or count a checkpoint may claim: beyond any real run (2^40
    /// steps), and small enough that sums of such values cannot overflow.
    public static let maximumCount = 1 << 40
    /// Largest global batch or world size: sample indices and MPI ranks are Int32.
    public static let maximumBatch = Int(Int32.max)

    public init(path: String) throws {
        file = try SafeTensorsFile(path: path)
        let m = file.metadata
        guard m["format"] == "ddptrain-checkpoint" else {
            throw CheckpointError.damaged(path, "damaged: not a ddptrain checkpoint (metadata 'format' is \(m["format"].map { "'\($0)'" } ?? "missing"))")
        }
        switch m["format_version"] {
        case CheckpointStore.formatVersion?:
            guard file.checksumScope == .file else {
                throw CheckpointError.damaged(path, "damaged: format version \(CheckpointStore.formatVersion) needs the whole-file checksum \(SafeTensorsWriter.checksumKey)")
            }
        case "1"?:
            guard file.checksumScope != nil else {
                throw CheckpointError.damaged(path, "damaged: no checksum in the header; refusing to trust it")
            }
        default:
            throw CheckpointError.damaged(path, "damaged: checkpoint format version \(m["format_version"] ?? "?") is not one this ddptrain reads (1, 2)")
        }
        func bad(_ key: String, _ expected: String) -> CheckpointError {
            let shown = m[key].map { $0.count > 40 ? $0.prefix(40) + "..." : $0 }
            return CheckpointError.damaged(path, "damaged metadata '\(key)': " + (shown.map { "'\($0)' is not \(expected)" } ?? "missing"))
        }
        func number(_ key: String, in range: ClosedRange<Int>) throws -> Int {
            guard let text = m[key], let value = Int(text), range.contains(value) else {
                throw bad(key, "a whole number in \(range.lowerBound)...\(range.upperBound)")
            }
            return value
        }
        let counts = 0...Self.maximumCount, batches = 1...Self.maximumBatch
        step = try number("step", in: counts)
        epoch = try number("epoch", in: counts)
        positionInEpoch = try number("position_in_epoch", in: counts)
        stepsPerEpoch = try number("steps_per_epoch", in: 1...Self.maximumCount)
        globalBatch = try number("global_batch", in: batches)
        worldSize = try number("world_size", in: batches)
        let optimizerSteps = try number("optimizer_steps", in: counts)
        let skipped = try number("skipped_steps", in: counts), consecutive = try number("consecutive_skipped_steps", in: counts)
        guard m["seed"].flatMap({ UInt64($0) }) != nil else { throw bad("seed", "a whole number in 0...\(UInt64.max)") }
        for key in ["normalize.mean", "normalize.std"] {
            guard let value = m[key].flatMap(Double.init), value.isFinite, key == "normalize.mean" || value > 0 else {
                throw bad(key, key == "normalize.mean" ? "a finite number" : "a positive finite number")
            }
        }
        let (epochStart, overflow) = epoch.multipliedReportingOverflow(by: stepsPerEpoch)
        // A run resumed with --allow-batch-change counts its steps anew (step 16 at batch 32
        // is step 8 at 64), while the optimizer's updates and the skipped steps go on counting:
        // they may exceed the step then (its config says so), never otherwise.
        let countsAnew = m["config"].flatMap { try? JSONDecoder().decode(TrainConfig.self, from: Data($0.utf8)) }?.allowBatchChange == true
        guard !overflow, epochStart <= step, step - epochStart == positionInEpoch, positionInEpoch < stepsPerEpoch,
              countsAnew || optimizerSteps <= step, consecutive <= skipped, countsAnew || skipped <= step else {
            throw CheckpointError.damaged(path, "damaged metadata: inconsistent: step \(step), epoch \(epoch), position \(positionInEpoch) of \(stepsPerEpoch), "
                                          + "optimizer steps \(optimizerSteps), skipped \(skipped) (\(consecutive) in a row)")
        }
        position = TrainingPosition(step: step, optimizerSteps: Int64(optimizerSteps), skippedSteps: skipped, consecutiveSkips: consecutive)
        guard let json = m["config"], let config = try? JSONDecoder().decode(TrainConfig.self, from: Data(json.utf8)) else {
            throw CheckpointError.damaged(path, "damaged metadata 'config': missing or not a valid configuration")
        }
        // Every recorded value within what its flag accepts (a shard size of 0 or 2^62
        // would otherwise reach the sampler).
        do { try config.validateValues() } catch {
            throw CheckpointError.damaged(path, "damaged metadata 'config': \(error)")
        }
        self.config = config
    }

    public var path: String { file.path }
    public var metadata: [String: String] { file.metadata }

    /// Fails when the model the checkpoint was trained as (its `model_layers`, Model.layersText;
    /// absent in checkpoints of earlier versions) differs from what the model's file now describes: the file was changed (a
    /// ReLU made a sigmoid keeps every shape, so the weights load, and evaluation or training
    /// would go on with another model without a word). Names the first layer that differs.
    public func checkLayers(_ layersText: String) throws {
        guard let saved = metadata["model_layers"], saved != layersText else { return }
        let (old, new) = (saved.split(separator: "\n", omittingEmptySubsequences: false), layersText.split(separator: "\n", omittingEmptySubsequences: false))
        let index = (0..<min(old.count, new.count)).first { old[$0] != new[$0] } ?? min(old.count, new.count)
        let was = index < old.count ? String(old[index]) : "nothing", now = index < new.count ? String(new[index]) : "nothing"
        throw CheckpointError(path, "was trained as another model than '\(metadata["model"] ?? "?")' now describes: layer \(index) was \(was), "
                              + "is now \(now) (the model file changed since); use the model file it was trained with")
    }

    /// Where a run of global batch `newBatch` continues after this checkpoint
    /// (--allow-batch-change): after the same number of samples seen, in the same epoch.
    public func step(continuingWithGlobalBatch newBatch: Int, stepsPerEpoch newStepsPerEpoch: Int) throws -> (step: Int, samplesSeen: Int) {
        let (seen, overflowSeen) = positionInEpoch.multipliedReportingOverflow(by: globalBatch)
        let (epochStart, overflowStart) = epoch.multipliedReportingOverflow(by: newStepsPerEpoch)
        let stepsIntoEpoch = overflowSeen ? 0 : seen / newBatch + (seen % newBatch == 0 ? 0 : 1)
        let (newStep, overflowStep) = epochStart.addingReportingOverflow(stepsIntoEpoch)
        guard !overflowSeen, !overflowStart, !overflowStep else {
            throw CheckpointError.damaged(path, "damaged metadata: epoch \(epoch), position \(positionInEpoch) of global batch \(globalBatch) "
                                          + "overflow when continued with global batch \(newBatch)")
        }
        return (newStep, seen)
    }

    /// Where a run of global batch `newBatch` and `newStepsPerEpoch` steps per epoch continues
    /// after this checkpoint, with a note for the user when the batch changed. Computed before
    /// anything is loaded, so that damage found here is skipped like any other under `auto`.
    /// With the same global batch, other steps per epoch mean a dataset of another size.
    public func resumePosition(globalBatch newBatch: Int, stepsPerEpoch newStepsPerEpoch: Int) throws -> (position: TrainingPosition, note: String?) {
        guard newBatch != globalBatch else {
            guard newStepsPerEpoch == stepsPerEpoch else {
                throw CheckpointError(path, "has \(stepsPerEpoch) steps per epoch at global batch \(globalBatch), this run has \(newStepsPerEpoch): "
                                      + "the dataset has another size; use another --run-dir for another dataset")
            }
            return (position, nil)
        }
        let (newStep, seen) = try step(continuingWithGlobalBatch: newBatch, stepsPerEpoch: newStepsPerEpoch)
        var continued = position
        continued.step = newStep
        return (continued, "global batch \(globalBatch) -> \(newBatch): step \(step) (epoch \(epoch + 1), \(seen) samples into it) continues as step \(newStep)")
    }

    /// The input normalization the weights were trained with.
    public func normalization() throws -> Normalization {
        guard let mean = metadata["normalize.mean"].flatMap(Double.init), let std = metadata["normalize.std"].flatMap(Double.init),
              mean.isFinite, std.isFinite, std > 0 else {
            throw CheckpointError(path, "metadata normalize.mean or normalize.std is missing or not a number")
        }
        return Normalization(mean: mean, std: std)
    }

    /// Refuses a checkpoint of another dataset, normalization or (unless allowed) global batch.
    public func checkCompatible(with config: TrainConfig, datasetName: String, normalization: Normalization,
                                globalBatch: Int, allowBatchChange: Bool) throws {
        let m = metadata
        if m["dataset"] != datasetName {
            throw CheckpointError(path, "was trained on dataset '\(m["dataset"] ?? "?")', this run uses '\(datasetName)'")
        }
        if m["model"] != config.model {
            throw CheckpointError(path, "holds model '\(m["model"] ?? "?")', this run uses '\(config.model)'")
        }
        // Whatever decides the weights' shapes, the optimizer state and the data order
        // (sync and local statistics mean different things: the global batch's or a slice's).
        let saved = self.config
        for option in TrainConfig.options {
            if let mismatch = option.resumeMismatch(saved: saved, now: config) {
                throw CheckpointError(path, "\(mismatch); use another --run-dir for another configuration")
            }
        }
        // After the options: a run given another --seed or --train-samples than its
        // checkpoint's computes another normalization, and the option is what to name.
        if m["normalize.mean"] != String(normalization.mean) || m["normalize.std"] != String(normalization.std) {
            throw CheckpointError(path, "normalization mean \(m["normalize.mean"] ?? "?"), std \(m["normalize.std"] ?? "?") differs from this run's \(normalization.mean), \(normalization.std)")
        }
        if !allowBatchChange, self.globalBatch != globalBatch {
            throw CheckpointError(path, "was trained with global batch \(self.globalBatch), this run uses \(globalBatch); pass --allow-batch-change to continue anyway")
        }
    }
}
