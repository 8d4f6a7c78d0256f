import DDPNet
import Foundation
import Yams

/// The fully resolved configuration of a training run. Keys are the command-line flags'
/// names, so a `--config` file (YAML or JSON) uses the same words; flags override the file.
/// It is written to the run dir and into every checkpoint.
public struct TrainConfig: Codable, Equatable, Sendable {
    public var dataset = "fashion-mnist"
    public var dataDir: String?
    public var trainSamples: Int?
    public var model = "fmnist-cnn"
    public var epochs = 10
    public var steps: Int?
    public var perRankBatch: Int?
    public var globalBatch: Int?
    public var bn = BNMode.sync
    public var initializer = "default"
    public var optimizer = "sgd"
    public var lr = 0.1
    /// When set, the learning rate is lr x global batch / this (the linear scaling rule).
    public var lrReferenceBatch: Int?
    public var momentum = 0.9
    public var nesterov = false
    public var weightDecay = 5e-4
    public var schedule = "cosine"
    public var warmupSteps = 200
    public var clipNorm: Double? = 5
    public var clipValue: Double?
    public var dropout: Double?
    public var labelSmoothing = 0.0
    public var seed: UInt64 = 0
    public var shuffle = true
    public var runDir = "runs/latest"
    public var evalEvery = 1
    public var logEvery = 50
    public var initFrom: String?
    public var checkReplicas = 0
    public var maxSkippedSteps = 10
    public var syntheticSamples = 2048
    public var checkpointEvery = 0
    public var keep = 3
    public var resume: String?
    public var allowBatchChange = false
    /// Seconds one training step may take before this rank ends the job (0: no limit).
    public var collectiveTimeout = 0.0
    /// Compute threads per rank; nil: ComputeReplicas.defaultThreads().
    public var threads: Int?

    /// Batch-norm statistics across ranks (sync), per rank (local), or no batch norm at
    /// all (none: each batch-norm layer becomes an identity).
    public enum BNMode: String, Codable, Sendable, CaseIterable {
        case sync, local
        case disabled = "none"
    }

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case dataset, dataDir = "data-dir", trainSamples = "train-samples", model, epochs, steps
        case perRankBatch = "per-rank-batch", globalBatch = "global-batch", bn, initializer = "init"
        case optimizer, lr, lrReferenceBatch = "lr-reference-batch", momentum, nesterov, weightDecay = "weight-decay", schedule
        case warmupSteps = "warmup-steps", clipNorm = "clip-norm", clipValue = "clip-value", dropout
        case labelSmoothing = "label-smoothing", seed, shuffle, runDir = "run-dir", evalEvery = "eval-every"
        case logEvery = "log-every", initFrom = "init-from", checkReplicas = "check-replicas"
        case maxSkippedSteps = "max-skipped-steps", syntheticSamples = "synthetic-samples"
        case checkpointEvery = "checkpoint-every", keep, resume, allowBatchChange = "allow-batch-change"
        case collectiveTimeout = "collective-timeout", threads
    }

    /// Missing keys keep their defaults, so a config file names only what it changes.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = TrainConfig()
        dataset = try c.decodeIfPresent(String.self, forKey: .dataset) ?? d.dataset
        dataDir = try c.decodeIfPresent(String.self, forKey: .dataDir)
        trainSamples = try c.decodeIfPresent(Int.self, forKey: .trainSamples)
        model = try c.decodeIfPresent(String.self, forKey: .model) ?? d.model
        epochs = try c.decodeIfPresent(Int.self, forKey: .epochs) ?? d.epochs
        steps = try c.decodeIfPresent(Int.self, forKey: .steps)
        perRankBatch = try c.decodeIfPresent(Int.self, forKey: .perRankBatch)
        globalBatch = try c.decodeIfPresent(Int.self, forKey: .globalBatch)
        bn = try c.decodeIfPresent(BNMode.self, forKey: .bn) ?? d.bn
        initializer = try c.decodeIfPresent(String.self, forKey: .initializer) ?? d.initializer
        optimizer = try c.decodeIfPresent(String.self, forKey: .optimizer) ?? d.optimizer
        lr = try c.decodeIfPresent(Double.self, forKey: .lr) ?? d.lr
        lrReferenceBatch = try c.decodeIfPresent(Int.self, forKey: .lrReferenceBatch)
        momentum = try c.decodeIfPresent(Double.self, forKey: .momentum) ?? d.momentum
        nesterov = try c.decodeIfPresent(Bool.self, forKey: .nesterov) ?? d.nesterov
        weightDecay = try c.decodeIfPresent(Double.self, forKey: .weightDecay) ?? d.weightDecay
        schedule = try c.decodeIfPresent(String.self, forKey: .schedule) ?? d.schedule
        warmupSteps = try c.decodeIfPresent(Int.self, forKey: .warmupSteps) ?? d.warmupSteps
        clipNorm = c.contains(.clipNorm) ? try c.decodeIfPresent(Double.self, forKey: .clipNorm) : d.clipNorm
        clipValue = try c.decodeIfPresent(Double.self, forKey: .clipValue)
        dropout = try c.decodeIfPresent(Double.self, forKey: .dropout)
        labelSmoothing = try c.decodeIfPresent(Double.self, forKey: .labelSmoothing) ?? d.labelSmoothing
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? d.seed
        shuffle = try c.decodeIfPresent(Bool.self, forKey: .shuffle) ?? d.shuffle
        runDir = try c.decodeIfPresent(String.self, forKey: .runDir) ?? d.runDir
        evalEvery = try c.decodeIfPresent(Int.self, forKey: .evalEvery) ?? d.evalEvery
        logEvery = try c.decodeIfPresent(Int.self, forKey: .logEvery) ?? d.logEvery
        initFrom = try c.decodeIfPresent(String.self, forKey: .initFrom)
        checkReplicas = try c.decodeIfPresent(Int.self, forKey: .checkReplicas) ?? d.checkReplicas
        maxSkippedSteps = try c.decodeIfPresent(Int.self, forKey: .maxSkippedSteps) ?? d.maxSkippedSteps
        syntheticSamples = try c.decodeIfPresent(Int.self, forKey: .syntheticSamples) ?? d.syntheticSamples
        checkpointEvery = try c.decodeIfPresent(Int.self, forKey: .checkpointEvery) ?? d.checkpointEvery
        keep = try c.decodeIfPresent(Int.self, forKey: .keep) ?? d.keep
        resume = try c.decodeIfPresent(String.self, forKey: .resume)
        allowBatchChange = try c.decodeIfPresent(Bool.self, forKey: .allowBatchChange) ?? d.allowBatchChange
        collectiveTimeout = try c.decodeIfPresent(Double.self, forKey: .collectiveTimeout) ?? d.collectiveTimeout
        threads = try c.decodeIfPresent(Int.self, forKey: .threads)
    }

    /// Reads a YAML or JSON config file; unknown keys and wrong types are errors that name
    /// the file, the key and the value.
    public static func load(file path: String) throws -> TrainConfig {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError("\(path): cannot read the config file")
        }
        let document: Any?
        do { document = try Yams.load(yaml: text) } catch {
            throw ConfigError("\(path): not valid YAML or JSON: \(error)")
        }
        guard let map = document as? [String: Any] else {
            throw ConfigError("\(path): expected a map of option names to values")
        }
        let known = Set(CodingKeys.allCases.map(\.rawValue))
        if let unknown = map.keys.sorted().first(where: { !known.contains($0) }) {
            throw ConfigError("\(path): unknown key '\(unknown)'; keys are the train command's option names: \(known.sorted().joined(separator: ", "))")
        }
        do {
            return try YAMLDecoder().decode(TrainConfig.self, from: text)
        } catch let DecodingError.typeMismatch(type, context), let DecodingError.valueNotFound(type, context) {
            let key = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw ConfigError("\(path): key '\(key)': expected \(describe(type)), got \(map[key].map { "\($0)" } ?? "nothing")")
        } catch let DecodingError.dataCorrupted(context) {
            let key = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw ConfigError("\(path): key '\(key)': \(map[key].map { "'\($0)'" } ?? "value") is not valid (\(context.debugDescription))")
        } catch {
            throw ConfigError("\(path): \(error)")
        }
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is UInt64.Type: return "an integer"
        case is Double.Type: return "a number"
        case is Bool.Type: return "true or false"
        default: return "a string"
        }
    }

    /// Checks values that do not depend on the world size or the data.
    public func validate() throws {
        func fail(_ message: String) throws -> Never { throw ConfigError(message) }
        if let b = perRankBatch, b < 1 { try fail("--per-rank-batch must be at least 1, got \(b)") }
        if let b = globalBatch, b < 1 { try fail("--global-batch must be at least 1, got \(b)") }
        if perRankBatch != nil && globalBatch != nil { try fail("give --per-rank-batch or --global-batch, not both") }
        if epochs < 1 && steps == nil { try fail("--epochs must be at least 1, got \(epochs)") }
        if let s = steps, s < 1 { try fail("--steps must be at least 1, got \(s)") }
        if !(lr > 0 && lr.isFinite) { try fail("--lr must be a positive number, got \(lr)") }
        if let b = lrReferenceBatch, b < 1 { try fail("--lr-reference-batch must be at least 1, got \(b)") }
        if !(momentum >= 0 && momentum < 1) { try fail("--momentum must be in [0, 1), got \(momentum)") }
        if !(weightDecay >= 0) { try fail("--weight-decay must be at least 0, got \(weightDecay)") }
        if let c = clipNorm, !(c > 0 && c.isFinite) { try fail("--clip-norm must be a positive number, got \(c)") }
        if let c = clipValue, !(c > 0 && c.isFinite) { try fail("--clip-value must be a positive number, got \(c)") }
        if !weightDecay.isFinite { try fail("--weight-decay must be a finite number, got \(weightDecay)") }
        if !collectiveTimeout.isFinite { try fail("--collective-timeout must be a finite number, got \(collectiveTimeout)") }
        if dataset == "synthetic" && dataDir != nil { try fail("--data-dir does not apply to --dataset synthetic") }
        if initFrom != nil && initializer != "default" { try fail("--init \(initializer) does not apply with --init-from: the weights come from the file") }
        if let p = dropout, !(p >= 0 && p < 1) { try fail("--dropout must be in [0, 1), got \(p)") }
        if !(labelSmoothing >= 0 && labelSmoothing < 1) { try fail("--label-smoothing must be in [0, 1), got \(labelSmoothing)") }
        if warmupSteps < 0 { try fail("--warmup-steps must be at least 0, got \(warmupSteps)") }
        if evalEvery < 0 { try fail("--eval-every must be at least 0, got \(evalEvery)") }
        if logEvery < 1 { try fail("--log-every must be at least 1, got \(logEvery)") }
        if checkReplicas < 0 { try fail("--check-replicas must be at least 0, got \(checkReplicas)") }
        if maxSkippedSteps < 1 { try fail("--max-skipped-steps must be at least 1, got \(maxSkippedSteps)") }
        if let n = trainSamples, n < 1 { try fail("--train-samples must be at least 1, got \(n)") }
        if checkpointEvery < 0 { try fail("--checkpoint-every must be at least 0, got \(checkpointEvery)") }
        if keep < 1 { try fail("--keep must be at least 1, got \(keep)") }
        if !(collectiveTimeout >= 0 && collectiveTimeout.isFinite) { try fail("--collective-timeout must be 0 (off) or a number of seconds, got \(collectiveTimeout)") }
        if let t = threads { try TrainConfig.checkThreads(t) }
        if syntheticSamples < 1 { try fail("--synthetic-samples must be at least 1, got \(syntheticSamples)") }
        if !["fashion-mnist", "mnist", "cifar10", "synthetic"].contains(dataset) {
            try fail("--dataset must be one of fashion-mnist, mnist, cifar10, synthetic; got '\(dataset)'")
        }
        if !["sgd", "adam", "adamw"].contains(optimizer) { try fail("--optimizer must be sgd, adam or adamw; got '\(optimizer)'") }
        if nesterov && optimizer != "sgd" { try fail("--nesterov applies to --optimizer sgd only") }
        if nesterov && momentum == 0 { try fail("--nesterov needs --momentum > 0") }
    }

    /// Compute threads per rank that ddptrain accepts, from --threads or the environment.
    public static let threadRange = 1...256

    public static func checkThreads(_ threads: Int) throws {
        guard threadRange.contains(threads) else {
            throw ConfigError("--threads must be between \(threadRange.lowerBound) and \(threadRange.upperBound), got \(threads)")
        }
    }

    /// The model this configuration trains: the preset or file, with every batch norm
    /// replaced by an identity under `--bn none`.
    public func modelSpec() throws -> ModelSpec {
        let spec = try ModelSpec.named(model)
        return bn == .disabled ? try spec.withoutBatchNorm() : spec
    }

    /// The global batch for a world of `worldSize` ranks.
    public func resolvedGlobalBatch(worldSize: Int) -> Int {
        globalBatch ?? (perRankBatch ?? 32) * worldSize
    }

    /// The base learning rate for a world of `worldSize` ranks, scaled by the global batch
    /// when --lr-reference-batch is given.
    public func baseLearningRate(worldSize: Int) -> Double {
        guard let reference = lrReferenceBatch else { return lr }
        return lr * Double(resolvedGlobalBatch(worldSize: worldSize)) / Double(reference)
    }

    public var json: String {
        // validate() admits only finite numbers; the encoder's strategy keeps this total anyway.
        (try? JSONEncoder.ddptrain().encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}

public struct ConfigError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
