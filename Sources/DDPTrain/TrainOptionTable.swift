import DDPData
import DDPNet
import Foundation

/// Every training option, declared once: its flag, its key in config files and config.json,
/// its help, its check, and whether a resume must keep it and `compare --vary` may vary it.
/// The flags of `train`, `compare` and `bench` (TrainFlags), config files and config.json
/// (TrainConfig's Codable), the settings the ranks agree on, checkpoint compatibility and
/// `--vary` all read this table. Adding an option: a field in TrainConfig and an entry here.
extension TrainConfig {
    public static let options: [TrainOption] = [
        .value("dataset", \.dataset, "name", "\(DatasetKind.names).", check: { _, v in
            if DatasetKind(rawValue: v) == nil { throw ConfigError("--dataset must be one of \(DatasetKind.names); got '\(v)'") }
        }),
        .value("data-dir", \.dataDir, "dir", "Folder with the data files (default for fashion-mnist: \(DatasetKind.fashionMNIST.defaultDirectory ?? "none")).",
               vary: false),
        .value("train-samples", \.trainSamples, "n", "Use only the first N training samples.", check: count(atLeast: 1), none: "all",
               resume: .mustMatch),
        .value("synthetic-samples", \.syntheticSamples, "n", "Samples of the synthetic dataset.", check: count(atLeast: 1)),
        .value("model", \.model, "model", "A preset (mlp, fmnist-cnn, lenet5, resnet8) or a YAML/JSON model file."),

        .value("epochs", \.epochs, "n", "Epochs to train.", check: { name, v in
            // Epochs below 1 are a mistake only without --steps: see validate().
            if v > maxCount { throw ConfigError("--\(name) must be at most \(maxCount), got \(v)") }
        }),
        .value("steps", \.steps, "n", "Steps to train; overrides --epochs.", check: count(atLeast: 1)),
        .value("per-rank-batch", \.perRankBatch, "n", "Samples per rank per step (default \(defaultPerRankBatch)).", check: count(atLeast: 1),
               overrides: "global-batch"),
        .value("global-batch", \.globalBatch, "n", "Samples per step over all ranks, in shards of --shard-size; a rank's slice is a block of whole shards.",
               check: count(atLeast: 1), overrides: "per-rank-batch"),

        .value("bn", \.bn, "mode", "Batch-norm statistics: sync (the whole global batch), group:G (each G consecutive shards; group:1 is "
               + "ghost batch norm), local (each rank's slice: changes with the world size), or none (no batch norm).",
               resume: .mustMatch, vary: true),
        .value("shard-size", \.shardSize, "m", "Samples per virtual shard, the unit of every sum over samples: runs with the same shard size "
               + "give the same bits at any world size and thread count (default: the global batch over ranks x threads, or a resumed "
               + "checkpoint's).", check: count(atLeast: 1), vary: true),
        .value("init", \.initializer, "name", "Weight initializer for the whole model (default: PyTorch's per layer).", check: { name, v in
            do { _ = try Initializer(parsing: v) } catch { throw ConfigError("--\(name): \(error)") }
        }),
        .value("optimizer", \.optimizer, "name", "sgd, adam or adamw.", check: { _, v in
            if !["sgd", "adam", "adamw"].contains(v) { throw ConfigError("--optimizer must be sgd, adam or adamw; got '\(v)'") }
        }, resume: .mustMatch),
        .value("lr", \.lr, "x", "Base learning rate.", check: positive, resume: .warns),
        .value("lr-reference-batch", \.lrReferenceBatch, "b",
               "Scale the learning rate to the global batch: lr x global batch / B (the linear scaling rule).", check: count(atLeast: 1),
               resume: .warns),
        .value("momentum", \.momentum, "x", "SGD momentum.", check: fraction, resume: .warns),
        .toggle("nesterov", \.nesterov, sets: true, "Nesterov momentum (SGD).", resume: .warns),
        .value("weight-decay", \.weightDecay, "x", "L2 weight decay on weights, never biases or batch-norm parameters.", check: { name, v in
            if !(v >= 0 && v.isFinite) { throw ConfigError("--\(name) must be a finite number >= 0, got \(v)") }
            if !Double(Float(v)).isFinite { throw ConfigError("--\(name) \(v) is outside Float32's range (up to \(Float.greatestFiniteMagnitude))") }
        }, resume: .warns),
        .value("schedule", \.schedule, "s", "constant, step:EVERY:GAMMA or cosine.", check: { name, v in
            // The spelling alone; the run's length is known once the data is.
            do { _ = try LRSchedule(parsing: v, totalSteps: 1) } catch { throw ConfigError("--\(name): \(error)") }
        }),
        .value("warmup-steps", \.warmupSteps, "n", "Linear warm-up steps (default: 5% of the run's steps, at most \(maxDefaultWarmupSteps)).",
               check: count(atLeast: 0)),
        .value("clip-norm", \.clipNorm, "x", "Clip the global gradient L2 norm to X; off: no clipping by norm.", check: positive, none: "off",
               resume: .warns),
        .toggle("no-clip-norm", \.clipNormOff, sets: true, "Turn off clipping by norm (as --clip-norm off).", inFiles: false,
                conflicts: "clip-norm"),
        .value("clip-value", \.clipValue, "x", "Clamp every gradient element to [-X, X].", check: positive, resume: .warns),
        .value("dropout", \.dropout, "p", "Dropout rate for every dropout layer (overrides the model's).", check: fraction, resume: .warns),
        .value("label-smoothing", \.labelSmoothing, "x", "Label smoothing of the cross-entropy.", check: fraction, resume: .warns),
        .value("seed", \.seed, "n", "Seed of initialization, shuffling and dropout.", resume: .mustMatch),
        .toggle("no-shuffle", \.shuffle, sets: false, "Global batch k is samples kB to kB+B-1.", key: "shuffle", resume: .mustMatch),

        .value("run-dir", \.runDir, "dir", "Folder for config, metrics and checkpoints (default: a new runs/YYYYMMDD-HHMMSS, which "
               + "runs/latest then names; with --resume auto, the one runs/latest names).", vary: false),
        .value("eval-every", \.evalEvery, "n", "Evaluate every N epochs; 0 turns evaluation off.", check: count(atLeast: 0)),
        .value("log-every", \.logEvery, "n", "Print a line every N steps when not on a terminal.", check: count(atLeast: 1)),
        .value("init-from", \.initFrom, "file", "Start from these weights (safetensors; a PyTorch state_dict of the same nn.Sequential loads)."),
        .value("check-replicas", \.checkReplicas, "k", "Also compare a parameter hash across ranks every K steps, besides before each "
               + "checkpoint and at the end; stop on divergence (0: no extra checks).", check: count(atLeast: 0)),
        .value("max-skipped-steps", \.maxSkippedSteps, "n", "Stop after this many consecutive steps with non-finite gradients.",
               check: count(atLeast: 1)),
        .value("checkpoint-every", \.checkpointEvery, "k", "Write a checkpoint every K steps; 0: only at epoch ends and at the end.",
               check: count(atLeast: 0)),
        .value("keep", \.keep, "n", "Keep the newest N checkpoints.", check: count(atLeast: 1)),
        .value("resume", \.resume, "auto|file", "auto (newest valid checkpoint in the run dir, or a fresh start) or a checkpoint file.",
               vary: false),
        .toggle("allow-batch-change", \.allowBatchChange, sets: true, "Allow resuming with another global batch than the checkpoint's."),
        .value("collective-timeout", \.collectiveTimeout, "s", "End the job when one training step takes longer than this many seconds: "
               + "a rank or host is lost or stuck (0: no limit). Allow for evaluation and checkpoints.", check: { name, v in
            if !(v >= 0 && v.isFinite) { throw ConfigError("--\(name) must be 0 (off) or a number of seconds, got \(v)") }
        }),
        .value("threads", \.threads, "n", "Compute threads per rank, each training its own part of the rank's slice (default: "
               + "OPENBLAS_NUM_THREADS or OMP_NUM_THREADS if set, else the node's cores divided among its ranks).",
               check: { _, v in try checkThreads(v) }),
    ]

    /// The option named by a flag (without dashes) or, for those in files, by its key in
    /// either spelling.
    public static func option(named name: String) -> TrainOption? {
        options.first { $0.name == name || ($0.key.map { $0 == name || $0.replacingOccurrences(of: "_", with: "-") == name } ?? false) }
    }

    /// A count: between `minimum` and `maxCount`.
    static func count(atLeast minimum: Int) -> @Sendable (String, Int) throws -> Void {
        { name, value in
            if !(minimum...maxCount).contains(value) { throw ConfigError("--\(name) must be between \(minimum) and \(maxCount), got \(value)") }
        }
    }

    // The optimizer, clipping, dropout and the loss compute in Float32: a value must be in
    // range there too (1e39 is infinite, 1e-46 is 0, 0.99999999999 is 1).
    @Sendable static func positive(_ name: String, _ value: Double) throws {
        guard value > 0 && value.isFinite else { throw ConfigError("--\(name) must be a positive number, got \(value)") }
        let single = Double(Float(value))
        guard single > 0 && single.isFinite else {
            throw ConfigError("--\(name) \(value) is outside Float32's range (\(Float.leastNonzeroMagnitude) to \(Float.greatestFiniteMagnitude))")
        }
    }

    @Sendable static func fraction(_ name: String, _ value: Double) throws {
        guard value >= 0 && value < 1 else { throw ConfigError("--\(name) must be in [0, 1), got \(value)") }
        guard Double(Float(value)) < 1 else { throw ConfigError("--\(name) \(value) is 1 in Float32; it must be below 1") }
    }

    /// `--no-clip-norm` as a field, so that the table sets it like any other switch.
    var clipNormOff: Bool {
        get { clipNorm == nil }
        set { if newValue { clipNorm = nil } }
    }
}

/// One training option (see `TrainConfig.options`).
public struct TrainOption: @unchecked Sendable {  // immutable; its closures capture key paths and constants only
    /// Whether a resumed run must use the checkpoint's value (`mustMatch`: what decides the
    /// weights' shapes, the optimizer state or the data order), may change it with a warning
    /// (`warns`: what changes the optimization from the resumed step on, such as the learning
    /// rate, which a user may well mean to change, but should not change unawares), or may
    /// change it freely (`free`: logging, checkpoints, the length of the run).
    public enum Resume: Sendable { case free, warns, mustMatch }

    /// The flag without its dashes (`per-rank-batch`).
    public let name: String
    /// The key in config.json and checkpoints (`per_rank_batch`; config files may also spell
    /// it as the flag does); nil: a flag only.
    public let key: String?
    /// The value's name in help (`n`); nil: a switch, which takes no value.
    public let valueName: String?
    public let help: String
    public let resume: Resume
    /// `compare --vary` takes it (a switch never: it has one value).
    public let varies: Bool
    /// Another option whose value (from a config file) this one's flag replaces.
    public let overrides: String?
    /// Another option's flag that may not be given with this one.
    public let conflicts: String?
    /// "(default X)" for help, when the default is a value.
    public let defaultText: String?

    /// Sets the value from a flag's or `--vary`'s text; the error says what was expected.
    let parse: (inout TrainConfig, String) throws -> Void
    /// The value as text, for messages and for the ranks' agreement.
    let text: (TrainConfig) -> String
    /// A switch is given (false for options with a value).
    let isSet: (TrainConfig) -> Bool
    /// Checks the value on its own, naming the flag.
    let check: (TrainConfig) throws -> Void
    /// Back to the default (what `overrides` does to the other option).
    let reset: (inout TrainConfig) -> Void
    let decode: (inout TrainConfig, TrainConfig.SpelledContainer) throws -> Void
    let encode: (TrainConfig, inout KeyedEncodingContainer<TrainConfig.FileKey>) throws -> Void

    /// An option with a value; `none` spells nil (only for optional fields).
    static func value<T: OptionValue>(_ name: String, _ field: WritableKeyPath<TrainConfig, T>, _ valueName: String, _ help: String,
                                      check: ((String, T) throws -> Void)? = nil, resume: Resume = .free, vary: Bool = true,
                                      overrides: String? = nil) -> TrainOption {
        let key = name.replacingOccurrences(of: "-", with: "_")
        return TrainOption(
            name: name, key: key, valueName: valueName, help: help, resume: resume, varies: vary, overrides: overrides, conflicts: nil,
            defaultText: TrainConfig()[keyPath: field].optionText,
            parse: { config, text in
                guard let value = T(optionText: text) else { throw ConfigError("--\(name): '\(text)' is not \(T.expected)") }
                config[keyPath: field] = value
            },
            text: { $0[keyPath: field].optionText },
            isSet: { _ in false },
            check: { config in
                let value = config[keyPath: field]
                if let text = value as? String, text.isEmpty { throw ConfigError("--\(name) must not be empty") }
                try check?(name, value)
            },
            reset: { $0[keyPath: field] = TrainConfig()[keyPath: field] },
            decode: { config, c in
                if let value = try c.decodeIfPresent(T.self, forKey: key) { config[keyPath: field] = value }
            },
            encode: { config, c in try c.encode(config[keyPath: field], forKey: .init(stringValue: key)) })
    }

    static func value<T: OptionValue>(_ name: String, _ field: WritableKeyPath<TrainConfig, T?>, _ valueName: String, _ help: String,
                                      check: ((String, T) throws -> Void)? = nil, none: String? = nil, resume: Resume = .free,
                                      vary: Bool = true, overrides: String? = nil) -> TrainOption {
        let key = name.replacingOccurrences(of: "-", with: "_")
        return TrainOption(
            name: name, key: key, valueName: none.map { "\(valueName)|\($0)" } ?? valueName, help: help, resume: resume, varies: vary,
            overrides: overrides, conflicts: nil, defaultText: TrainConfig()[keyPath: field]?.optionText,
            parse: { config, text in
                if let none, text == none { config[keyPath: field] = nil; return }
                guard let value = T(optionText: text) else {
                    throw ConfigError("--\(name): '\(text)' is not \(T.expected)\(none.map { " or '\($0)'" } ?? "")")
                }
                config[keyPath: field] = value
            },
            text: { $0[keyPath: field]?.optionText ?? none ?? "none" },
            isSet: { _ in false },
            check: { config in
                guard let value = config[keyPath: field] else { return }
                if let text = value as? String, text.isEmpty { throw ConfigError("--\(name) must not be empty") }
                try check?(name, value)
            },
            reset: { $0[keyPath: field] = TrainConfig()[keyPath: field] },
            // Present and null is nil (`clip_norm: null` is no clipping); absent keeps the
            // default. The word for none too, and where that word is off, false (how YAML
            // reads `off`).
            decode: { config, c in
                guard c.contains(key) else { return }
                do {
                    config[keyPath: field] = try c.decodeIfPresent(T.self, forKey: key)
                } catch {
                    guard let none, (try? c.decodeIfPresent(String.self, forKey: key)) == none
                                    || (none == "off" && (try? c.decodeIfPresent(Bool.self, forKey: key)) == false) else { throw error }
                    config[keyPath: field] = nil
                }
            },
            encode: { config, c in
                if let value = config[keyPath: field] { try c.encode(value, forKey: .init(stringValue: key)) }
                else { try c.encodeNil(forKey: .init(stringValue: key)) }
            })
    }

    /// A switch: given, it sets `field` to `value`; in files it is `key` (true or false).
    /// `key`: its name in files when not the flag's; `inFiles` false: a flag only.
    static func toggle(_ name: String, _ field: WritableKeyPath<TrainConfig, Bool>, sets value: Bool, _ help: String,
                       key: String? = nil, inFiles: Bool = true, resume: Resume = .free, conflicts: String? = nil) -> TrainOption {
        let fileKey: String? = inFiles ? key ?? name.replacingOccurrences(of: "-", with: "_") : nil
        return TrainOption(
            name: name, key: fileKey, valueName: nil, help: help, resume: resume, varies: false, overrides: nil, conflicts: conflicts,
            defaultText: nil,
            parse: { config, _ in config[keyPath: field] = value },
            text: { String($0[keyPath: field]) },
            isSet: { $0[keyPath: field] == value },
            check: { _ in },
            reset: { $0[keyPath: field] = TrainConfig()[keyPath: field] },
            decode: { config, c in
                if let fileKey, let stored = try c.decodeIfPresent(Bool.self, forKey: fileKey) { config[keyPath: field] = stored }
            },
            encode: { config, c in
                if let fileKey { try c.encode(config[keyPath: field], forKey: .init(stringValue: fileKey)) }
            })
    }

    /// "--bn sync", or for a switch "--no-shuffle" or "no --no-shuffle": the option as a
    /// flag, for messages.
    public func describe(_ config: TrainConfig) -> String {
        guard valueName == nil else { return "--\(name) \(text(config))" }
        return isSet(config) ? "--\(name)" : "no --\(name)"
    }

    /// What a resume changes of a `warns` option, "--lr 0.1 -> 0.05"; nil when it agrees.
    public func resumeChange(saved: TrainConfig, now config: TrainConfig) -> String? {
        guard resume == .warns, text(saved) != text(config) else { return nil }
        guard valueName == nil else { return "--\(name) \(text(saved)) -> \(text(config))" }
        return isSet(config) ? "--\(name) now on" : "--\(name) now off"
    }

    /// How `saved` and `config` differ in this option, "--lr 0.1, now 0.05"; nil when they agree.
    public func resumeMismatchText(saved: TrainConfig, now config: TrainConfig) -> String? {
        guard text(saved) != text(config) else { return nil }
        guard valueName == nil else { return "\(describe(saved)), now \(text(config))" }
        return isSet(saved) ? "--\(name), now without" : "no --\(name), now with it"
    }

    /// Why a resume may not continue `saved` with `config`; nil when this option agrees.
    public func resumeMismatch(saved: TrainConfig, now config: TrainConfig) -> String? {
        guard resume == .mustMatch, text(saved) != text(config) else { return nil }
        guard valueName == nil else { return "was trained with \(describe(saved)), this run uses \(text(config))" }
        return isSet(saved) ? "was trained with --\(name), this run without it" : "was trained without --\(name), this run with it"
    }
}

/// A value a training option holds: read from a flag's text, from files (Codable), and
/// written back as text for messages.
public protocol OptionValue: Codable, Equatable, Sendable {
    init?(optionText: String)
    var optionText: String { get }
    /// What a value must be, for errors: "an integer".
    static var expected: String { get }
}

extension Int: OptionValue {
    public init?(optionText: String) { self.init(optionText) }
    public var optionText: String { String(self) }
    public static var expected: String { "an integer" }
}

extension UInt64: OptionValue {
    public init?(optionText: String) { self.init(optionText) }
    public var optionText: String { String(self) }
    public static var expected: String { "a non-negative integer" }
}

extension Double: OptionValue {
    public init?(optionText: String) { self.init(optionText) }
    public var optionText: String { String(self) }
    public static var expected: String { "a number" }
}

extension String: OptionValue {
    public init?(optionText: String) { self = optionText }
    public var optionText: String { self }
    public static var expected: String { "a string" }
}

extension TrainConfig.BNMode: OptionValue {
    public init?(optionText: String) { self.init(rawValue: optionText) }
    public var optionText: String { rawValue }
    public static var expected: String { "one of " + names }
}
