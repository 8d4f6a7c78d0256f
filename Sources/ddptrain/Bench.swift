import ArgumentParser
import DDPComm
import DDPKernels
import DDPNet
import DDPSystem
import DDPTrain
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure training speed: samples/s, the step split, peak memory per rank, and the share of sgemm peak.",
        discussion: """
        Runs the real trainer (the same step as `train`) for --untimed-steps, then times --timed-steps. Writes nothing: \
        no run directory, no metrics, no checkpoints; evaluation is off. Use real data (the default, fashion-mnist) or \
        --dataset synthetic (same shape). Under mpirun, every rank's figures are gathered to rank 0, which prints them.

        """ + TrainOptions.help)

    @OptionGroup var options: TrainOptions

    @Option(parsing: .unconditional, help: "Steps run before timing starts (warm-up: page faults, BLAS buffers, caches).")
    var untimedSteps = 10

    @Option(parsing: .unconditional, help: "Steps timed.")
    var timedSteps = 100

    @Flag(help: "Evaluate on the test set once after the timed steps (not timed), as the PyTorch peer does, so that peak RSS includes evaluation.")
    var evaluate = false

    @Flag(help: "Print one JSON object.")
    var json = false

    @Option(help: "Write every timed step's split, for every rank, to this file (JSON lines: step, rank, data, forward, backward, communication, optimizer in ms). An existing file there must be a step log, or give --force.")
    var stepLog: String?
    @Flag(help: "Replace the regular file at --step-log whatever wrote it (never a device, a FIFO, a directory or a link).")
    var force = false

    func validate() throws {
        if let stepLog {
            // Checked before the run (the log is written after it).
            let folder = URL(fileURLWithPath: stepLog).deletingLastPathComponent().path
            guard access(folder, W_OK) == 0 else { throw ValidationError("--step-log \(stepLog): cannot write into \(folder)") }
            try OutputFile(path: stepLog, option: "--step-log", kind: "a step log bench wrote", isOwnKind: { path in
                OutputFile.starts(path, within: 64) { $0.starts(with: Array("{\"step\":".utf8)) }
            }).check(force: force)
        }
        guard untimedSteps >= 0 else { throw ValidationError("--untimed-steps must be at least 0, got \(untimedSteps)") }
        guard timedSteps >= 1 else { throw ValidationError("--timed-steps must be at least 1, got \(timedSteps)") }
        guard timedSteps <= TrainConfig.maxCount - untimedSteps else {
            throw ValidationError("--untimed-steps plus --timed-steps must be at most \(TrainConfig.maxCount), got \(untimedSteps) + \(timedSteps)")
        }
        guard timedSteps <= Bench.maxTimedSteps else { throw ValidationError("--timed-steps must be at most \(Bench.maxTimedSteps), got \(timedSteps)") }
        let flags = try options.flags()
        if flags.text(of: "resume") != nil { throw ValidationError("bench does not resume: it starts from the seed's weights") }
        // What bench decides itself, or has no use for: refused rather than ignored.
        if let given = flags.given.first(where: { Bench.setByBench.contains($0.option.name) }) {
            throw ValidationError("bench does not take --\(given.option.name): it runs --untimed-steps plus --timed-steps steps "
                                  + "and writes no run dir, checkpoints or logs (--evaluate evaluates once at the end)")
        }
    }

    /// Training options bench sets itself or has no use for.
    static let setByBench: Set = ["steps", "epochs", "eval-every", "check-replicas", "run-dir", "checkpoint-every", "keep", "log-every"]
    /// The step log keeps every timed step's split in memory.
    static let maxTimedSteps = 1_000_000

    /// Reads the config file: only once MPI runs (TrainOptions.resolve(in:)).
    func config(in world: Communicator) throws -> TrainConfig {
        var config = try options.resolve(in: world)
        config.steps = untimedSteps + timedSteps
        // --evaluate: one evaluation, after the last (timed) step; no epoch-end evaluations.
        config.evalEvery = evaluate ? Int(Int32.max) : 0
        config.checkReplicas = 0
        config.resume = nil
        try config.validate()
        return config
    }

    func run() throws {
        try withWorld { world in
            let config = try config(in: world)
            let trainer = try Trainer(config: config, world: world)
            // The sgemm probe runs beside the timed steps on every rank at once, as the steps do.
            // A rank whose barrier failed would leave the others' barriers to pair with its next
            // collective: the whole job stops instead, the error named first.
            let probe = SgemmProbe()
            let timer = StepTimer(untimedSteps: untimedSteps, timedSteps: timedSteps, probe: probe, lineUp: {
                guard world.size > 1 else { return }
                do { try world.barrier() } catch {
                    writeToStandardError("ddptrain bench: rank \(world.rank): lining the ranks up after the sgemm probe failed: \(error)\n")
                    world.abort(exitCode: ExitStatus.runtimeFailure)
                }
            })
            trainer.observer = timer
            let log = try RunLog(rank: world.rank, logEvery: Int.max, json: false, metricsPath: nil, quiet: true)
            let summary = try trainer.run(log: log, checkpointDirectory: nil)

            // Peak memory of training (and evaluation), before the measurements below allocate,
            // less the sgemm probe's matrices (allocated and filled before the first step, so
            // resident throughout): what training alone holds.
            let rss = Double(ProcessClock.peakRSSBytes() - SgemmProbe.bytes)
            // The gradient reduction alone (GradientSync's ordered all-to-all, ordered sums and
            // all-gather, one piece per rank), ranks lined up by a barrier first: what moving
            // the buffer costs, as against the step's communication time, which also holds the
            // wait for the slowest rank.
            let sync = GradientSync(parameterCount: trainer.model.parameterCount, world: world)
            let scratch = FloatBuffer(capacity: sync.count), reduced = FloatBuffer(capacity: sync.count)
            let onePiecePerRank = ShardPlan(samples: world.size, shardSize: 1, worldSize: world.size)
            var allreduceSeconds = Double.infinity
            for _ in 0..<10 {
                try world.barrier()
                let start = Clock.seconds()
                try sync.reduce(pieces: [scratch.pointer], plan: onePiecePerRank, into: reduced.pointer)
                allreduceSeconds = min(allreduceSeconds, Clock.seconds() - start)
            }
            var slowest = [allreduceSeconds]
            try world.allreduce(&slowest, op: .max)

            let t = timer.total, steps = Double(max(timer.steps, 1))
            // The peak: the probe's best run beside the timed steps; and its rate over all its
            // runs, what sgemm got from the core in the same window on average.
            let probes = timer.probeSeconds
            let sgemm = SgemmProbe.flops / (probes.min() ?? .infinity) / 1e9
            let sgemmAlongside = SgemmProbe.flops * Double(probes.count) / probes.reduce(0, +) / 1e9
            let mine = [t.data / steps, t.forward / steps, t.backward / steps, t.communication / steps, t.optimizer / steps,
                        timer.wallSeconds, rss, sgemm, Double(trainer.replicas.threads),
                        timer.cpuSeconds / steps, sgemmAlongside]
            let all = try world.allgather(mine)
            // Every timed step's split (data, forward, backward, communication, optimizer) of
            // every rank, rank after rank.
            let logged = timer.log.count
            let splits = try world.allgather(timer.log.flatMap { [$0.data, $0.forward, $0.backward, $0.communication, $0.optimizer] })
            func stepPart(_ rank: Int, _ step: Int, _ part: Int) -> Double { splits[(rank * logged + step) * 5 + part] }
            if world.rank == 0, let path = self.stepLog {
                var lines = ""
                for k in 0..<logged {
                    for r in 0..<world.size {
                        let v = (0..<5).map { String(format: "%.3f", stepPart(r, k, $0) * 1e3) }
                        lines += "{\"step\":\(k),\"rank\":\(r),\"data\":\(v[0]),\"forward\":\(v[1]),\"backward\":\(v[2]),\"communication\":\(v[3]),\"optimizer\":\(v[4])}\n"
                    }
                }
                try writeAtomically(lines, to: path)  // a failure is 74, as for any file written
            }
            guard world.rank == 0 else { return }

            let fields = mine.count, ranks = world.size
            func column(_ i: Int) -> [Double] { (0..<ranks).map { all[$0 * fields + i] } }
            func mean(_ xs: [Double]) -> Double { xs.reduce(0, +) / Double(xs.count) }
            let split = (0..<5).map { mean(column($0)) }
            let stepSeconds = split.reduce(0, +)
            // Each step's work before the gradient allreduce (the previous step's optimizer,
            // then data, forward, backward): how long a rank would wait for the slowest if
            // moving the gradients took no time.
            func work(_ rank: Int) -> [Double] {
                (0..<logged).map { (k: Int) -> Double in
                    let previousOptimizer: Double = k > 0 ? stepPart(rank, k - 1, 4) : 0
                    return previousOptimizer + stepPart(rank, k, 0) + stepPart(rank, k, 1) + stepPart(rank, k, 2)
                }
            }
            let works = (0..<ranks).map(work)
            func percentile(_ xs: [Double], _ p: Double) -> Double {
                let sorted = xs.sorted()
                return sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int((p * Double(sorted.count - 1)).rounded()))]
            }
            let slowestWork = (0..<logged).map { k in works.map { $0[k] }.max() ?? 0 }
            let imbalance = logged == 0 ? 0 : works.map { w in
                zip(slowestWork, w).map { $0 - $1 }.reduce(0, +) / Double(logged)
            }.reduce(0, +) / Double(ranks)
            let commShares = (0..<ranks).map { r in all[r * fields + 3] / max((0..<5).reduce(0.0) { $0 + all[r * fields + $1] }, 1e-12) }
            let wall = column(5).max() ?? 0
            let samplesPerSecond = Double(trainer.globalBatch * timer.steps) / max(wall, 1e-12)
            let flops = trainer.model.flopsPerSample
            let threads = Int(column(8).max() ?? 1)
            let cores = ProcessInfo.processInfo.activeProcessorCount
            let coresUsed = min(ranks * threads, cores)
            let peak = sgemm * Double(coresUsed)
            let achieved = samplesPerSecond * flops / 1e9
            let alongside = sgemmAlongside * Double(coresUsed)

            let result = BenchResult(
                model: config.model, dataset: config.dataset, worldSize: ranks, perRankBatch: trainer.globalBatch / ranks,
                globalBatch: trainer.globalBatch, threadsPerRank: threads, untimedSteps: untimedSteps,
                timedSteps: timer.steps, samplesPerSecond: samplesPerSecond,
                stepMilliseconds: BenchResult.Split(data: split[0] * 1e3, forward: split[1] * 1e3, backward: split[2] * 1e3,
                                                    communication: split[3] * 1e3, optimizer: split[4] * 1e3, total: stepSeconds * 1e3),
                communicationShare: commShares.max() ?? 0, communicationSharePerRank: commShares,
                peakRSSMiBPerRank: column(6).map { $0 / 1_048_576 },
                secondsToFirstStep: summary.secondsToFirstStep, firstStepUnixTime: summary.firstStepUnixTime,
                sgemmGFLOPSOneCore: sgemm, sgemmGFLOPSOneCorePerRank: column(7), sgemmRuns: probes.count,
                sgemmGFLOPSOneCoreAlongside: sgemmAlongside, sgemmGFLOPSOneCoreAlongsidePerRank: column(10), flopsPerSample: flops,
                achievedGFLOPS: achieved, coresUsed: coresUsed, shareOfPeak: achieved / max(peak, 1e-12),
                shareOfSgemmAlongside: achieved / max(alongside, 1e-12),
                machine: BenchResult.Machine(cores: cores, cpu: cpuModel(), openBLAS: BLASThreads.configuration,
                                             mpi: Communicator.libraryVersion()),
                cpuMillisecondsPerStepPerRank: column(9).map { $0 * 1e3 },
                workMillisecondsP50PerRank: works.map { percentile($0, 0.5) * 1e3 },
                workMillisecondsP90PerRank: works.map { percentile($0, 0.9) * 1e3 },
                imbalanceMilliseconds: imbalance * 1e3,
                gradientAllreduceMilliseconds: ranks > 1 ? slowest[0] * 1e3 : 0, gradientBytes: sync.count * 4,
                finalTrainLoss: summary.finalTrainLoss, testAccuracy: summary.testAccuracy)
            if json {
                print(String(decoding: try JSONEncoder.ddptrain().encode(result), as: UTF8.self))
            } else {
                print(result.text, terminator: "")
            }
        }
    }

    private func cpuModel() -> String {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
        for line in text.split(separator: "\n") where line.hasPrefix("model name") {
            return line.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown"
        }
        return "unknown"
    }
}

struct BenchResult: Codable {
    struct Split: Codable {
        var data, forward, backward, communication, optimizer, total: Double
    }
    struct Machine: Codable {
        var cores: Int
        var cpu: String
        var openBLAS: String
        var mpi: String
        enum CodingKeys: String, CodingKey { case cores, cpu, openBLAS = "openblas", mpi }
    }
    var model: String
    var dataset: String
    var worldSize: Int
    var perRankBatch: Int
    var globalBatch: Int
    var threadsPerRank: Int
    var untimedSteps: Int
    var timedSteps: Int
    var samplesPerSecond: Double
    /// Mean per step over the timed steps and over ranks.
    var stepMilliseconds: Split
    var communicationShare: Double
    var communicationSharePerRank: [Double]
    var peakRSSMiBPerRank: [Double]
    var secondsToFirstStep: Double?
    var firstStepUnixTime: Double?
    /// The sgemm probe's best run beside the timed steps (the peak), per rank too.
    var sgemmGFLOPSOneCore: Double
    var sgemmGFLOPSOneCorePerRank: [Double]
    /// The probe's runs: one after each timed step and one after the last untimed step.
    var sgemmRuns: Int
    /// The probe's rate over all its runs (total FLOPs over total time), per rank too.
    var sgemmGFLOPSOneCoreAlongside: Double
    var sgemmGFLOPSOneCoreAlongsidePerRank: [Double]
    var flopsPerSample: Double
    var achievedGFLOPS: Double
    var coresUsed: Int
    var shareOfPeak: Double
    /// The FLOP rate's share of the probe's rate over all its runs (times the cores).
    var shareOfSgemmAlongside: Double
    var machine: Machine
    /// CPU time (user + system, all threads) per step: with other load on the machine this
    /// stays close to the unloaded step time where the wall-clock figures do not.
    var cpuMillisecondsPerStepPerRank: [Double]
    /// Work before the gradient allreduce per step (previous optimizer, data, forward,
    /// backward): median and 90th percentile over the timed steps, per rank.
    var workMillisecondsP50PerRank: [Double]
    var workMillisecondsP90PerRank: [Double]
    /// Mean over steps and ranks of (the slowest rank's work − this rank's): the wait for
    /// the slowest rank that the step-to-step variation alone explains.
    var imbalanceMilliseconds: Double
    /// One allreduce of the gradient buffer alone (ranks lined up first; best of 10).
    var gradientAllreduceMilliseconds: Double
    var gradientBytes: Int
    var finalTrainLoss: Double
    var testAccuracy: Double?

    enum CodingKeys: String, CodingKey {
        case model, dataset, machine
        case worldSize = "world_size", perRankBatch = "per_rank_batch", globalBatch = "global_batch"
        case threadsPerRank = "threads_per_rank", untimedSteps = "untimed_steps", timedSteps = "timed_steps"
        case samplesPerSecond = "samples_per_s", stepMilliseconds = "step_ms"
        case communicationShare = "communication_share", communicationSharePerRank = "communication_share_per_rank"
        case peakRSSMiBPerRank = "peak_rss_mib_per_rank", secondsToFirstStep = "seconds_to_first_step"
        case firstStepUnixTime = "first_step_unix_time", sgemmGFLOPSOneCore = "sgemm_gflops_one_core"
        case sgemmGFLOPSOneCorePerRank = "sgemm_gflops_one_core_per_rank", flopsPerSample = "flops_per_sample"
        case sgemmRuns = "sgemm_runs", sgemmGFLOPSOneCoreAlongside = "sgemm_gflops_one_core_alongside"
        case sgemmGFLOPSOneCoreAlongsidePerRank = "sgemm_gflops_one_core_alongside_per_rank"
        case shareOfSgemmAlongside = "share_of_sgemm_alongside"
        case achievedGFLOPS = "achieved_gflops", coresUsed = "cores_used", shareOfPeak = "share_of_peak"
        case finalTrainLoss = "final_train_loss", testAccuracy = "test_accuracy",
        gradientAllreduceMilliseconds = "gradient_allreduce_ms", gradientBytes = "gradient_bytes", cpuMillisecondsPerStepPerRank = "cpu_ms_per_step_per_rank"
        case workMillisecondsP50PerRank = "work_ms_p50_per_rank", workMillisecondsP90PerRank = "work_ms_p90_per_rank"
        case imbalanceMilliseconds = "imbalance_ms"
    }

    var text: String {
        let s = stepMilliseconds
        var out = "bench: \(model) on \(dataset), \(plural(worldSize, "rank")) x \(plural(threadsPerRank, "compute thread")), per-rank batch \(perRankBatch), "
            + "\(timedSteps) timed steps after \(untimedSteps)\n"
        out += String(format: "samples/s            %.1f\n", samplesPerSecond)
        out += String(format: "step (ms, mean)      %.2f = data %.2f + forward %.2f + backward %.2f + communication %.2f + optimizer %.2f\n",
                      s.total, s.data, s.forward, s.backward, s.communication, s.optimizer)
        out += "CPU ms per step      " + cpuMillisecondsPerStepPerRank.map { String(format: "%.2f", $0) }.joined(separator: ", ") + " (per rank)\n"
        out += String(format: "communication share  %.1f%% (largest over ranks)\n", communicationShare * 100)
        out += "work before allreduce  " + zip(workMillisecondsP50PerRank, workMillisecondsP90PerRank)
            .map { String(format: "%.2f / %.2f", $0, $1) }.joined(separator: ", ") + " ms median / p90 (per rank)\n"
        if worldSize > 1 {
            out += String(format: "imbalance            %.2f ms per step: the slowest rank's work minus a rank's own, mean\n", imbalanceMilliseconds)
            out += String(format: "gradient allreduce   %.2f ms alone for %.2f MB (ranks lined up first)\n",
                          gradientAllreduceMilliseconds, Double(gradientBytes) / 1e6)
        }
        out += "peak RSS per rank    " + peakRSSMiBPerRank.map { String(format: "%.1f MiB", $0) }.joined(separator: ", ") + "\n"
        if let first = secondsToFirstStep { out += String(format: "process start to first step  %.3f s (largest over ranks)\n", first) }
        out += String(format: "model                %.2f MFLOP per sample (forward + backward)\n", flopsPerSample / 1e6)
        out += String(format: "sgemm one core       %.1f GFLOP/s at best, %.1f over all %d runs beside the timed steps\n",
                      sgemmGFLOPSOneCore, sgemmGFLOPSOneCoreAlongside, sgemmRuns)
        out += String(format: "reached              %.1f GFLOP/s = %.1f%% of %@ at the sgemm peak (%.1f%% at its rate over all runs)\n",
                      achievedGFLOPS, shareOfPeak * 100, plural(coresUsed, "core"), shareOfSgemmAlongside * 100)
        out += "machine              \(machine.cores) cores, \(machine.cpu), \(machine.openBLAS)\n"
        return out
    }
}

/// Bench's clock on the training loop (a TrainingObserver): the first `untimedSteps` steps
/// are left out; of the others it sums the split, keeps every step's split (room made
/// before the first step, so observing allocates nothing), and measures the wall time from
/// the end of the untimed steps (or the run's start) to the end of the last step, and this
/// process's CPU time over the same window (read once at each end).
///
/// With a probe, it also runs the probe after every timed step (and after the last untimed
/// one: not before a first step, whose start bench reports), two sgemms of which the
/// second is timed (the first brings the matrices back into cache), then lines the ranks up
/// (`lineUp`, which does not return if it fails), and takes all of it out of the wall and
/// CPU times: the core's speed on a shared machine drifts over tenths of a second, so the
/// peak that the steps' FLOP rate is set against is measured across the same window, not at
/// one moment after it. The time is left out; what the probe leaves in the caches is not:
/// each timed step starts with the probe's 3 MiB where its own data was.
final class StepTimer: TrainingObserver {
    let untimedSteps: Int
    let timedSteps: Int
    private(set) var total = StepTimes()
    private(set) var steps = 0
    private(set) var log: [StepTimes] = []
    private(set) var wallSeconds = 0.0
    private(set) var cpuSeconds = 0.0
    /// The probe's runs beside the timed steps: seconds each.
    private(set) var probeSeconds: [Double] = []
    private var observed = 0
    private var start = 0.0
    private var cpuStart = 0.0
    /// Wall and CPU seconds spent probing and lining up since `start`.
    private var excludedWall = 0.0
    private var excludedCPU = 0.0
    private let probe: SgemmProbe?
    private let lineUp: () -> Void

    init(untimedSteps: Int, timedSteps: Int, probe: SgemmProbe? = nil, lineUp: @escaping () -> Void = {}) {
        self.untimedSteps = untimedSteps
        self.timedSteps = timedSteps
        self.probe = probe
        self.lineUp = lineUp
        log.reserveCapacity(timedSteps)
        probeSeconds.reserveCapacity(timedSteps + 1)
    }

    func runWillStart() {
        start = Clock.seconds()
        cpuStart = ProcessClock.cpuSeconds()
    }

    func stepDidEnd(_ outcome: StepOutcome) {
        observed += 1
        if observed == untimedSteps {
            start = outcome.endTime
            cpuStart = ProcessClock.cpuSeconds()
            runProbe()
        } else if observed > untimedSteps {
            total += outcome.times
            steps += 1
            log.append(outcome.times)
            wallSeconds = outcome.endTime - start - excludedWall
            if steps == timedSteps { cpuSeconds = ProcessClock.cpuSeconds() - cpuStart - excludedCPU }
            runProbe()
        }
    }

    /// One run of the probe, then the ranks lined up; both left out of the timed window.
    private func runProbe() {
        guard let probe else { return }
        let wall = Clock.seconds(), cpu = ProcessClock.cpuSeconds()
        // The first run after a step finds its matrices out of cache; the second is timed.
        _ = probe.seconds(threads: 1)
        probeSeconds.append(probe.seconds(threads: 1))
        lineUp()
        excludedWall += Clock.seconds() - wall
        excludedCPU += ProcessClock.cpuSeconds() - cpu
    }
}
