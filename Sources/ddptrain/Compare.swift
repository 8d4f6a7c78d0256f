import ArgumentParser
import DDPComm
import DDPTrain
import Foundation

struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train every combination of --vary values in one job and report them side by side.",
        discussion: """
        Each variant starts from the same seed (the same initial weights where the model is the same) and sees the \
        same data order. Results go to RUN_DIR/report.md, RUN_DIR/report.html, loss.svg and accuracy.svg; each \
        variant keeps its checkpoints and metrics in RUN_DIR/variants/<name>. With --resume auto a stopped compare \
        continues, keeping the variants already finished. Without --vary it compares bn=sync,local.
        """)

    @OptionGroup var options: TrainOptions

    @Option(help: "KEY=V1,V2,... (keys: \(Variation.keys.joined(separator: ", "))); repeat for a grid.")
    var vary: [String] = []

    @Option(help: "Title of the report.")
    var title = "ddptrain compare"

    func validate() throws {
        if let resume = options.resume, resume != "auto" {
            throw ValidationError("compare takes --resume auto (each variant resumes from its own folder), not a file: '\(resume)'")
        }
        do {
            let variations = try variations()
            // A config file is read once MPI runs (run()); without one the flags are the
            // whole configuration, and every variant can be checked here.
            if options.config == nil { _ = try makeVariants(base: try options.resolve(), variations: variations) }
        } catch let error as ConfigError {
            throw ValidationError(error.message)
        }
    }

    func variations() throws -> [Variation] {
        try (vary.isEmpty ? ["bn=sync,local"] : vary).map { try Variation(parsing: $0) }
    }

    func run() throws {
        let command = "ddptrain " + CommandLine.arguments.dropFirst().joined(separator: " ")
        // summary.json in snake_case, or the camelCase of earlier versions.
        let decoder = JSONDecoder.ddptrain()
        try withWorld { world in
            let (base, created) = try DefaultRunDirectory.resolve(try options.resolve(in: world), world: world)
            let runDir = base.resolvedRunDir
            let variants: [Variant]
            do {
                variants = try agreeOnSuccess(world) { try makeVariants(base: base, variations: try variations()) }
                try RunDirectory.prepareComparison(path: runDir, resuming: base.resume != nil, world: world)
            } catch {
                DefaultRunDirectory.removeIfUnused(created, world: world)
                throw error
            }
            if world.rank == 0 {
                print("compare: run dir \(runDir)")
                if let warning = DefaultRunDirectory.pointLatest(at: runDir) {
                    FileHandle.standardError.write("warning: \(warning)\n")
                }
            }
            var results: [VariantResult] = []
            for (i, variant) in variants.enumerated() {
                let summaryPath = variant.config.resolvedRunDir + "/summary.json"
                // Rank 0 decides whether the variant is finished, and everyone follows it:
                // ranks that looked for themselves might see a shared folder differently.
                var finished = ""
                if base.resume != nil, world.rank == 0, let data = FileManager.default.contents(atPath: summaryPath),
                   (try? decoder.decode(VariantResult.self, from: data)) != nil {
                    finished = String(decoding: data, as: UTF8.self)
                }
                finished = try world.broadcast(string: finished, root: 0)
                if !finished.isEmpty, let done = try? decoder.decode(VariantResult.self, from: Data(finished.utf8)) {
                    if world.rank == 0 { print("compare: [\(i + 1)/\(variants.count)] \(variant.name): finished earlier, kept") }
                    results.append(done)
                    continue
                }
                if world.rank == 0 { print("compare: [\(i + 1)/\(variants.count)] \(variant.name)") }
                let trainer = try Trainer(config: variant.config, world: world)
                let run = try RunDirectory.prepare(config: trainer.config, configJSON: trainer.resolvedConfigJSON, world: world, resumedAtStep: trainer.resumedFrom == nil ? nil : trainer.step)
                // Rank 0 opens metrics.jsonl and creates TensorBoard's file; every rank learns whether that worked.
                let log = try agreeOnSuccess(world) {
                    try RunLog(rank: world.rank, logEvery: variant.config.logEvery, json: false, metricsPath: run.metricsPath,
                               tensorboardPath: run.tensorboardPath)
                }
                let summary = try trainer.run(log: log, checkpointDirectory: run.checkpointsPath)
                let result = VariantResult(name: variant.name, summary: summary, losses: try VariantResult.losses(metricsPath: run.metricsPath))
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
        }
    }
}
