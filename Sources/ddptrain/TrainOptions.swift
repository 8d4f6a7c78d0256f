import ArgumentParser
import DDPComm
import DDPTrain
import Foundation

/// The training options, shared by `train`, `compare` and `bench`: `--config` and the flags
/// of the option table (TrainConfig.options), which TrainFlags reads. Unset flags take the
/// config file's value, then the default.
struct TrainOptions: ParsableArguments {
    @Option(help: "YAML or JSON file with the same keys as the training options; flags override it.")
    var config: String?

    @Argument(parsing: .allUnrecognized, help: ArgumentHelp("Training options, listed below.", valueName: "training-option"))
    var trainingArguments: [String] = []

    /// The training options' help, for each command's discussion.
    static let help = "TRAINING OPTIONS:\n" + TrainFlags.help()

    /// The flags given; a flag that is not one (or lacks its value) is a usage error.
    func flags() throws -> TrainFlags {
        do { return try TrainFlags(parsing: trainingArguments) } catch let error as ConfigError { throw ValidationError(error.message) }
    }

    /// Defaults, then the config file, then the flags given. Reads the config file: only
    /// once MPI runs, through `resolve(in:)`.
    func resolve() throws -> TrainConfig {
        let c = try flags().apply(to: try config.map { try TrainConfig.load(file: $0) } ?? TrainConfig())
        try c.validate()
        return c
    }

    /// The resolved configuration, agreed on by every rank: a config file that one rank
    /// cannot read or parse ends the job on every rank, naming the rank and the file (I5).
    func resolve(in world: Communicator) throws -> TrainConfig {
        let config = try agreeOnSuccess(world) { try resolve() }
        try agreeOnSettings(world, what: "the configuration", config.settings)
        return config
    }

    /// The command line alone, before MPI starts (a usage error, exit 64, on every rank
    /// alike): everything when there is no config file; with one, each flag's value on its
    /// own, as the file is read once MPI runs (a rank that fails to read it before then
    /// would leave the others waiting).
    func validate() throws {
        do {
            let flags = try flags().apply(to: TrainConfig())
            if config == nil { try flags.validate() } else { try flags.validateValues() }
        } catch let error as ConfigError {
            throw ValidationError(error.message)
        }
    }
}
