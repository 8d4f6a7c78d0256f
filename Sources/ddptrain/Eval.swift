import ArgumentParser
import DDPComm
import DDPData
import DDPKernels
import DDPNet
import DDPTrain
import Foundation

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate a checkpoint on the test set, sharded over the ranks (every sample counted once).")

    @Option(help: "The checkpoint (.safetensors) to evaluate.")
    var checkpoint: String
    @Option(help: "Dataset (default: the checkpoint's).")
    var dataset: String?
    @Option(help: "Folder with the data files (default: the checkpoint's).")
    var dataDir: String?
    @Option(parsing: .unconditional, help: "Compute threads per rank (default: as for train).")
    var threads: Int?
    @Flag(help: "Print the result as one JSON line.")
    var json = false

    /// The training options' own checks (TrainConfig.options), before MPI starts.
    func validate() throws {
        var given = TrainConfig()
        given.dataset = dataset ?? given.dataset
        given.dataDir = dataDir
        given.threads = threads
        do { try given.validateValues() } catch let error as ConfigError { throw ValidationError(error.message) }
    }

    func run() throws {
        try withWorld { world in
            // Rank 0 opens the checkpoint; every rank gets the configuration and the
            // normalization it was trained with.
            struct Trained: Codable { var config: TrainConfig; var mean: Double; var std: Double }
            var reader: CheckpointReader?
            let trained = try decideOnRankZero(world) { () throws -> Trained in
                let opened = try CheckpointReader(path: checkpoint)
                let normalization = try opened.normalization()
                reader = opened
                return Trained(config: opened.config, mean: normalization.mean, std: normalization.std)
            }
            var config = trained.config
            // Another dataset is read from its own default folder unless --data-dir says.
            if let dataset, dataset != config.dataset { config.dataDir = nil }
            if let dataset { config.dataset = dataset }
            if let dataDir { config.dataDir = dataDir }
            config.trainSamples = nil
            // The checkpoint's values and this command's, each on its own (a damaged or
            // foreign checkpoint, or --dataset with a typo).
            try agreeOnSuccess(world) { try config.validateValues() }

            let data = try TrainingData.load(config: config, world: world)
            guard let test = data.test else { throw TrainingError("no test set for \(config.dataset)") }
            let batch = 256
            let replicas = try agreeOnSuccess(world) {
                let spec = try config.modelSpec()
                let threads = try threads ?? ComputeReplicas.defaultThreads()
                try config.checkMemory(spec: spec, inputShape: data.sampleShape, batch: batch, threads: threads, training: false)
                let replicas = try ComputeReplicas(spec: spec, inputShape: data.sampleShape, maxBatch: batch, threads: threads, classes: test.classes,
                                                   labelSmoothing: Float(config.labelSmoothing), rankStatistics: LocalStatistics(), dropout: nil)
                try reader?.checkLayers(replicas.main.layersText)
                return replicas
            }
            // As a training run starts: rank 0 loads, every rank receives (I1).
            try setModelStateOnRankZero(replicas.main, world: world) {
                if let reader { try StateDict.load(reader.file, into: replicas.main) }
            }

            let x = FloatBuffer(capacity: batch * data.sampleShape.perSample)
            let labels = UnsafeMutablePointer<Int32>.allocate(capacity: batch)
            let ids = UnsafeMutablePointer<Int32>.allocate(capacity: batch)
            defer { labels.deallocate(); ids.deallocate() }
            let result = try evaluateModel(replicas, on: test, normalization: Normalization(mean: trained.mean, std: trained.std),
                                           world: world, x: x, labels: labels, ids: ids, batch: batch)
            guard world.rank == 0 else { return }
            if json {
                print(String(decoding: try JSONEncoder.ddptrain().encode(result), as: UTF8.self))
            } else {
                print(String(format: "%@ on %@ test (%d samples, %@): accuracy %.2f%% (%d correct), loss %.4f",
                             checkpoint, config.dataset, result.samples, plural(world.size, "rank"), result.accuracy * 100, result.correct, result.loss))
                print(classTables(result, names: classNames(dataset: config.dataset)), terminator: "")
            }
        }
    }
}

/// Accuracy per class, then the confusion matrix (rows: true class, columns: predicted), as
/// aligned text.
func classTables(_ result: Evaluation, names: [String]) -> String {
    let classes = result.classAccuracy.count
    let label = { (c: Int) in c < names.count ? "\(c) \(names[c])" : "\(c)" }
    let width = (0..<classes).map { label($0).count }.max() ?? 1
    var text = "accuracy per class:\n"
    for c in 0..<classes {
        let row = result.confusionMatrix?[c]
        let counts = row.map { " (\($0[c]) of \($0.reduce(0, +)))" } ?? ""
        let accuracy = result.classAccuracy[c].map { String(format: "%6.2f%%", $0 * 100) } ?? "   -   "
        text += "  " + label(c).padding(toLength: width, withPad: " ", startingAt: 0) + "  \(accuracy)\(counts)\n"
    }
    guard let matrix = result.confusionMatrix else { return text }
    let cell = max(String(matrix.joined().max() ?? 0).count, String(classes - 1).count) + 1
    let pad = { (s: String) in String(repeating: " ", count: max(cell - s.count, 0)) + s }
    text += "confusion matrix (rows: true class, columns: predicted class):\n"
    text += "  " + String(repeating: " ", count: width) + (0..<classes).map { pad(String($0)) }.joined() + "\n"
    for (c, row) in matrix.enumerated() {
        text += "  " + label(c).padding(toLength: width, withPad: " ", startingAt: 0) + row.map { pad(String($0)) }.joined() + "\n"
    }
    return text
}
