import DDPKernels
import DDPSystem
import Foundation

/// A step's line of metrics.jsonl (`"kind":"step"`).
public struct StepRecord: Codable, Sendable {
    public var kind = "step"
    /// When the step was logged, in Unix seconds; RunLog sets it.
    public var time: Double?
    /// Counted from 1: the first step is step 1, in epoch 1 (as the screen says).
    public var step: Int
    public var epoch: Int
    public var loss: Double
    public var accuracy: Double
    public var lr: Double
    public var gradNorm: Double
    public var clipped: Bool
    public var skipped: Bool
    public var samples: Int
    public var dataSeconds: Double
    /// Forward (with the loss) plus backward: `forwardSeconds + backwardSeconds`.
    public var computeSeconds: Double
    public var forwardSeconds: Double
    public var backwardSeconds: Double
    public var communicationSeconds: Double
    public var optimizerSeconds: Double

    public init(step: Int, epoch: Int, loss: Double, accuracy: Double, lr: Double, gradNorm: Double, clipped: Bool,
                skipped: Bool, samples: Int, dataSeconds: Double, forwardSeconds: Double, backwardSeconds: Double,
                communicationSeconds: Double, optimizerSeconds: Double) {
        self.step = step; self.epoch = epoch; self.loss = loss; self.accuracy = accuracy; self.lr = lr
        self.gradNorm = gradNorm; self.clipped = clipped; self.skipped = skipped; self.samples = samples
        self.dataSeconds = dataSeconds; self.computeSeconds = forwardSeconds + backwardSeconds
        self.forwardSeconds = forwardSeconds; self.backwardSeconds = backwardSeconds
        self.communicationSeconds = communicationSeconds; self.optimizerSeconds = optimizerSeconds
    }

    enum CodingKeys: String, CodingKey {
        case kind, time, step, epoch, loss, accuracy, lr, clipped, skipped, samples
        case gradNorm = "grad_norm", dataSeconds = "data_s", computeSeconds = "compute_s"
        case forwardSeconds = "forward_s", backwardSeconds = "backward_s"
        case communicationSeconds = "comm_s", optimizerSeconds = "optimizer_s"
    }

    /// Reads the rows of this version and of earlier ones (before "kind" and "time", and
    /// before forward and backward were timed apart), and rows that hold only some fields:
    /// a row needs its step and loss; a number it lacks reads as NaN (charts leave it out),
    /// a count as 0, a flag as false.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func number(_ key: CodingKeys) throws -> Double { try c.decodeIfPresent(Double.self, forKey: key) ?? .nan }
        kind = try c.decodeIfPresent(String.self, forKey: .kind) ?? "step"
        time = try c.decodeIfPresent(Double.self, forKey: .time)
        step = try c.decode(Int.self, forKey: .step)
        loss = try c.decode(Double.self, forKey: .loss)
        epoch = try c.decodeIfPresent(Int.self, forKey: .epoch) ?? 0
        samples = try c.decodeIfPresent(Int.self, forKey: .samples) ?? 0
        clipped = try c.decodeIfPresent(Bool.self, forKey: .clipped) ?? false
        skipped = try c.decodeIfPresent(Bool.self, forKey: .skipped) ?? false
        (accuracy, lr, gradNorm) = (try number(.accuracy), try number(.lr), try number(.gradNorm))
        (dataSeconds, computeSeconds) = (try number(.dataSeconds), try number(.computeSeconds))
        (forwardSeconds, backwardSeconds) = (try number(.forwardSeconds), try number(.backwardSeconds))
        (communicationSeconds, optimizerSeconds) = (try number(.communicationSeconds), try number(.optimizerSeconds))
    }
}

/// An evaluation's line of metrics.jsonl (`"kind":"eval"`), after the line of the step it
/// followed, with that step's `step` and `epoch`: a resume keeps or drops both lines alike.
public struct EvaluationRecord: Codable, Sendable {
    public var kind = "eval"
    public var time: Double
    public var step: Int
    public var epoch: Int
    public var testLoss: Double
    public var testAccuracy: Double
    public var testSamples: Int
    /// Per class (by label): the share of its test samples predicted right; null for a
    /// class without test samples.
    public var classAccuracy: [Double?]

    enum CodingKeys: String, CodingKey {
        case kind, time, step, epoch
        case testLoss = "test_loss", testAccuracy = "test_accuracy", testSamples = "test_samples", classAccuracy = "class_accuracy"
    }
}

extension StepRecord {
    /// TensorBoard's scalars of a step, tagged "train/KEY" and "time/KEY" by metrics.jsonl's
    /// keys; booleans as 0 or 1, non-finite values (a skipped step's) left out.
    var scalars: [(tag: String, value: Float)] {
        let train: [(CodingKeys, Double)] = [(.loss, loss), (.accuracy, accuracy), (.lr, lr), (.gradNorm, gradNorm),
                                             (.clipped, clipped ? 1 : 0), (.skipped, skipped ? 1 : 0)]
        let time: [(CodingKeys, Double)] = [(.dataSeconds, dataSeconds), (.computeSeconds, computeSeconds), (.forwardSeconds, forwardSeconds),
                                            (.backwardSeconds, backwardSeconds), (.communicationSeconds, communicationSeconds),
                                            (.optimizerSeconds, optimizerSeconds)]
        return (train.map { ("train/" + $0.0.stringValue, $0.1) } + time.map { ("time/" + $0.0.stringValue, $0.1) })
            .filter(\.1.isFinite).map { ($0.0, Float($0.1)) }
    }
}

extension EvaluationRecord {
    /// TensorBoard's scalars of an evaluation: "test/loss", "test/accuracy" and
    /// "test/class_accuracy/CLASS"; non-finite values and classes without samples left out.
    var scalars: [(tag: String, value: Float)] {
        let values = [("test/loss", testLoss), ("test/accuracy", testAccuracy)]
            + classAccuracy.enumerated().compactMap { c, accuracy in accuracy.map { ("test/class_accuracy/\(c)", $0) } }
        return values.filter(\.1.isFinite).map { ($0.0, Float($0.1)) }
    }
}

/// Everything a run says, on rank 0 only: a progress bar on a terminal or plain periodic
/// lines otherwise; metrics.jsonl and TensorBoard's event file in the run dir; the summary.
/// Other ranks stay quiet unless they fail. With `--json` the human-readable text goes to
/// stderr, so stdout carries only the JSON summary.
public final class RunLog {
    let isRoot: Bool
    let logEvery: Int
    let jsonOutput: Bool
    let quiet: Bool
    /// metrics.jsonl, opened for appending (rank 0 only), and its size after the last whole line.
    private var metricsFile: Int32 = -1
    private var metricsPath = ""
    private var metricsSize: off_t = 0
    /// TensorBoard's event file (rank 0 only).
    private var events: EventFileWriter?
    /// The last step logged, which an evaluation follows.
    private var lastStep: (step: Int, epoch: Int)?
    private let interactive: Bool
    private var windowStart = 0.0
    private var windowSamples = 0
    private var runStart = 0.0
    private var rateSamples = 0
    private var rateSeconds = 0.0
    private var lastLoss = Double.nan
    private var lastAccuracy = Double.nan
    private let encoder = JSONEncoder.ddptrain()
    /// A run with a run dir (not bench's or an evaluation's): the run dir is said.
    private var logsToRunDir = false

    /// `metricsPath` nil: no metrics file (evaluation, tests); `tensorboardPath` nil: no event file.
    public init(rank: Int, logEvery: Int, json: Bool, metricsPath: String?, tensorboardPath: String? = nil, quiet: Bool = false) throws {
        isRoot = rank == 0
        self.logEvery = logEvery
        self.jsonOutput = json
        self.quiet = quiet
        // Open MPI gives each rank a pseudo-terminal for stdout whatever mpirun's own stdout
        // is, so isatty cannot tell; launch/mpirun passes DDPTRAIN_PROGRESS=bar or lines.
        switch ProcessInfo.processInfo.environment["DDPTRAIN_PROGRESS"] {
        case "bar": interactive = true
        case "lines": interactive = false
        default: interactive = isatty(json ? 2 : 1) != 0
        }
        if isRoot, let metricsPath {
            // Never through a link, never a FIFO or a device: RunDirectory made it a regular file.
            let fd = open(metricsPath, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                throw TrainingError("\(metricsPath): cannot open for appending: \(errnoText(errno))", exitCode: ExitStatus.inputError)
            }
            var info = stat()
            guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
                close(fd)
                throw TrainingError("\(metricsPath) is not a regular file", exitCode: ExitStatus.inputError)
            }
            metricsFile = fd
            logsToRunDir = true
            self.metricsPath = metricsPath
            metricsSize = info.st_size
        }
        if isRoot, let tensorboardPath { events = try EventFileWriter(directory: tensorboardPath) }
    }

    deinit { if metricsFile >= 0 { close(metricsFile) } }

    private func say(_ text: String) {
        guard isRoot, !quiet else { return }
        if jsonOutput { writeToStandardError((text + "\n")) } else { print(text); fflush(nil) }
    }

    public func warn(_ text: String) {
        guard isRoot else { return }
        if interactive { clearBar() }
        writeToStandardError("warning: \(text)\n")
    }

    public func info(_ text: String) {
        if interactive { clearBar() }
        say(text)
    }

    /// The run dir, said at the start and at the end.
    private var runDir: String?

    /// The first line says what the run will do, the learning rate as it will be: the peak
    /// the warm-up and schedule reach, and when.
    func start(trainer: Trainer) {
        runStart = Clock.seconds()
        windowStart = runStart
        let c = trainer.config
        let size = trainer.world.size, global = trainer.globalBatch
        // The ranks' slices as the shards fall (blocks of whole shards), not the even split.
        let plan = trainer.sampler.shardPlan(ofBatch: 0, shardSize: trainer.shardSize)
        let slices = (0..<size).map { plan.samples(ofShards: plan.block(rank: $0)).count }
        let split = Set(slices).count == 1 ? "\(size) ranks x \(slices[0])"
            : "\(size) ranks: " + (slices.count > 6 ? "\(slices.min()!) to \(slices.max()!)" : slices.map(String.init).joined(separator: ", "))
        let shards = "shards of \(trainer.shardSize)"
        let batch = size > 1 ? "global batch \(global) (\(split), \(shards))" : "batch \(global) (\(shards))"
        let threads = ", \(plural(trainer.replicas.threads, "compute thread")) per rank"
        let schedule = trainer.schedule
        let peak = schedule.peak(base: Float(trainer.baseLearningRate))
        let warmup = schedule.warmupSteps == 0 ? "no warm-up" : plural(schedule.warmupSteps, "warm-up step")
        say("train: \(c.model) on \(c.dataset), \(batch)\(threads), bn \(c.bn.rawValue), \(plural(trainer.totalSteps, "step")), "
            + "\(c.optimizer) lr \(trainer.baseLearningRate) \(c.schedule) with \(warmup): peak lr \(String(format: "%.4g", peak.rate)) "
            + "at step \(peak.step), \(plural(trainer.model.parameterCount, "parameter"))")
        runDir = c.resolvedRunDir
        if runDir != nil && !quiet && logsToRunDir { say("run dir: \(c.resolvedRunDir)") }
    }

    /// Appends a line to metrics.jsonl (one write, so a crash leaves whole lines). A line that
    /// cannot be written (disk full, quota, I/O error) stops the run: the file is cut back to
    /// its last whole line, and a resume logs the step again.
    private func appendMetrics<Record: Encodable>(_ record: Record, what: String) throws {
        guard metricsFile >= 0 else { return }
        var line = try encoder.encode(record)
        line.append(10)
        do {
            try writeEvery(line, to: metricsFile, path: metricsPath)
            metricsSize += off_t(line.count)
        } catch let error as TrainingError {
            _ = ftruncate(metricsFile, metricsSize)
            throw TrainingError("cannot \(what): \(error.message); the run stops here (make room, then "
                                + "resume with --resume auto)", exitCode: ExitStatus.checkpointWriteFailed)
        }
    }

    /// Logs the step, stamped with the time, to metrics.jsonl and TensorBoard, and shows progress.
    public func step(_ record: StepRecord, totalSteps: Int, stepsPerEpoch: Int) throws {
        guard isRoot else { return }
        var record = record
        let time = ProcessClock.unixTime()
        record.time = time
        try appendMetrics(record, what: "log step \(record.step)")
        try events?.write(step: record.step, wallTime: time, scalars: record.scalars)
        lastStep = (record.step, record.epoch)
        if !record.skipped { lastLoss = record.loss; lastAccuracy = record.accuracy }
        windowSamples += record.samples
        rateSamples += record.samples
        rateSeconds += record.dataSeconds + record.computeSeconds + record.communicationSeconds + record.optimizerSeconds
        guard !quiet else { return }
        let now = Clock.seconds()
        if interactive {
            if now - windowStart < 0.2 && record.step != totalSteps { return }
            let rate = Double(windowSamples) / max(now - windowStart, 1e-9)
            let eta = Double(totalSteps - record.step) * (now - runStart) / Double(record.step)
            let epoch = Double(record.step) / Double(stepsPerEpoch)
            let width = 24
            let filled = Int(Double(width) * Double(record.step) / Double(totalSteps))
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            let text = String(format: "\r[%@] epoch %.2f step %d/%d loss %.4f acc %.1f%% %.0f samples/s ETA %@",
                              bar, epoch, record.step, totalSteps, lastLoss, lastAccuracy * 100, rate, formatDuration(eta))
            emit(text + "\u{1B}[K")
            barShown = true
            windowStart = now
            windowSamples = 0
        } else if record.step % logEvery == 0 || record.step == totalSteps {
            let rate = Double(windowSamples) / max(now - windowStart, 1e-9)
            // A skipped step has no loss of its own: the line says so beside the last one.
            let state = record.skipped ? "skipped (non-finite), last loss" : "loss"
            say(String(format: "step %d/%d epoch %d %@ %.4f acc %.2f%% lr %.4g grad-norm %.3f %.0f samples/s",
                       record.step, totalSteps, record.epoch, state, lastLoss, lastAccuracy * 100, record.lr, record.gradNorm, rate))
            windowStart = now
            windowSamples = 0
        }
    }

    private var barShown = false

    /// Unbuffered text on the progress stream (stderr with --json, else stdout).
    private func emit(_ text: String) {
        if jsonOutput {
            writeToStandardError(text)
        } else {
            print(text, terminator: "")
            fflush(nil)
        }
    }
    private func clearBar() {
        guard barShown else { return }
        emit("\n")
        barShown = false
    }

    /// Shows an evaluation after `epoch` (counted from 1) and logs it after the last step.
    public func evaluation(epoch: Int, _ result: Evaluation) throws {
        info(String(format: "epoch %d: test loss %.4f, test accuracy %.2f%%", epoch, result.loss, result.accuracy * 100))
        guard isRoot, let lastStep else { return }
        let time = ProcessClock.unixTime()
        let record = EvaluationRecord(time: time, step: lastStep.step, epoch: lastStep.epoch, testLoss: result.loss,
                                      testAccuracy: result.accuracy, testSamples: result.samples, classAccuracy: result.classAccuracy)
        try appendMetrics(record, what: "log the evaluation at step \(lastStep.step)")
        try events?.write(step: lastStep.step, wallTime: time, scalars: record.scalars)
    }

    func finish(_ summary: TrainSummary) {
        guard isRoot else { return }
        if interactive { clearBar() }
        var text = String(format: "done: %@ (%.2f epochs) in %@, %.0f samples/s, %.1f%% of step time communicating",
                          plural(summary.steps, "step"), summary.epochs, formatDuration(summary.wallSeconds), summary.samplesPerSecond,
                          summary.communicationShare * 100)
        if let acc = summary.testAccuracy, let l = summary.testLoss {
            text += String(format: "\ntest accuracy %.2f%%, test loss %.4f", acc * 100, l)
        }
        if summary.skippedSteps > 0 { text += "\nskipped steps (non-finite gradients): \(summary.skippedSteps)" }
        if let runDir, logsToRunDir { text += "\nrun dir: \(runDir)" }
        say(text)
        if jsonOutput, let data = try? encoder.encode(summary) {
            print(String(decoding: data, as: UTF8.self))
            fflush(nil)
        }
    }
}

func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite else { return "?" }
    let s = Int(seconds.rounded())
    return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
}
