import ArgumentParser
import DDPComm
import DDPTrain
import Foundation

/// The training options, shared by `train`, `compare` and `bench`. Every option is optional
/// here: unset flags take the `--config` file's value, then the default (TrainConfig).
/// Numbers are parsed `.unconditional`ly, so that `--lr -1` reaches validation (and says
/// what is wrong with -1) instead of being taken for a flag.
struct TrainOptions: ParsableArguments {
    @Option(help: "YAML or JSON file with the same keys as these options; flags override it.")
    var config: String?

    @Option(help: "fashion-mnist, mnist, cifar10 or synthetic (default fashion-mnist).")
    var dataset: String?
    @Option(help: "Folder with the data files (default for fashion-mnist: /usr/share/datasets/fashion-mnist).")
    var dataDir: String?
    @Option(parsing: .unconditional, help: "Use only the first N training samples.")
    var trainSamples: Int?
    @Option(parsing: .unconditional, help: "Samples of the synthetic dataset (default 2048).")
    var syntheticSamples: Int?
    @Option(help: "A preset (mlp, fmnist-cnn, lenet5, resnet8) or a YAML/JSON model file (default fmnist-cnn).")
    var model: String?

    @Option(parsing: .unconditional, help: "Epochs to train (default 10).")
    var epochs: Int?
    @Option(parsing: .unconditional, help: "Steps to train; overrides --epochs.")
    var steps: Int?
    @Option(parsing: .unconditional, help: "Samples per rank per step (default 32).")
    var perRankBatch: Int?
    @Option(parsing: .unconditional, help: "Samples per step over all ranks; slices differ by at most one when it does not divide.")
    var globalBatch: Int?

    @Option(help: "Batch-norm statistics: sync (across ranks), local (per rank), or none (no batch norm) (default sync).")
    var bn: TrainConfig.BNMode?
    @Option(name: .customLong("init"), help: "Weight initializer for the whole model (default: PyTorch's per layer).")
    var initializer: String?
    @Option(help: "sgd, adam or adamw (default sgd).")
    var optimizer: String?
    @Option(parsing: .unconditional, help: "Base learning rate (default 0.1).")
    var lr: Double?
    @Option(parsing: .unconditional, help: "Scale the learning rate to the global batch: lr x global batch / B (the linear scaling rule).")
    var lrReferenceBatch: Int?
    @Option(parsing: .unconditional, help: "SGD momentum (default 0.9).")
    var momentum: Double?
    @Flag(help: "Nesterov momentum (SGD).")
    var nesterov = false
    @Option(parsing: .unconditional, help: "L2 weight decay on weights, never biases or batch-norm parameters (default 5e-4).")
    var weightDecay: Double?
    @Option(help: "constant, step:EVERY:GAMMA or cosine (default cosine).")
    var schedule: String?
    @Option(parsing: .unconditional, help: "Linear warm-up steps (default: 5% of the run's steps, at most 200).")
    var warmupSteps: Int?
    @Option(parsing: .unconditional, help: "Clip the global gradient L2 norm to X (default 5).")
    var clipNorm: Double?
    @Flag(help: "Turn off clipping by norm.")
    var noClipNorm = false
    @Option(parsing: .unconditional, help: "Clamp every gradient element to [-X, X].")
    var clipValue: Double?
    @Option(parsing: .unconditional, help: "Dropout rate for every dropout layer (overrides the model's).")
    var dropout: Double?
    @Option(parsing: .unconditional, help: "Label smoothing of the cross-entropy (default 0).")
    var labelSmoothing: Double?
    @Option(parsing: .unconditional, help: "Seed of initialization, shuffling and dropout (default 0).")
    var seed: UInt64?
    @Flag(help: "Global batch k is samples kB to kB+B-1.")
    var noShuffle = false

    @Option(help: "Folder for config, metrics and checkpoints (default: a new runs/YYYYMMDD-HHMMSS, which runs/latest then names; with --resume auto, the one runs/latest names).")
    var runDir: String?
    @Option(parsing: .unconditional, help: "Evaluate every N epochs; 0 turns evaluation off (default 1).")
    var evalEvery: Int?
    @Option(parsing: .unconditional, help: "Print a line every N steps when not on a terminal (default 50).")
    var logEvery: Int?
    @Option(help: "Start from these weights (safetensors; a PyTorch state_dict of the same nn.Sequential loads).")
    var initFrom: String?
    @Option(parsing: .unconditional, help: "Also compare a parameter hash across ranks every K steps, besides before each checkpoint and at the end; stop on divergence (default 0: no extra checks).")
    var checkReplicas: Int?
    @Option(parsing: .unconditional, help: "Stop after this many consecutive steps with non-finite gradients (default 10).")
    var maxSkippedSteps: Int?
    @Option(parsing: .unconditional, help: "Write a checkpoint every K steps; 0: only at epoch ends and at the end (default 0).")
    var checkpointEvery: Int?
    @Option(parsing: .unconditional, help: "Keep the newest N checkpoints (default 3).")
    var keep: Int?
    @Option(help: "auto (newest valid checkpoint in the run dir, or a fresh start) or a checkpoint file.")
    var resume: String?
    @Flag(help: "Allow resuming with another global batch than the checkpoint's.")
    var allowBatchChange = false
    @Option(parsing: .unconditional, help: "End the job when one training step takes longer than this many seconds: a rank or host is lost or stuck (default 0: no limit). Allow for evaluation and checkpoints.")
    var collectiveTimeout: Double?
    @Option(parsing: .unconditional, help: "Compute threads per rank, each training its own part of the rank's slice (default: OPENBLAS_NUM_THREADS or OMP_NUM_THREADS if set, else the node's cores divided among its ranks).")
    var threads: Int?

    /// Defaults, then the config file, then the flags given. Reads the config file: only
    /// once MPI runs, through `resolve(in:)`.
    func resolve() throws -> TrainConfig {
        let c = applyFlags(to: try config.map { try TrainConfig.load(file: $0) } ?? TrainConfig())
        try c.validate()
        return c
    }

    /// The resolved configuration, agreed on by every rank: a config file that one rank
    /// cannot read or parse ends the job on every rank, naming the rank and the file (I5).
    func resolve(in world: Communicator) throws -> TrainConfig {
        let config = try agreeOnSuccess(world) { try resolve() }
        let settings = (try? JSONSerialization.jsonObject(with: Data(config.json.utf8)) as? [String: Any]) ?? [:]
        try agreeOnSettings(world, what: "the configuration", settings.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") })
        return config
    }

    /// `base` with the flags given on top.
    func applyFlags(to base: TrainConfig) -> TrainConfig {
        var c = base
        if let v = dataset { c.dataset = v }
        if let v = dataDir { c.dataDir = v }
        if let v = trainSamples { c.trainSamples = v }
        if let v = syntheticSamples { c.syntheticSamples = v }
        if let v = model { c.model = v }
        if let v = epochs { c.epochs = v }
        if let v = steps { c.steps = v }
        if let v = perRankBatch { c.perRankBatch = v; c.globalBatch = nil }
        if let v = globalBatch { c.globalBatch = v; c.perRankBatch = perRankBatch }
        if let v = bn { c.bn = v }
        if let v = initializer { c.initializer = v }
        if let v = optimizer { c.optimizer = v }
        if let v = lr { c.lr = v }
        if let v = lrReferenceBatch { c.lrReferenceBatch = v }
        if let v = momentum { c.momentum = v }
        if nesterov { c.nesterov = true }
        if let v = weightDecay { c.weightDecay = v }
        if let v = schedule { c.schedule = v }
        if let v = warmupSteps { c.warmupSteps = v }
        if let v = clipNorm { c.clipNorm = v }
        if noClipNorm { c.clipNorm = nil }
        if let v = clipValue { c.clipValue = v }
        if let v = dropout { c.dropout = v }
        if let v = labelSmoothing { c.labelSmoothing = v }
        if let v = seed { c.seed = v }
        if noShuffle { c.shuffle = false }
        if let v = runDir { c.runDir = v }
        if let v = evalEvery { c.evalEvery = v }
        if let v = logEvery { c.logEvery = v }
        if let v = initFrom { c.initFrom = v }
        if let v = checkReplicas { c.checkReplicas = v }
        if let v = maxSkippedSteps { c.maxSkippedSteps = v }
        if let v = checkpointEvery { c.checkpointEvery = v }
        if let v = keep { c.keep = v }
        if let v = resume { c.resume = v }
        if allowBatchChange { c.allowBatchChange = true }
        if let v = collectiveTimeout { c.collectiveTimeout = v }
        if let v = threads { c.threads = v }
        return c
    }

    /// The command line alone, before MPI starts (a usage error, exit 64, on every rank
    /// alike): everything when there is no config file; with one, each flag's value on its
    /// own, as the file is read once MPI runs (a rank that fails to read it before then
    /// would leave the others waiting).
    func validate() throws {
        if clipNorm != nil && noClipNorm { throw ValidationError("give --clip-norm or --no-clip-norm, not both") }
        let flags = applyFlags(to: TrainConfig())
        do {
            if config == nil { try flags.validate() } else { try flags.validateValues() }
        } catch let error as ConfigError {
            throw ValidationError(error.message)
        }
    }
}

extension TrainConfig.BNMode: ExpressibleByArgument {}
