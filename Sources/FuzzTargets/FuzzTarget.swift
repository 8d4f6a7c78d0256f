import DDPData
import DDPKernels
import DDPNet
import DDPTrain
import Foundation
import SafeTensors

/// The readers of untrusted files (DESIGN.md, "Untrusted input"), each behind one function
/// that takes a file's bytes. The libFuzzer executables (Fuzz/) and the regression tests
/// (Tests/FuzzRegressionTests) call these same functions, so a crasher found by one replays
/// in the other. Every function goes through the reader's public entry point, then uses
/// what it returned the way the trainer would; an error thrown is a correct answer, only a
/// crash, a hang or runaway memory is a finding.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// `SafeTensorsFile(path:)`, then every tensor's values.
    case safetensors
    /// `CheckpointReader(path:)` (metadata, embedded config), then the state loaded into a
    /// small model and its SGD momentum state.
    case checkpoint
    /// `Dataset.load` of an IDX pair (gzip or plain). Input: 4-byte little-endian length of
    /// the images file, the images file, then the labels file (`idxInput`).
    case idx
    /// `Dataset.load` of one CIFAR-10 binary batch.
    case cifar10
    /// `Dataset.load` through a cache directory whose cache file is the input.
    case cache
    /// `TrainConfig.load(file:)`, `validate()`, the schedule it names.
    case config
    /// `ModelSpec.named(path)` of a model file, then shape inference for 1x28x28 and 3x32x32.
    case model

    /// Called once before the first input (LLVMFuzzerInitialize). With the environment
    /// variable DDPTRAIN_FUZZ_WRITE_SEEDS=DIR it writes the seed corpus to DIR and exits.
    public func prepare() {
        if let directory = ProcessInfo.processInfo.environment["DDPTRAIN_FUZZ_WRITE_SEEDS"] {
            do { try writeSeeds(to: directory) } catch { fatalError("fuzz harness: writing seeds: \(error)") }
            exit(0)
        }
        if self == .cache { _ = CacheFixture.shared }
    }

    /// Runs one input. Returns normally for accepted and rejected input alike.
    public func run(_ input: UnsafeRawBufferPointer) {
        switch self {
        case .safetensors: Self.safetensors(input)
        case .checkpoint: Self.checkpoint(input)
        case .idx: Self.idx(input)
        case .cifar10: Self.cifar10(input)
        case .cache: Self.cache(input)
        case .config: Self.config(input)
        case .model: Self.model(input)
        }
    }

    public func run(_ input: [UInt8]) {
        input.withUnsafeBytes { run($0) }
    }

    // MARK: Targets

    private static func safetensors(_ input: UnsafeRawBufferPointer) {
        let path = ScratchFiles.store(input, as: "input.safetensors")
        // Not verifying the checksum lets mutated data reach the value readers.
        guard let file = try? SafeTensorsFile(path: path, verifyingChecksum: false) else { return }
        for tensor in file.tensors {
            switch tensor.dtype {
            case .f32: _ = try? file.values(of: tensor.name, as: Float.self)
            case .f64: _ = try? file.values(of: tensor.name, as: Double.self)
            case .i64: _ = try? file.values(of: tensor.name, as: Int64.self)
            case .i32: _ = try? file.values(of: tensor.name, as: Int32.self)
            case .u8: _ = try? file.values(of: tensor.name, as: UInt8.self)
            default: _ = try? file.values(of: tensor.name, as: Float.self)  // must throw: wrong dtype
            }
        }
    }

    private static func checkpoint(_ input: UnsafeRawBufferPointer) {
        let path = ScratchFiles.store(input, as: "step-00000001.safetensors")
        guard let reader = try? CheckpointReader(path: path) else { return }
        try? reader.config.validate()
        try? reader.checkCompatible(with: reader.config, datasetName: reader.metadata["dataset"] ?? "",
                                    normalization: .none, globalBatch: reader.globalBatch, allowBatchChange: false)
        let model: Model, optimizer: Optimizer
        do { (model, optimizer) = try SeedModel.make() } catch { fatalError("fuzz harness: cannot build the seed model: \(error)") }
        try? StateDict.load(reader.file, into: model)
        try? StateDict.loadOptimizer(reader.file, into: optimizer, model: model)
    }

    private static func idx(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 4 else { return }
        let announced = Int(input.loadUnaligned(as: UInt32.self).littleEndian)
        let rest = UnsafeRawBufferPointer(rebasing: input[4...])
        let split = min(announced, rest.count)
        let images = ScratchFiles.store(UnsafeRawBufferPointer(rebasing: rest[..<split]), as: "images-idx3-ubyte")
        let labels = ScratchFiles.store(UnsafeRawBufferPointer(rebasing: rest[split...]), as: "labels-idx1-ubyte")
        let source = DataSource.idx(images: images, labels: labels, name: "fuzz-idx", classes: 10)
        guard let dataset = try? Dataset.load(source, cacheDirectory: nil) else { return }
        use(dataset, classes: source.classes)
    }

    private static func cifar10(_ input: UnsafeRawBufferPointer) {
        let batch = ScratchFiles.store(input, as: "data_batch_1.bin")
        let source = DataSource.cifar10(batches: [batch], name: "fuzz-cifar10")
        guard let dataset = try? Dataset.load(source, cacheDirectory: nil) else { return }
        use(dataset, classes: source.classes)
    }

    private static func cache(_ input: UnsafeRawBufferPointer) {
        let cache = CacheFixture.shared
        ScratchFiles.store(input, atPath: cache.cacheFile)
        // A damaged or stale cache is rebuilt from the sources; an accepted one is mapped.
        guard let dataset = try? Dataset.load(cache.source, cacheDirectory: cache.directory) else { return }
        use(dataset, classes: cache.source.classes)
    }

    private static func config(_ input: UnsafeRawBufferPointer) {
        let path = ScratchFiles.store(input, as: "config.yaml")
        guard let config = try? TrainConfig.load(file: path) else { return }
        _ = config.json
        guard (try? config.validate()) != nil else { return }
        _ = config.baseLearningRate(worldSize: 3)
        _ = try? LRSchedule(parsing: config.schedule, totalSteps: 1000)
    }

    private static func model(_ input: UnsafeRawBufferPointer) {
        let path = ScratchFiles.store(input, as: "model.yaml")
        guard let spec = try? ModelSpec.named(path) else { return }
        _ = spec.layerInitializers
        _ = try? spec.withoutBatchNorm()
        for shape in [Shape(n: 1, c: 1, h: 28, w: 28), Shape(n: 1, c: 3, h: 32, w: 32)] {
            _ = try? spec.makeLayers(inputShape: shape)
        }
    }

    /// Reads every sample the way training does, and checks what a training step relies on
    /// without checking again: labels index the model's `classes` outputs.
    private static func use(_ dataset: Dataset, classes: Int) {
        for i in 0..<dataset.count {
            let label = dataset.labels[i]
            guard label >= 0 && Int(label) < classes else {
                fatalError("fuzz oracle: \(dataset.name) was accepted with label \(label) at sample \(i), outside 0..<\(classes)")
            }
        }
        _ = dataset.pixelStatistics()
        let batch = min(dataset.count, 16)
        guard batch > 0 else { return }
        var x = [Float](repeating: 0, count: batch * dataset.samplePixels)
        var labels = [Int32](repeating: 0, count: batch)
        let indices = (0..<Int32(dataset.count)).map { $0 }
        for start in stride(from: 0, to: dataset.count, by: batch) {
            let slice = indices[start..<min(start + batch, dataset.count)]
            x.withUnsafeMutableBufferPointer { xs in
                labels.withUnsafeMutableBufferPointer { ls in
                    dataset.gather(indices: slice, normalization: .none, into: xs.baseAddress!, labels: ls.baseAddress!)
                }
            }
        }
    }
}
