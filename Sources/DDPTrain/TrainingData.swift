import DDPComm
import DDPData
import DDPKernels

/// The training and test sets of a run, with the normalization they share.
public struct TrainingData {
    public let name: String
    public let train: Dataset
    public let test: Dataset?
    public let normalization: Normalization
    public var sampleShape: Shape { train.shape(batch: 1) }

    /// Published per-dataset statistics of the training pixels in [0, 1] (they agree with
    /// `pixelStatistics()` of the full training sets to 4 digits; a test checks).
    static let knownNormalization = [
        "fashion-mnist": Normalization(mean: 0.2860, std: 0.3530),
        "mnist": Normalization(mean: 0.1307, std: 0.3081),
    ]

    public static func defaultDirectory(dataset: String) -> String? {
        switch dataset {
        case "fashion-mnist": return "/usr/share/datasets/fashion-mnist"
        case "mnist": return "/usr/share/datasets/mnist"
        default: return nil
        }
    }

    /// Rank 0 decodes the files first and writes the shared cache; then the other ranks map
    /// it, so each rank touches only the samples it uses. All ranks agree on success.
    public static func load(config: TrainConfig, world: Communicator, withTest: Bool = true) throws -> TrainingData {
        var data: TrainingData?
        try agreeOnSuccess(world) { if world.rank == 0 { data = try loadHere(config: config, withTest: withTest) } }
        try agreeOnSuccess(world) { if world.rank != 0 { data = try loadHere(config: config, withTest: withTest) } }
        return data!
    }

    static func loadHere(config: TrainConfig, withTest: Bool) throws -> TrainingData {
        let train: Dataset
        var test: Dataset?
        switch config.dataset {
        case "synthetic":
            // 1x28x28 so that every preset applies.
            train = Dataset.synthetic(count: config.syntheticSamples, channels: 1, height: 28, width: 28, classes: 10,
                                      seed: config.seed, split: .train)
            test = withTest ? Dataset.synthetic(count: max(config.syntheticSamples / 4, 1), channels: 1, height: 28, width: 28,
                                                classes: 10, seed: config.seed, split: .test) : nil
        case "cifar10":
            guard let dir = config.dataDir else {
                throw ConfigError("--dataset cifar10 needs --data-dir (a folder with data_batch_1.bin ... test_batch.bin)")
            }
            train = try Dataset.load(try DataSource.cifar10(directory: dir, split: .train), firstN: config.trainSamples)
            test = withTest ? try Dataset.load(try DataSource.cifar10(directory: dir, split: .test)) : nil
        default:
            let dir = config.dataDir ?? defaultDirectory(dataset: config.dataset)!
            train = try Dataset.load(try DataSource.idx(directory: dir, split: .train), firstN: config.trainSamples)
            test = withTest ? try Dataset.load(try DataSource.idx(directory: dir, split: .test)) : nil
        }
        if config.dataset != "synthetic", let n = config.trainSamples, n > train.count {
            throw ConfigError("--train-samples \(n) is more than the \(train.count) training samples")
        }
        if let test, test.shape(batch: 1) != train.shape(batch: 1) || test.classes != train.classes {
            throw ConfigError("test set \(test.name) has samples \(test.shape(batch: 1).sampleDims) and \(test.classes) classes, the training set \(train.shape(batch: 1).sampleDims) and \(train.classes)")
        }
        let normalization = knownNormalization[config.dataset] ?? train.pixelStatistics()
        return TrainingData(name: config.dataset, train: train, test: test, normalization: normalization)
    }

    /// Fills `x` and `labels` with samples `indices` of `dataset`, normalized.
    @inline(__always)
    func gather(_ dataset: Dataset, indices: UnsafePointer<Int32>, count: Int, into x: UnsafeMutablePointer<Float>, labels: UnsafeMutablePointer<Int32>) {
        dataset.gather(indices: UnsafeBufferPointer(start: indices, count: count), normalization: normalization, into: x, labels: labels)
    }
}
