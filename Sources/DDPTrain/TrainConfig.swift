import DDPData
import DDPKernels
import DDPNet
import Foundation
import Yams

/// The fully resolved configuration of a training run. Keys are the command-line flags'
/// names in snake_case (`per_rank_batch`), as every JSON file ddptrain writes spells its keys;
/// a `--config` file (YAML or JSON) may also spell them as the flags do (`per-rank-batch`),
/// and so do the config.json files and checkpoints of earlier versions, which still load.
/// Flags override the file. It is written to the run dir and into every checkpoint.
public struct TrainConfig: Codable, Equatable, Sendable {
    // Each option's flag, key, help and checks are in TrainOptionTable.swift.
    public var dataset = DatasetKind.fashionMNIST.rawValue
    public var dataDir: String?
    public var trainSamples: Int?
    public var model = "fmnist-cnn"
    public var epochs = 10
    public var steps: Int?
    public var perRankBatch: Int?
    public var globalBatch: Int?
    public var bn = BNMode.sync
    /// Samples per virtual shard; nil: resolved by the Trainer (`defaultShardSize`, or a
    /// resumed checkpoint's).
    public var shardSize: Int?
    public var initializer = "default"
    public var optimizer = "sgd"
    public var lr = 0.1
    /// When set, the learning rate is lr x global batch / this (the linear scaling rule).
    public var lrReferenceBatch: Int?
    public var momentum = 0.9
    public var nesterov = false
    public var weightDecay = 5e-4
    public var schedule = "cosine"
    /// Linear warm-up steps; nil: `defaultWarmupSteps(totalSteps:)`, resolved by the Trainer.
    public var warmupSteps: Int?
    public var clipNorm: Double? = 5
    public var clipValue: Double?
    public var dropout: Double?
    public var labelSmoothing = 0.0
    public var seed: UInt64 = 0
    public var shuffle = true
    /// nil: a new folder under runs/ (`DefaultRunDirectory.resolve`), or with `--resume auto`
    /// the one runs/latest names.
    public var runDir: String?
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

    /// Batch-norm statistics over the whole global batch (sync), over groups of G
    /// consecutive shards (group:G; group:1 is ghost batch norm), per rank (local), or no
    /// batch norm at all (none: each batch-norm layer becomes an identity).
    public enum BNMode: Codable, Sendable, Hashable {
        case sync, local
        case group(Int)
        case disabled

        public init?(rawValue: String) {
            switch rawValue {
            case "sync": self = .sync
            case "local": self = .local
            case "none": self = .disabled
            default:
                guard rawValue.hasPrefix("group:"), let g = Int(rawValue.dropFirst("group:".count)), g >= 1,
                      String(g) == rawValue.dropFirst("group:".count) else { return nil }
                self = .group(g)
            }
        }

        public var rawValue: String {
            switch self {
            case .sync: "sync"
            case .local: "local"
            case .disabled: "none"
            case .group(let g): "group:\(g)"
            }
        }

        public static let names = "sync, group:G (G a whole number of shards, at least 1), local or none"

        /// Shards per statistics group when the groups do not depend on the world size;
        /// nil for sync (the whole batch), local and none.
        public var groupSize: Int? {
            if case .group(let g) = self { return g }
            return nil
        }

        /// Whether every rank's running statistics stay equal without averaging.
        public var isWorldInvariant: Bool { self == .sync || groupSize != nil }

        public init(from decoder: Decoder) throws {
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let mode = BNMode(rawValue: text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                        debugDescription: "'\(text)' is not one of \(Self.names)"))
            }
            self = mode
        }

        public func encode(to encoder: Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(rawValue)
        }
    }

    public init() {}

    /// Either spelling of a key: snake_case (this version's files) or the flag's (config
    /// files, and the config.json and checkpoints of earlier versions).
    public struct FileKey: CodingKey {
        public var stringValue: String
        public var intValue: Int? { nil }
        public init(stringValue: String) { self.stringValue = stringValue }
        public init?(intValue: Int) { nil }
    }

    /// Every option in the table, by its key; missing keys keep their defaults, so a config
    /// file names only what it changes.
    public init(from decoder: Decoder) throws {
        let container = SpelledContainer(container: try decoder.container(keyedBy: FileKey.self))
        self.init()
        for option in TrainConfig.options { try option.decode(&self, container) }
    }

    /// Every option in the table, by its key; none as null (`clip_norm: null`: no clipping).
    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: FileKey.self)
        for option in TrainConfig.options { try option.encode(self, &container) }
    }

    /// A keyed container that finds each key under its snake_case or its flag spelling.
    public struct SpelledContainer {
        let container: KeyedDecodingContainer<FileKey>
        func key(_ key: String) -> FileKey {
            let snake = FileKey(stringValue: key)
            return container.contains(snake) ? snake : FileKey(stringValue: key.replacingOccurrences(of: "_", with: "-"))
        }
        func contains(_ key: String) -> Bool { container.contains(self.key(key)) }
        func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: String) throws -> T? {
            try container.decodeIfPresent(type, forKey: self.key(key))
        }
    }

    /// Reads a YAML or JSON config file (SpecFile: a regular file of at most 1 MiB, nesting
    /// bounded, no anchors or aliases); unknown keys and wrong types are errors that name
    /// the file, the key and the value.
    public static func load(file path: String) throws -> TrainConfig {
        let text: String
        let document: Any?
        do {
            text = try SpecFile.contents(of: path, what: "config file")
            document = try SpecFile.load(text, source: path)
        } catch let error as SpecFileError {
            throw ConfigError(error.message)
        }
        guard let map = document as? [String: Any] else {
            throw ConfigError("\(path): expected a map of option names to values")
        }
        let keys = options.compactMap(\.key)
        func flagSpelling(_ key: String) -> String { key.replacingOccurrences(of: "_", with: "-") }
        let known = Set(keys + keys.map(flagSpelling))
        if let unknown = map.keys.sorted().first(where: { !known.contains($0) }) {
            throw ConfigError("\(path): unknown key '\(unknown)'; keys are the train command's option names: "
                              + keys.map(flagSpelling).sorted().joined(separator: ", ") + " (or with _ for -)")
        }
        if let twice = keys.first(where: { $0 != flagSpelling($0) && map[$0] != nil && map[flagSpelling($0)] != nil }) {
            throw ConfigError("\(path): key '\(flagSpelling(twice))' is given twice, also as '\(twice)'")
        }
        let config: TrainConfig
        do {
            config = try YAMLDecoder().decode(TrainConfig.self, from: text)
        } catch let DecodingError.typeMismatch(type, context), let DecodingError.valueNotFound(type, context) {
            let key = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw ConfigError("\(path): key '\(key)': expected \(describe(type)), got \(map[key].map { "\($0)" } ?? "nothing")")
        } catch let DecodingError.dataCorrupted(context) {
            let key = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw ConfigError("\(path): key '\(key)': \(map[key].map { "'\($0)'" } ?? "value") is not valid (\(context.debugDescription))")
        } catch {
            throw ConfigError("\(path): \(error)")
        }
        // Each value on its own now, so that the error names the file; how they go together
        // is checked once the flags are applied (validate()).
        do { try config.validateValues() } catch let error as ConfigError { throw ConfigError("\(path): \(error.message)") }
        return config
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is UInt64.Type: return "an integer"
        case is Double.Type: return "a number"
        case is Bool.Type: return "true or false"
        default: return "a string"
        }
    }

    /// Samples per rank when neither --per-rank-batch nor --global-batch is given.
    public static let defaultPerRankBatch = 32

    /// Counts of samples, batches and steps: sample indices are 32-bit, and products of
    /// two such counts (steps x global batch) then stay far inside 64 bits.
    public static let maxCount = Int(Int32.max)

    /// Checks each value on its own (a flag's value is wrong whatever else is given).
    public func validateValues() throws {
        for option in TrainConfig.options { try option.check(self) }
    }

    /// Checks values and how they go together, as far as that does not depend on the world
    /// size or the data.
    public func validate() throws {
        func fail(_ message: String) throws -> Never { throw ConfigError(message) }
        try validateValues()
        if perRankBatch != nil && globalBatch != nil { try fail("give --per-rank-batch or --global-batch, not both") }
        if epochs < 1 && steps == nil { try fail("--epochs must be at least 1, got \(epochs)") }
        if dataset == DatasetKind.synthetic.rawValue && dataDir != nil { try fail("--data-dir does not apply to --dataset synthetic") }
        if initFrom != nil && initializer != "default" { try fail("--init \(initializer) does not apply with --init-from: the weights come from the file") }
        if nesterov && optimizer != "sgd" { try fail("--nesterov applies to --optimizer sgd only") }
        if nesterov && momentum == 0 { try fail("--nesterov needs --momentum > 0") }
    }

    /// Checks what depends on the world size: the global batch and the scaled learning rate.
    public func validate(worldSize: Int) throws {
        try validate()
        let (global, overflow) = (perRankBatch ?? TrainConfig.defaultPerRankBatch).multipliedReportingOverflow(by: worldSize)
        if globalBatch == nil && (overflow || global > TrainConfig.maxCount) {
            throw ConfigError("--per-rank-batch \(perRankBatch ?? TrainConfig.defaultPerRankBatch) x \(worldSize) ranks is a global batch larger than \(TrainConfig.maxCount)")
        }
        let rate = baseLearningRate(worldSize: worldSize)
        if !(Float(rate).isFinite && Float(rate) > 0) {
            throw ConfigError("--lr \(lr) scaled by --lr-reference-batch to the global batch \(resolvedGlobalBatch(worldSize: worldSize)) is \(rate), outside Float32's range")
        }
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

    /// Refuses, before anything is allocated, a model and per-rank batch that this node's
    /// memory cannot hold with `threads` replicas and this optimizer's state, for every rank
    /// on the node (ModelSpec.checkMemory). `training`: false for evaluation (no optimizer).
    public func checkMemory(spec: ModelSpec, inputShape: Shape, batch: Int, threads: Int, training: Bool = true,
                            gradientSlots: Int = 1) throws {
        let slots = !training ? 0 : optimizer == "sgd" ? (momentum > 0 ? 1 : 0) : 2
        try spec.checkMemory(inputShape: inputShape, batch: batch, replicas: threads, optimizerSlots: slots,
                             ranksOnNode: ComputeReplicas.localRanks(ProcessInfo.processInfo.environment), gradientSlots: gradientSlots)
    }

    /// The warm-up when --warmup-steps is not given: 5% of the run's steps, rounded up, at
    /// most 200. A share, as Hugging Face's `warmup_ratio` (commonly 0.05 to 0.1) and Goyal et
    /// al.'s 5 of 90 epochs, so that a short run reaches its learning rate; capped, because
    /// what warm-up tames (the first steps' large gradients, momentum and Adam's moments
    /// still settling) lasts some number of steps, not a share of however long the run is.
    /// 200 was the fixed default before: runs of 4000 steps or more train as they did.
    public static func defaultWarmupSteps(totalSteps: Int) -> Int {
        min(totalSteps / 20 + (totalSteps % 20 == 0 ? 0 : 1), maxDefaultWarmupSteps)
    }
    public static let maxDefaultWarmupSteps = 200

    /// The run dir: the commands fill in a new folder when none is given
    /// (DefaultRunDirectory.resolve); runs/latest until then.
    public var resolvedRunDir: String { runDir ?? DefaultRunDirectory.latest }

    /// The global batch for a world of `worldSize` ranks.
    public func resolvedGlobalBatch(worldSize: Int) -> Int {
        globalBatch ?? (perRankBatch ?? TrainConfig.defaultPerRankBatch) * worldSize
    }

    /// The shard size when none is given: the global batch over ranks x threads, rounded
    /// up, so that each compute thread trains one shard per step, as it trained its part of
    /// the batch before virtual shards: the same cost.
    public static func defaultShardSize(globalBatch: Int, worldSize: Int, threads: Int) -> Int {
        let workers = max(worldSize * threads, 1)
        return max((globalBatch + workers - 1) / workers, 1)
    }

    /// The base learning rate for a world of `worldSize` ranks, scaled by the global batch
    /// when --lr-reference-batch is given.
    public func baseLearningRate(worldSize: Int) -> Double {
        guard let reference = lrReferenceBatch else { return lr }
        return lr * Double(resolvedGlobalBatch(worldSize: worldSize)) / Double(reference)
    }

    /// Every option in files, by key, as text: what the ranks agree on.
    public var settings: [(name: String, value: String)] {
        TrainConfig.options.compactMap { option in option.key.map { ($0, option.text(self)) } }
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
