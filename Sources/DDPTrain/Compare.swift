import DDPSystem
import Foundation

/// One `--vary KEY=V1,V2,...`.
public struct Variation: Sendable {
    public var key: String
    public var values: [String]

    /// The options `--vary` takes: every one with a value, but where the run goes.
    public static let keys = TrainConfig.options.filter(\.varies).map(\.name)

    public init(parsing text: String) throws {
        let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[1].isEmpty else {
            throw ConfigError("--vary takes KEY=V1,V2,...; got '\(text)'")
        }
        guard Variation.keys.contains(parts[0]) else {
            throw ConfigError("--vary: unknown key '\(parts[0])'; keys: \(Variation.keys.joined(separator: ", "))")
        }
        key = parts[0]
        // Empty pieces kept, so that "lr=,," (no value at all) and "lr=0.1,,0.2" are refused;
        // one trailing comma ("lr=0.1,0.2,") is no value, as it always was.
        values = parts[1].split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        if values.count > 1, values.last == "" { values.removeLast() }
        guard !values.isEmpty, Set(values).count == values.count, !values.contains("") else {
            throw ConfigError("--vary \(key): values must be distinct and non-empty; got '\(parts[1])'")
        }
    }

    /// Sets this key to `value` in `config`, as the flag does.
    static func apply(key: String, value: String, to config: inout TrainConfig) throws {
        do {
            config = try TrainFlags(parsing: ["--\(key)", value]).apply(to: config)
        } catch let error as ConfigError {
            throw ConfigError("--vary \(error.message.hasPrefix("--") ? error.message.dropFirst(2) : error.message[...])")
        }
    }
}

/// One combination of the variations, with its own run dir. Variants that differ only in
/// their seed share a `group`: the report gives the group's mean and spread.
public struct Variant: Sendable {
    public var name: String
    public var group: String
    public var config: TrainConfig
}

/// Every combination, first variation outermost. Each variant gets the base's seed (so the
/// same initial weights where the model is the same) and data order, and its own folder.
public func makeVariants(base: TrainConfig, variations: [Variation]) throws -> [Variant] {
    // Two variations of one key would give variants named for a value they do not train with.
    if let twice = variations.first(where: { v in variations.filter { $0.key == v.key }.count > 1 }) {
        throw ConfigError("--vary \(twice.key) is given twice; give all its values in one: --vary \(twice.key)=A,B,...")
    }
    var variants = [(parts: [(key: String, value: String)](), config: base)]
    for variation in variations {
        var next: [(parts: [(key: String, value: String)], config: TrainConfig)] = []
        for v in variants {
            for value in variation.values {
                var config = v.config
                try Variation.apply(key: variation.key, value: value, to: &config)
                next.append((v.parts + [(variation.key, value)], config))
            }
        }
        variants = next
    }
    var folders: [String: String] = [:]
    return try variants.map { parts, config in
        let name = parts.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let others = parts.filter { $0.key != "seed" }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        var variant = Variant(name: name, group: others.isEmpty ? "all" : others, config: config)
        let folder = String(name.map { $0.isLetter || $0.isNumber || "-_.=".contains($0) ? $0 : "_" })
        // Two variants in one folder would be one run counted twice (model=m/x.yaml and
        // model=m_x.yaml both make "model=m_x.yaml").
        if let other = folders[folder] {
            throw ConfigError("--vary: variants '\(other)' and '\(name)' would share the folder variants/\(folder); "
                              + "give values that differ in letters, digits or -_.= (e.g. copy or rename one of the files)")
        }
        folders[folder] = name
        variant.config.runDir = base.resolvedRunDir + "/variants/" + folder
        variant.config.resume = base.resume == nil ? nil : "auto"
        try variant.config.validate()
        return variant
    }
}

extension Variant {
    /// Refuses a variant folder that is not a directory of the comparison's own: a link
    /// there would train, and rewrite the config of, whatever run it points to.
    public func checkFolder() throws {
        if let type = fileType(config.resolvedRunDir), type != S_IFDIR {
            throw TrainingError("\(config.resolvedRunDir) is \(describeFileType(type)), not a variant's folder; move it away",
                                exitCode: ExitStatus.inputError)
        }
    }
}

/// What a finished variant contributes to the report. Fields after `losses` are nil in the
/// summary.json of earlier versions.
public struct VariantResult: Codable, Sendable {
    public var name: String
    public var summary: TrainSummary
    /// The step rows of metrics.jsonl, skipped steps left out.
    public var losses: [StepLoss]
    public var group: String?
    public var evaluations: [Evaluation]?
    /// Wall time over every attempt: a resumed variant's earlier attempts included.
    public var totalWallSeconds: Double?

    public init(name: String, summary: TrainSummary, losses: [StepLoss], group: String? = nil, evaluations: [Evaluation]? = nil,
                totalWallSeconds: Double? = nil) {
        self.name = name; self.summary = summary; self.losses = losses; self.group = group; self.evaluations = evaluations
        self.totalWallSeconds = totalWallSeconds
    }

    public struct StepLoss: Codable, Sendable {
        public var step: Int
        public var loss: Double
        public var lr: Double?
        public var time: Double?
        public init(step: Int, loss: Double, lr: Double? = nil, time: Double? = nil) {
            self.step = step; self.loss = loss; self.lr = lr; self.time = time
        }
    }

    public struct Evaluation: Codable, Sendable {
        public var step: Int
        public var testLoss: Double
        public var testAccuracy: Double
        public var time: Double
        public init(step: Int, testLoss: Double, testAccuracy: Double, time: Double) {
            self.step = step; self.testLoss = testLoss; self.testAccuracy = testAccuracy; self.time = time
        }
    }

    /// Reads a variant's metrics.jsonl line by line: a line that is neither a step nor an
    /// evaluation record (one kept on resume, see RunDirectory.keepMetrics) is left out of the
    /// charts, not the others.
    public static func records(metricsPath: String) throws -> (steps: [StepLoss], evaluations: [Evaluation]) {
        guard let metrics = try RunMetrics(ifPresent: metricsPath) else { return ([], []) }
        return (metrics.steps.filter { !$0.skipped }.map { StepLoss(step: $0.step, loss: $0.loss, lr: $0.lr, time: $0.time) },
                metrics.evaluations.map { Evaluation(step: $0.step, testLoss: $0.testLoss, testAccuracy: $0.testAccuracy, time: $0.time) })
    }

    public static func losses(metricsPath: String) throws -> [StepLoss] { try records(metricsPath: metricsPath).steps }

    /// A summary of an attempt that trained no step (a variant resumed at its last step: its
    /// summary.json was lost, say to a kill between its last checkpoint and that file) has
    /// no loss and no evaluation of its own: they come from the run's metrics, its last step
    /// and its evaluations, as the attempt that trained them would have reported them.
    public static func completing(_ summary: TrainSummary, trainedNoStep: Bool, steps: [StepLoss], evaluations: [Evaluation]) -> TrainSummary {
        guard trainedNoStep, let last = steps.last, last.step == summary.steps else { return summary }
        var completed = summary
        completed.finalTrainLoss = last.loss
        if completed.testAccuracy == nil, let evaluation = evaluations.last {
            completed.testAccuracy = evaluation.testAccuracy
            completed.testLoss = evaluation.testLoss
        }
        // Each evaluation's epoch from its step (an epoch's evaluation follows its last step),
        // in whole steps per epoch: steps / (steps / perEpoch) is not exact in Float64.
        let stepsPerEpoch = max(1, Int((summary.epochs > 0 ? Double(summary.steps) / summary.epochs : 1).rounded()))
        let epochs = evaluations.map { ($0.step + stepsPerEpoch - 1) / stepsPerEpoch }
        if completed.bestTestAccuracy == nil, let best = evaluations.indices.max(by: { evaluations[$0].testAccuracy < evaluations[$1].testAccuracy }) {
            completed.bestTestAccuracy = evaluations[best].testAccuracy
            completed.bestEpoch = epochs[best]
        }
        if completed.accuracyPerEpoch.isEmpty {
            completed.accuracyPerEpoch = evaluations.map(\.testAccuracy)
            completed.evaluatedEpochs = epochs
        }
        return completed
    }

    /// The result of a variant that stopped after --max-skipped-steps non-finite steps in a
    /// row (exit 70 for `train`): its report row says "diverged", with the steps it logged;
    /// the comparison goes on with the other variants. The run is deterministic, so a
    /// `--resume auto` keeps this result rather than diverge again.
    public static func diverged(name: String, group: String?, trainer: Trainer, metricsPath: String, runDir: String) throws -> VariantResult {
        let records = try records(metricsPath: metricsPath)
        let summary = TrainSummary(worldSize: trainer.world.size, globalBatch: trainer.globalBatch, steps: trainer.step,
                                   epochs: Double(trainer.step) / Double(max(trainer.stepsPerEpoch, 1)), skippedSteps: trainer.skippedSteps,
                                   finalTrainLoss: .nan, testLoss: nil, testAccuracy: nil, bestTestAccuracy: nil, bestEpoch: nil,
                                   wallSeconds: 0, samplesPerSecond: 0, communicationShare: 0, parameterHashes: [],
                                   accuracyPerEpoch: [], evaluatedEpochs: [], secondsToFirstStep: nil, firstStepUnixTime: nil, runDir: runDir)
        return VariantResult(name: name, summary: summary, losses: records.steps, group: group, evaluations: records.evaluations)
    }

    /// Whether this variant's training diverged (`diverged(...)`).
    public var didDiverge: Bool { summary.finalTrainLoss.isNaN }

    /// Adds now to RUN_DIR/attempts.json, the start times of a variant's attempts (a fresh
    /// start forgets the earlier ones; so does a file that does not read as a list of times),
    /// and returns the list.
    public static func recordAttempt(runDir: String, resumed: Bool) throws -> [Double] {
        let path = runDir + "/attempts.json"
        var starts: [Double] = []
        if resumed, case .success(let bytes) = RegularFile.read(path, limit: 1 << 20, followingLinks: false) {
            starts = (try? JSONDecoder().decode([Double].self, from: Data(bytes))) ?? []
        }
        starts.append(ProcessClock.unixTime())
        try writeAtomically(String(decoding: try JSONEncoder().encode(starts), as: UTF8.self), to: path)
        return starts
    }

    /// Wall time over the attempts that started at `attemptStarts` (Unix seconds, in order):
    /// each earlier attempt counts from its start to its last row in metrics.jsonl (the steps
    /// it ran past its last checkpoint are dropped on resume, and so is their time); the last
    /// attempt counts its own measured wall time.
    public static func totalWallSeconds(attemptStarts: [Double], lastAttemptSeconds: Double, rowTimes: [Double]) -> Double {
        var total = lastAttemptSeconds
        for (start, next) in zip(attemptStarts, attemptStarts.dropFirst()) {
            if let end = rowTimes.filter({ $0 >= start && $0 < next }).max() { total += end - start }
        }
        return total
    }

    var stepsPerEpoch: Double { summary.epochs > 0 && summary.steps > 0 ? Double(summary.steps) / summary.epochs : 1 }

    /// The mean training loss over the last epoch's steps (a single batch's loss is noise);
    /// nil when the run ended diverged or logged no step there.
    public var lastEpochTrainLoss: Double? {
        guard summary.finalTrainLoss.isFinite, let last = losses.last?.step else { return nil }
        let window = losses.filter { Double($0.step) > Double(last) - stepsPerEpoch.rounded() && $0.loss.isFinite }
        return window.isEmpty ? nil : window.map(\.loss).reduce(0, +) / Double(window.count)
    }
}

/// Mean and sample standard deviation (n - 1); the deviation is nil for a single value.
public struct Spread: Sendable {
    public var mean: Double
    public var deviation: Double?
    public var count: Int

    public init?(_ values: [Double]) {
        guard !values.isEmpty else { return nil }
        count = values.count
        mean = values.reduce(0, +) / Double(count)
        let m = mean
        deviation = count > 1 ? (values.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(count - 1)).squareRoot() : nil
    }

    func text(_ format: String, scale: Double = 1, unit: String = "") -> String {
        let m = String(format: format, mean * scale)
        guard let d = deviation else { return m + unit }
        return m + " ± " + String(format: format, d * scale) + unit
    }

    /// Whether the intervals mean ± one standard deviation overlap.
    func overlaps(_ other: Spread) -> Bool {
        guard let a = deviation, let b = other.deviation else { return false }
        return abs(mean - other.mean) <= a + b
    }
}

/// The command line as a shell reads it back: each argument quoted where it needs to be.
public func shellQuoted(_ arguments: [String]) -> String {
    arguments.map { argument in
        let plain = !argument.isEmpty && argument.unicodeScalars.allSatisfy {
            CharacterSet.alphanumerics.contains($0) && $0.isASCII || "-_./=:,+@%".unicodeScalars.contains($0)
        }
        return plain ? argument : "'" + argument.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }.joined(separator: " ")
}

/// report.md, report.html (self-contained: inline SVG, no network) and the charts as SVG files.
/// Variants that differ only in their seed are one row and one curve: mean ± standard
/// deviation, and a band on the charts.
public struct ComparisonReport {
    public var title: String
    public var command: String
    public var results: [VariantResult]
    public var worldSize: Int

    public init(title: String, command: String, results: [VariantResult], worldSize: Int) {
        self.title = title; self.command = command; self.results = results; self.worldSize = worldSize
    }

    /// The groups in the order of their first variant.
    public var groups: [(name: String, members: [VariantResult])] {
        var order: [String] = [], members: [String: [VariantResult]] = [:]
        for r in results {
            let g = r.group ?? r.name
            if members[g] == nil { order.append(g) }
            members[g, default: []].append(r)
        }
        return order.map { ($0, members[$0]!) }
    }

    var repeated: Bool { groups.contains { $0.members.count > 1 } }

    /// One curve per group against epochs (step / steps per epoch): the mean over the
    /// group's members at the steps they all have, and their standard deviation.
    func curve(_ members: [VariantResult], _ values: (VariantResult) -> [(step: Int, y: Double)]) -> [(x: Double, mean: Double, deviation: Double)] {
        let perEpoch = members[0].stepsPerEpoch
        let tables = members.map { Dictionary(values($0).map { ($0.step, $0.y) }, uniquingKeysWith: { $1 }) }
        let steps = values(members[0]).map(\.step).filter { s in tables.allSatisfy { $0[s] != nil } }
        return steps.compactMap { s in
            Spread(tables.map { $0[s]! }).map { (Double(s) / perEpoch, $0.mean, $0.deviation ?? 0) }
        }
    }

    func smoothedLosses(_ r: VariantResult) -> [(step: Int, y: Double)] {
        let raw = r.losses.filter { $0.loss.isFinite }
        return zip(raw, smoothed(raw.map { (Double($0.step), $0.loss) }, weight: smoothingWeight(count: raw.count))).map { ($0.step, $1.y) }
    }

    public var lossChart: LineChart {
        LineChart(title: "Training loss", xLabel: "epoch (samples seen / training set)",
                  yLabel: "training loss, smoothed (raw faint)", series: groups.map { g in
                      let mean = curve(g.members, smoothedLosses)
                      let raw = curve(g.members) { $0.losses.map { ($0.step, $0.loss) } }
                      var series = LineChart.Series(name: g.name, points: mean.map { ($0.x, $0.mean) })
                      series.raw = thinned(raw.map { ($0.x, $0.mean) }, maxPoints: 1500)
                      if g.members.count > 1 { series.band = mean.map { ($0.x, $0.mean - $0.deviation, $0.mean + $0.deviation) } }
                      let evaluated = Set((g.members[0].evaluations ?? []).map { Double($0.step) / g.members[0].stepsPerEpoch })
                      series.markerPoints = mean.filter { evaluated.contains($0.x) }.map { ($0.x, $0.mean) }
                      return series
                  }, logY: true)
    }

    func evaluationChart(title: String, yLabel: String, value: @escaping (VariantResult.Evaluation) -> Double) -> LineChart {
        LineChart(title: title, xLabel: "epoch", yLabel: yLabel, series: groups.map { g in
            let points = curve(g.members) { ($0.evaluations ?? []).map { ($0.step, value($0)) } }
            var series = LineChart.Series(name: g.name, points: points.map { ($0.x, $0.mean) }, markers: true)
            if g.members.count > 1 { series.band = points.map { ($0.x, $0.mean - $0.deviation, $0.mean + $0.deviation) } }
            return series
        })
    }

    public var accuracyChart: LineChart {
        var chart = evaluationChart(title: "Test accuracy", yLabel: "test accuracy (%)") { $0.testAccuracy * 100 }
        chart.minimumYSpan = 5
        chart.yLimits = 0...100
        return chart
    }

    public var testLossChart: LineChart {
        var chart = evaluationChart(title: "Test loss", yLabel: "test loss", value: \.testLoss)
        chart.logY = true
        return chart
    }

    public var learningRateChart: LineChart {
        LineChart(title: "Learning rate", xLabel: "epoch (samples seen / training set)", yLabel: "learning rate",
                  series: groups.map { g in
                      let r = g.members[0]
                      return .init(name: g.name, points: thinned(r.losses.compactMap { s in s.lr.map { (Double(s.step) / r.stepsPerEpoch, $0) } },
                                                                 maxPoints: 1500))
                  })
    }

    public var charts: [(file: String, title: String, chart: LineChart)] {
        [("loss.svg", "training loss", lossChart), ("test-loss.svg", "test loss", testLossChart),
         ("accuracy.svg", "test accuracy", accuracyChart), ("lr.svg", "learning rate", learningRateChart)]
    }

    public var header: [String] {
        (repeated ? ["variant", "runs"] : ["variant"])
            + ["final test acc", "best test acc", "test loss", "train loss (last epoch)", "wall time", "samples/s", "communication"]
    }

    public var rows: [[String]] {
        groups.map { g in
            let m = g.members
            func spread(_ value: (VariantResult) -> Double?) -> Spread? {
                let values = m.map(value)
                return values.contains { $0 == nil } ? nil : Spread(values.map { $0! })
            }
            let best = m.count == 1 ? m[0].summary.bestTestAccuracy.map { String(format: "%.2f%% (epoch %d)", $0 * 100, m[0].summary.bestEpoch ?? 0) }
                : spread { $0.summary.bestTestAccuracy }?.text("%.2f", scale: 100, unit: "%")
            return (repeated ? [g.name, "\(m.count)"] : [g.name]) + [
                spread { $0.summary.testAccuracy }?.text("%.2f", scale: 100, unit: "%") ?? "-",
                best ?? "-",
                spread { $0.summary.testLoss }?.text("%.4f") ?? "-",
                spread(\.lastEpochTrainLoss)?.text("%.4f") ?? "diverged",
                formatDuration(m.map { $0.totalWallSeconds ?? $0.summary.wallSeconds }.reduce(0, +) / Double(m.count)),
                spread { $0.summary.samplesPerSecond }.map { String(format: "%.0f", $0.mean) } ?? "-",
                spread { $0.summary.communicationShare }.map { String(format: "%.1f%%", $0.mean * 100) } ?? "-",
            ]
        }
    }

    /// Which groups' final test accuracies lie within each other's spread, in sentences.
    public var spreadNotes: [String] {
        guard repeated else {
            return ["One run per variant: no spread across seeds is measured, and differences of a few tenths of a point "
                    + "may be seed noise; `--seeds N` repeats each variant and gives mean ± standard deviation."]
        }
        let accuracies = groups.map { g in (g.name, Spread(g.members.compactMap(\.summary.testAccuracy))) }
        var notes: [String] = []
        // Each pair once, under the first of the two: one line per variant, however many it overlaps.
        for i in accuracies.indices {
            guard let a = accuracies[i].1 else { continue }
            let described = accuracies[(i + 1)...].compactMap { name, b in
                b.flatMap { a.overlaps($0) ? (name, $0.text("%.2f", scale: 100, unit: "%"), abs(a.mean - $0.mean) * 100) : nil }
            }
            if described.count == 1, let (name, text, difference) = described.first {
                notes.append(String(format: "%@ and %@ are within each other's spread: %@ against %@ (difference %.2f points).",
                                    accuracies[i].0, name, a.text("%.2f", scale: 100, unit: "%"), text, difference))
            } else if described.count > 1 {
                notes.append("\(accuracies[i].0) (\(a.text("%.2f", scale: 100, unit: "%"))) is within the spread of "
                             + described.map { String(format: "%@ (%@, difference %.2f points)", $0.0, $0.1, $0.2) }.joined(separator: ", ") + ".")
            }
        }
        return notes.isEmpty ? ["No two variants' final test accuracies are within each other's spread (mean ± one standard deviation)."] : notes
    }

    var method: String {
        "Train loss (last epoch) is the mean over the last epoch's steps. Wall time counts every attempt of a resumed variant"
            + (repeated ? "; with repeats it is the mean per run." : ".")
            + (repeated ? " Values are mean ± sample standard deviation (n − 1) over the runs; bands on the charts are ± one standard deviation." : "")
            + " Curves are against epochs (samples seen), so that variants with smaller batches and more steps line up;"
            + " the training loss is smoothed as TensorBoard does (exponential moving average over about 2% of the run), the raw"
            + " values faint behind; open dots mark evaluations."
    }

    /// The table as aligned plain text, for the terminal.
    public var textTable: String {
        let all = [header] + rows
        let widths = header.indices.map { c in all.map { $0[c].count }.max()! }
        return all.map { row in row.indices.map { row[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ") }
            .joined(separator: "\n") + "\n"
    }

    public var markdown: String {
        var md = "# \(title)\n\n```sh\n\(command)\n```\n\n\(plural(worldSize, "rank")).\n\n"
        md += "| " + header.joined(separator: " | ") + " |\n|" + header.map { _ in "---" }.joined(separator: "|") + "|\n"
        for row in rows { md += "| " + row.joined(separator: " | ") + " |\n" }
        md += "\n" + spreadNotes.map { "- " + $0 }.joined(separator: "\n") + "\n\n" + method + "\n\n"
        md += charts.map { "![\($0.title)](\($0.file))" }.joined(separator: "\n\n") + "\n"
        return md
    }

    public var html: String {
        var h = reportPageStart(title: title) + """
        <pre>\(escapeHTML(command))</pre><p>\(plural(worldSize, "rank")).</p>
        <table><tr>
        """
        h += header.map { "<th>\(escapeHTML($0))</th>" }.joined() + "</tr>\n"
        for row in rows { h += "<tr>" + row.map { "<td>\(escapeHTML($0))</td>" }.joined() + "</tr>\n" }
        h += "</table>\n<ul>" + spreadNotes.map { "<li>\(escapeHTML($0))</li>" }.joined() + "</ul>\n<p>\(escapeHTML(method))</p>\n"
        h += "<div class=\"charts\">" + charts.map { "<div>\($0.chart.svg())</div>" }.joined(separator: "\n") + "</div>\n</body></html>\n"
        return h
    }

    /// Writes the report and the charts into `directory`, each atomically.
    public func write(to directory: String) throws {
        try writeAtomically(markdown, to: directory + "/report.md")
        try writeAtomically(html, to: directory + "/report.html")
        for chart in charts { try writeAtomically(chart.chart.svg(), to: directory + "/" + chart.file) }
    }
}
