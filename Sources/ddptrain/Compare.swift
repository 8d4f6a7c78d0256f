import ArgumentParser
import DDPComm
import DDPTrain
import DDPSystem
import Foundation

struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train every combination of --vary values in one job and report them side by side.",
        discussion: """
        Each variant starts from the same seed (the same initial weights where the model is the same) and sees the \
        same data order. Results go to RUN_DIR/report.md, RUN_DIR/report.html and the charts loss.svg, test-loss.svg, accuracy.svg \
        and lr.svg; with --seeds N (or --vary seed=...) variants that differ only in their seed are one row, mean ± \
        standard deviation; each \
        variant keeps its checkpoints and metrics in RUN_DIR/variants/<name>. With --resume auto a stopped compare \
        continues, keeping the variants already finished. Without --vary it compares bn=sync,local.

        """ + TrainOptions.help)

    @OptionGroup var options: TrainOptions

    @Option(help: "KEY=V1,V2,... (keys: \(Variation.keys.joined(separator: ", "))); repeat for a grid.")
    var vary: [String] = []

    @Option(help: "Train each variant N times, with seeds SEED, SEED+1, ...; the report gives mean ± standard deviation.")
    var seeds: Int?

    @Option(help: "Title of the report.")
    var title = "ddptrain compare"

    func validate() throws {
        if let resume = try options.flags().text(of: "resume"), resume != "auto" {
            throw ValidationError("compare takes --resume auto (each variant resumes from its own folder), not a file: '\(resume)'")
        }
        if let seeds, !(1...100).contains(seeds) { throw ValidationError("--seeds takes 1 to 100 runs per variant; got \(seeds)") }
        if seeds != nil, vary.contains(where: { $0.hasPrefix("seed=") }) {
            throw ValidationError("--seeds and --vary seed=... both set the seeds; give one of them")
        }
        do {
            // A config file is read once MPI runs (run()); without one the flags are the
            // whole configuration, and every variant can be checked here.
            if options.config == nil {
                let base = try options.resolve()
                _ = try makeVariants(base: base, variations: try variations(seed: base.seed))
            } else {
                _ = try variations(seed: 0)
            }
        } catch let error as ConfigError {
            throw ValidationError(error.message)
        }
    }

    /// The --vary flags (bn=sync,local without any), then the seeds from `seed` on as the
    /// innermost variation when --seeds is given.
    func variations(seed: UInt64) throws -> [Variation] {
        var seedList: [String] = []
        if let seeds {
            guard seed <= UInt64.max - UInt64(seeds - 1) else { throw ConfigError("--seeds \(seeds) from --seed \(seed) runs past the largest seed") }
            seedList = ["seed=" + (0..<UInt64(seeds)).map { String(seed + $0) }.joined(separator: ",")]
        }
        return try ((vary.isEmpty ? ["bn=sync,local"] : vary) + seedList).map { try Variation(parsing: $0) }
    }

    /// What a finished variant's config.json must agree on with this comparison's variant
    /// for its result to be kept: everything that changes what is trained and reported,
    /// not where it is written, how often it is logged or checkpointed, nor what a run
    /// resolves by itself (shard size, threads, warm-up).
    /// The batch options are compared as the global batch they give, and --warmup-steps only
    /// when given (config.json holds the warm-up a run resolved).
    static let keptVariantIgnores: Set<String> = ["run-dir", "resume", "shard-size", "threads", "warmup-steps", "log-every", "keep",
                                                  "checkpoint-every", "check-replicas", "collective-timeout", "data-dir",
                                                  "allow-batch-change", "max-skipped-steps", "no-clip-norm",
                                                  "per-rank-batch", "global-batch"]

    /// Refuses to keep a finished variant trained with other settings (another --model or
    /// --steps given with --resume auto): its numbers would stand in the report for a run
    /// that never happened. Compared as `train --resume` compares options.
    func checkKeptVariant(_ variant: Variant, worldSize: Int) throws {
        let path = variant.config.resolvedRunDir + "/config.json"
        guard let data = FileManager.default.contents(atPath: path),
              let saved = try? JSONDecoder().decode(TrainConfig.self, from: data) else {
            throw TrainingError("\(path): cannot read the configuration of finished variant \(variant.name); move the variant's folder "
                                + "away to train it again", exitCode: ExitStatus.inputError)
        }
        var differences = TrainConfig.options.filter { !Self.keptVariantIgnores.contains($0.name) }
            .compactMap { $0.resumeMismatchText(saved: saved, now: variant.config) }
        if let warmup = variant.config.warmupSteps, warmup != saved.warmupSteps {
            differences.append("--warmup-steps \(saved.warmupSteps.map(String.init) ?? "default"), now \(warmup)")
        }
        let resolved = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["resolved"] as? [String: Any]
        let globalBatch = variant.config.resolvedGlobalBatch(worldSize: worldSize)
        if let savedBatch = resolved?["global_batch"] as? Int, savedBatch != globalBatch {
            differences.append("global batch \(savedBatch), now \(globalBatch)")
        }
        guard differences.isEmpty else {
            throw TrainingError("variant \(variant.name) finished earlier with other settings (\(differences.joined(separator: "; "))); "
                                + "--resume auto keeps only results of the same comparison: use another --run-dir", exitCode: ExitStatus.inputError)
        }
    }

    func run() throws {
        let command = shellQuoted(["ddptrain"] + CommandLine.arguments.dropFirst())
        // summary.json in snake_case, or the camelCase of earlier versions.
        let decoder = JSONDecoder.ddptrain()
        try withWorld { world in
            let (base, created) = try DefaultRunDirectory.resolve(try options.resolve(in: world), world: world)
            let runDir = base.resolvedRunDir
            let variants: [Variant]
            do {
                variants = try agreeOnSuccess(world) { try makeVariants(base: base, variations: try variations(seed: base.seed)) }
                try RunDirectory.prepareComparison(path: runDir, resuming: base.resume != nil, world: world)
            } catch {
                DefaultRunDirectory.removeIfUnused(created, world: world)
                throw error
            }
            if world.rank == 0 {
                print("compare: run dir \(runDir)")
                if let warning = DefaultRunDirectory.pointLatest(at: runDir) {
                    writeToStandardError("warning: \(warning)\n")
                }
            }
            var results: [VariantResult] = []
            for (i, variant) in variants.enumerated() {
                try agreeOnSuccess(world) { try variant.checkFolder() }
                let summaryPath = variant.config.resolvedRunDir + "/summary.json"
                // Rank 0 decides whether the variant is finished, and everyone follows it:
                // ranks that looked for themselves might see a shared folder differently.
                let finished = try decideOnRankZero(world) { () throws -> String in
                    guard base.resume != nil, let data = FileManager.default.contents(atPath: summaryPath),
                          (try? decoder.decode(VariantResult.self, from: data)) != nil else { return "" }
                    try checkKeptVariant(variant, worldSize: world.size)
                    return String(decoding: data, as: UTF8.self)
                }
                if !finished.isEmpty, let done = try? decoder.decode(VariantResult.self, from: Data(finished.utf8)) {
                    if world.rank == 0 { print("compare: [\(i + 1)/\(variants.count)] \(variant.name): finished earlier, kept") }
                    results.append(done)
                    continue
                }
                if world.rank == 0 { print("compare: [\(i + 1)/\(variants.count)] \(variant.name)") }
                let trainer = try Trainer(config: variant.config, world: world)
                trainer.hooks = FaultInjection.fromEnvironment(rank: world.rank, resumed: trainer.resumedFrom != nil)
                let run = try RunDirectory.prepare(config: trainer.config, configJSON: trainer.resolvedConfigJSON, world: world, resumedAtStep: trainer.resumedFrom == nil ? nil : trainer.step,
                                                   resumedCheckpoint: trainer.resumedCheckpoint)
                // When each attempt started, so that a resumed variant reports its whole wall time.
                let attemptStarts = try agreeOnSuccess(world) {
                    world.rank == 0 ? try VariantResult.recordAttempt(runDir: variant.config.resolvedRunDir, resumed: trainer.resumedFrom != nil) : []
                }
                // Rank 0 opens metrics.jsonl and creates TensorBoard's file; every rank learns whether that worked.
                let log = try agreeOnSuccess(world) {
                    try RunLog(rank: world.rank, logEvery: variant.config.logEvery, json: false, metricsPath: run.metricsPath,
                               tensorboardPath: run.tensorboardPath)
                }
                let startStep = trainer.step
                var summary: TrainSummary
                do {
                    summary = try trainer.run(log: log, checkpointDirectory: run.checkpointsPath)
                } catch let failure as CollectiveFailure where failure.exitCode == ExitStatus.diverged {
                    // Known on every rank at the same step: the comparison goes on without it.
                    if world.rank == 0 { writeToStandardError("ddptrain: variant \(variant.name): \(failure.message); the comparison goes on\n") }
                    let result = try VariantResult.diverged(name: variant.name, group: variant.group, trainer: trainer,
                                                            metricsPath: run.metricsPath, runDir: variant.config.resolvedRunDir)
                    try agreeOnSuccess(world) {
                        if world.rank == 0 { try writeAtomically(String(decoding: try JSONEncoder.ddptrain().encode(result), as: UTF8.self), to: summaryPath) }
                    }
                    results.append(result)
                    continue
                }
                let records = try VariantResult.records(metricsPath: run.metricsPath)
                summary = VariantResult.completing(summary, trainedNoStep: startStep >= summary.steps, steps: records.steps,
                                                   evaluations: records.evaluations)
                let rowTimes = records.steps.compactMap(\.time) + records.evaluations.map(\.time)
                let result = VariantResult(name: variant.name, summary: summary, losses: records.steps, group: variant.group,
                                           evaluations: records.evaluations,
                                           totalWallSeconds: VariantResult.totalWallSeconds(attemptStarts: attemptStarts, lastAttemptSeconds: summary.wallSeconds,
                                                                                            rowTimes: rowTimes))
                if world.rank == 0 {
                    try writeAtomically(String(decoding: try JSONEncoder.ddptrain().encode(result), as: UTF8.self), to: summaryPath)
                }
                results.append(result)
            }
            let report = ComparisonReport(title: title, command: command, results: results, worldSize: world.size)
            try agreeOnSuccess(world) { if world.rank == 0 { try report.write(to: runDir) } }
            if world.rank == 0 {
                print("\n" + report.textTable, terminator: "")
                print("report: \(runDir)/report.md, \(runDir)/report.html")
            }
            // The report is written; the status still says that a variant diverged (70).
            let diverged = results.filter(\.didDiverge).map(\.name)
            if !diverged.isEmpty {
                throw CollectiveFailure(message: "compare: \(diverged.joined(separator: ", ")) diverged (the report says so)", exitCode: ExitStatus.diverged)
            }
        }
    }
}
