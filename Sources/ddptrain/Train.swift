import ArgumentParser
import DDPComm
import DDPTrain
import Foundation

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a model data-parallel: run under `mpirun -n N`.", discussion: TrainOptions.help)

    @OptionGroup var options: TrainOptions

    @Flag(help: "Print a machine-readable summary on stdout (human-readable output goes to stderr).")
    var json = false

    func run() throws {
        // SIGTERM, SIGINT, SIGUSR1: stop at the next step boundary with a checkpoint (exit 79);
        // installed before MPI starts so that a signal during start-up is a stop too.
        StopRequest.install(graceful: true, announce: launchRank == 0)
        try withWorld { world in
            if !StopRequest.isInstalled { StopRequest.install(graceful: true, announce: world.rank == 0) }
            let (config, created) = try DefaultRunDirectory.resolve(try options.resolve(in: world), world: world)
            // Data, model and options are checked on every rank before anything is written;
            // a failure there is an input error (exit 65) that a restart would repeat.
            let prepared: (Trainer, RunDirectory, RunLog)
            do {
                prepared = try inputPhase {
                    let trainer = try Trainer(config: config, world: world)
                    // Tests' faults and holds (DDPTRAIN_INJECT_*), from outside the loop.
                    trainer.hooks = FaultInjection.fromEnvironment(rank: world.rank, resumed: trainer.resumedFrom != nil)
                    let run = try RunDirectory.prepare(config: trainer.config, configJSON: trainer.resolvedConfigJSON, world: world, resumedAtStep: trainer.resumedFrom == nil ? nil : trainer.step,
                                                   resumedCheckpoint: trainer.resumedCheckpoint)
                    // Rank 0 opens metrics.jsonl and creates TensorBoard's file; every rank learns whether that worked.
                    let log = try agreeOnSuccess(world) {
                        try RunLog(rank: world.rank, logEvery: config.logEvery, json: json, metricsPath: run.metricsPath,
                                   tensorboardPath: run.tensorboardPath)
                    }
                    return (trainer, run, log)
                }
            } catch {
                DefaultRunDirectory.removeIfUnused(created, world: world)
                throw error
            }
            let (trainer, run, log) = prepared
            if world.rank == 0, let warning = DefaultRunDirectory.pointLatest(at: run.path) { log.warn(warning) }
            _ = try trainer.run(log: log, checkpointDirectory: run.checkpointsPath)
        }
    }
}
