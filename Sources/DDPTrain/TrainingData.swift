import DDPComm
import DDPData
import DDPKernels
import DDPSystem
import Foundation

/// The training and test sets of a run, with the normalization they share.
public struct TrainingData {
    public let name: String
    public let train: Dataset
    public let test: Dataset?
    public let normalization: Normalization
    public var sampleShape: Shape { train.shape(batch: 1) }

    /// Rank 0 decodes the files first and writes the shared cache; then the other ranks map
    /// it, so each rank touches only the samples it uses. All ranks agree on success.
    public static func load(config: TrainConfig, world: Communicator, withTest: Bool = true) throws -> TrainingData {
        var data: TrainingData?
        try agreeOnSuccess(world) { if world.rank == 0 { data = try loadHere(config: config, withTest: withTest) } }
        try agreeOnSuccess(world) { if world.rank != 0 { data = try loadHere(config: config, withTest: withTest) } }
        // Each rank read its own files (other nodes may hold other copies): they must agree,
        // or the ranks would run different numbers of steps and their collectives mismatch.
        guard let data else { throw TrainingError("no data loaded for --dataset \(config.dataset)") }
        try agreeOnSettings(world, what: "the data of --dataset \(config.dataset)", data.fingerprint)
        return data
    }

    /// Sizes, classes, normalization and a hash of labels and a sample of pixels.
    var fingerprint: [(name: String, value: String)] {
        func digest(_ d: Dataset) -> String {
            var hash = FNV1a()
            for i in 0..<d.count { withUnsafeBytes(of: d.labels[i]) { hash.add($0) } }
            let pixels = d.count * d.samplePixels
            var i = 0
            while i < pixels { hash.add(d.pixels[i]); i += 997 }
            return "\(d.count) samples of \(d.shape(batch: 1).sampleDims), \(d.classes) classes, hash \(String(hash.value, radix: 16))"
        }
        return [("train", digest(train)), ("test", test.map(digest) ?? "none"), ("normalization", "\(normalization.mean), \(normalization.std)")]
    }

    static func loadHere(config: TrainConfig, withTest: Bool) throws -> TrainingData {
        let train: Dataset
        var test: Dataset?
        guard let kind = DatasetKind(rawValue: config.dataset) else {
            throw ConfigError("--dataset must be one of \(DatasetKind.names); got '\(config.dataset)'")
        }
        switch kind {
        case .synthetic:
            // 1x28x28 so that every preset applies.
            // Sample i is a pure function of (seed, i): the first N of a larger set are a set of N.
            if let n = config.trainSamples, n > config.syntheticSamples {
                throw ConfigError("--train-samples \(n) is more than the \(config.syntheticSamples) synthetic samples (--synthetic-samples)")
            }
            // The data layer checks the sizes (overflow, 32-bit indices, memory) before allocating;
            // its error is put down to the option that set the size.
            let trainCount = config.trainSamples ?? config.syntheticSamples
            let trainOption = config.trainSamples.map { "--train-samples \($0)" } ?? "--synthetic-samples \(config.syntheticSamples)"
            do {
                train = try Dataset.synthetic(count: trainCount, channels: 1, height: 28, width: 28,
                                              classes: 10, seed: config.seed, split: .train)
            } catch let error as DataError {
                throw ConfigError("\(trainOption): \(error)")
            }
            do {
                test = withTest ? try Dataset.synthetic(count: max(config.syntheticSamples / 4, 1), channels: 1, height: 28, width: 28,
                                                        classes: 10, seed: config.seed, split: .test) : nil
            } catch let error as DataError {
                throw ConfigError("--synthetic-samples \(config.syntheticSamples): \(error)")
            }
        case .cifar10:
            guard let dir = config.dataDir else {
                throw ConfigError("--dataset cifar10 needs --data-dir (a folder with data_batch_1.bin ... test_batch.bin)")
            }
            train = try Dataset.load(try DataSource.cifar10(directory: dir, split: .train), firstN: config.trainSamples)
            test = withTest ? try Dataset.load(try DataSource.cifar10(directory: dir, split: .test)) : nil
        case .fashionMNIST, .mnist:
            guard let dir = config.dataDir ?? kind.defaultDirectory else {
                throw ConfigError("--dataset \(config.dataset) needs --data-dir")
            }
            train = try Dataset.load(try DataSource.idx(directory: dir, split: .train), firstN: config.trainSamples)
            test = withTest ? try Dataset.load(try DataSource.idx(directory: dir, split: .test)) : nil
        }
        for dataset in [train, test].compactMap({ $0 }) {
            if case .rebuilt(let path, let reason) = dataset.cacheStatus {
                writeToStandardError("warning: \(path): damaged dataset cache (\(reason)); rebuilt from the source files\n")
            }
        }
        if kind != .synthetic, let n = config.trainSamples, n > train.count {
            throw ConfigError("--train-samples \(n) is more than the \(train.count) training samples")
        }
        if let test, test.shape(batch: 1) != train.shape(batch: 1) || test.classes != train.classes {
            throw ConfigError("test set \(test.name) has samples \(test.shape(batch: 1).sampleDims) and \(test.classes) classes, the training set \(train.shape(batch: 1).sampleDims) and \(train.classes)")
        }
        let normalization = try kind.knownNormalization ?? train.normalization()
        return TrainingData(name: config.dataset, train: train, test: test, normalization: normalization)
    }

    /// Fills `x` and `labels` with samples `indices` of `dataset`, normalized.
    @inline(__always)
    func gather(_ dataset: Dataset, indices: UnsafePointer<Int32>, count: Int, into x: UnsafeMutablePointer<Float>, labels: UnsafeMutablePointer<Int32>) {
        dataset.gather(indices: UnsafeBufferPointer(start: indices, count: count), normalization: normalization, into: x, labels: labels)
    }
}
