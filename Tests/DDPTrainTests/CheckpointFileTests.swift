import DDPData
import DDPKernels
import DDPNet
import DDPTrain
import Foundation
import SafeTensors
import XCTest

/// Checkpoint files in one process: metadata that would overflow, weights that are not
/// finite, a changed batch-norm mode, and the run dir's small files written atomically.
final class CheckpointFileTests: XCTestCase {
    private var directory = ""

    override func setUp() {
        var template = Array("/tmp/checkpoint-file-test-XXXXXX".utf8CString)
        directory = String(cString: mkdtemp(&template)!)
        let created = directory
        addTeardownBlock { try? FileManager.default.removeItem(atPath: created) }
    }

    private var config: TrainConfig {
        var config = TrainConfig()
        config.model = "mlp"
        config.bn = .sync
        return config
    }

    private func makeModel() throws -> Model {
        try ModelSpec.named("mlp").build(inputShape: Shape(n: 1, c: 1, h: 28, w: 28), maxBatch: 2)
    }

    /// A checkpoint of a fresh mlp at step 20 (8 steps per epoch), with `changes` applied
    /// to its metadata and `poison` to its model before writing.
    private func writeCheckpoint(_ name: String, changes: [String: String] = [:], config: TrainConfig? = nil,
                                 poison: (Model) -> Void = { _ in }) throws -> String {
        let model = try makeModel()
        poison(model)
        var metadata = [
            "format": "ddptrain-checkpoint", "format_version": CheckpointStore.formatVersion,
            "step": "20", "epoch": "2", "position_in_epoch": "4", "steps_per_epoch": "8",
            "optimizer_steps": "20", "skipped_steps": "0", "consecutive_skipped_steps": "0",
            "world_size": "2", "global_batch": "32", "seed": "0", "dataset": "fashion-mnist", "model": "mlp",
            "normalize.mean": "0.286", "normalize.std": "0.353", "config": (config ?? self.config).json,
        ]
        for (key, value) in changes { metadata[key] = value }
        let path = "\(directory)/\(name).safetensors"
        try StateDict.write(model: model, optimizer: nil, metadata: metadata, to: path)
        return path
    }

    func testMetadataValuesOutOfRangeAreDamageNamingKeyAndValue() throws {
        XCTAssertNoThrow(try CheckpointReader(path: try writeCheckpoint("sound")))
        let cases: [(key: String, value: String)] = [
            ("epoch", "4611686018427387904"),
            ("step", "9223372036854775807"),
            ("steps_per_epoch", "9223372036854775807"),
            ("position_in_epoch", "-1"),
            ("global_batch", "9223372036854775807"),
            ("global_batch", "0"),
            ("world_size", "0"),
            ("world_size", "9223372036854775807"),
            ("optimizer_steps", "99999999999999999999"),
            ("skipped_steps", "1e3"),
            ("consecutive_skipped_steps", ""),
            ("normalize.std", "nan"),
            ("normalize.mean", "inf"),
            ("seed", "-1"),
        ]
        for (index, (key, value)) in cases.enumerated() {
            let path = try writeCheckpoint("bad-\(index)", changes: [key: value])
            XCTAssertThrowsError(try CheckpointReader(path: path), "\(key) = \(value)") { error in
                let text = "\(error)"
                XCTAssertTrue(text.hasPrefix("\(path): damaged metadata '\(key)': '\(value)' "), text)
            }
        }
    }

    func testMetadataThatDisagreesIsDamage() throws {
        // Each value in range, the whole inconsistent: epoch * steps_per_epoch overflows no more.
        let path = try writeCheckpoint("inconsistent", changes: ["epoch": "1099511627776", "steps_per_epoch": "1099511627776"])
        XCTAssertThrowsError(try CheckpointReader(path: path)) { error in
            XCTAssertTrue("\(error)".hasPrefix("\(path): damaged metadata: inconsistent:"), "\(error)")
        }
    }

    func testNonFiniteWeightIsRefusedNamingFileTensorAndIndex() throws {
        for (name, value) in [("nan", Float.nan), ("inf", -Float.infinity)] {
            let path = try writeCheckpoint(name) { model in
                let view = model.parameter(named: "5.weight")!
                model.parameters.pointer[view.offset + 37] = value
            }
            let reader = try CheckpointReader(path: path)
            let model = try makeModel()
            let before = Array(UnsafeBufferPointer(start: model.parameters.pointer, count: model.parameterCount))
            XCTAssertThrowsError(try StateDict.load(reader.file, into: model)) { error in
                XCTAssertEqual("\(error)", "\(path): damaged: tensor 5.weight holds a non-finite value (\(value)) at index 37")
            }
            XCTAssertEqual(Array(UnsafeBufferPointer(start: model.parameters.pointer, count: model.parameterCount)), before,
                           "a refused file leaves the model untouched")
        }
    }

    func testChangedBatchNormModeIsRefusedNamingBothModes() throws {
        let reader = try CheckpointReader(path: try writeCheckpoint("sync"))
        var local = config
        local.bn = .local
        XCTAssertThrowsError(try reader.checkCompatible(with: local, datasetName: "fashion-mnist",
                                                        normalization: Normalization(mean: 0.286, std: 0.353),
                                                        globalBatch: 32, allowBatchChange: false)) { error in
            XCTAssertTrue("\(error)".contains("was trained with --bn sync, this run uses local"), "\(error)")
        }
        XCTAssertNoThrow(try reader.checkCompatible(with: config, datasetName: "fashion-mnist",
                                                    normalization: Normalization(mean: 0.286, std: 0.353),
                                                    globalBatch: 32, allowBatchChange: false))
    }

    /// Pruning deletes only regular files: a FIFO or a directory under a checkpoint's name
    /// is left alone and does not count among the files kept.
    func testPruningLeavesAloneWhatItCannotJudge() throws {
        let store = CheckpointStore(directory: directory, keep: 1)
        let model = try makeModel()
        let optimizer = try SGD(views: model.parameterViews, parameterCount: model.parameterCount, momentum: 0.9)
        let metadata = ["format": "ddptrain-checkpoint"]
        XCTAssertEqual(mkfifo(store.path(step: 1), 0o644), 0)
        try FileManager.default.createDirectory(atPath: store.path(step: 2), withIntermediateDirectories: false)
        try store.save(model: model, optimizer: optimizer, metadata: metadata, step: 3)
        try store.save(model: model, optimizer: optimizer, metadata: metadata, step: 5)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory).sorted(),
                       ["step-00000001.safetensors", "step-00000002.safetensors", "step-00000005.safetensors"])
        XCTAssertEqual(try store.files(), [store.path(step: 5), store.path(step: 2), store.path(step: 1)],
                       "listed, so that resume says why it cannot read them")
    }

    /// No folder yet is no checkpoints; a folder that cannot be listed is an error naming
    /// it and the errno, never taken for an empty one (which would start the run over).
    func testFolderThatCannotBeListedIsAnErrorNotAnEmptyFolder() throws {
        XCTAssertEqual(try CheckpointStore(directory: directory + "/not-yet", keep: 1).files(), [])
        let notAFolder = directory + "/checkpoints"
        try "x".write(toFile: notAFolder, atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try CheckpointStore(directory: notAFolder, keep: 1).files()) { error in
            XCTAssertEqual("\(error)", "\(notAFolder): cannot list the checkpoints folder: opendir failed: Not a directory (errno \(ENOTDIR))")
        }
    }

    /// Only names ddptrain writes (`step-` and 8 or more digits) are checkpoints: a user's
    /// `step-00000010-best.safetensors` or `step-final.safetensors` is never counted,
    /// pruned or resumed from.
    func testFilesDdptrainDidNotWriteAreNeitherListedNorPruned() throws {
        let store = CheckpointStore(directory: directory, keep: 1)
        let model = try makeModel()
        let optimizer = try SGD(views: model.parameterViews, parameterCount: model.parameterCount, momentum: 0.9)
        let metadata = ["format": "ddptrain-checkpoint"]
        let userFiles = ["step-00000010-best.safetensors", "step-final.safetensors", "step-0000010.safetensors", "step-+0000010.safetensors"]
        for name in userFiles { try "mine\n".write(toFile: directory + "/" + name, atomically: false, encoding: .utf8) }
        try store.save(model: model, optimizer: optimizer, metadata: metadata, step: 9)
        try store.save(model: model, optimizer: optimizer, metadata: metadata, step: 11)
        XCTAssertEqual(try store.files(), [store.path(step: 11)])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory).sorted(),
                       (userFiles + ["step-00000011.safetensors"]).sorted())
    }

    /// From 10^8 steps the names have 9 digits: order is by the step, not by the string.
    func testNineDigitStepIsNewerThanEightDigitStep() throws {
        let store = CheckpointStore(directory: directory, keep: 1)
        let model = try makeModel()
        let optimizer = try SGD(views: model.parameterViews, parameterCount: model.parameterCount, momentum: 0.9)
        let metadata = ["format": "ddptrain-checkpoint"]
        try store.save(model: model, optimizer: optimizer, metadata: metadata, step: 99_999_999)
        try store.save(model: model, optimizer: optimizer, metadata: metadata, step: 100_000_000)
        XCTAssertEqual(store.path(step: 100_000_000), directory + "/step-100000000.safetensors")
        XCTAssertEqual(try store.files(), [store.path(step: 100_000_000)], "the older one pruned, the newest kept")
    }
}
