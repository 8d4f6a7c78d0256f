import DDPData
import DDPSystem
import Foundation

/// A run's metrics.jsonl as a reader sees it: the step rows and the evaluation rows, in file
/// order. Rows of earlier versions (no "kind", no "time") read as step rows; a line that is
/// neither kind (not JSON, hand-written) is counted and left out.
public struct RunMetrics {
    /// The step rows, as RunLog writes them (StepRecord reads earlier versions' rows too).
    public var steps: [StepRecord] = []
    public var evaluations: [EvaluationRecord] = []
    /// Lines that are neither a step nor an evaluation row.
    public var otherLines = 0

    public init(path: String) throws {
        guard let metrics = try RunMetrics(ifPresent: path) else {
            throw TrainingError("\(path): no such file (is this a run dir?)", exitCode: ExitStatus.inputError)
        }
        self = metrics
    }

    /// nil when there is no file at `path`.
    public init?(ifPresent path: String) throws {
        guard let fd = try openRegularFileForReading(path) else { return nil }
        defer { close(fd) }
        struct Kind: Decodable { var kind: String? }
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try forEachLine(fd: fd, path: path) { piece in
            guard piece.starts && piece.ends else {
                if piece.starts { otherLines += 1 }
                return
            }
            if piece.bytes.allSatisfy({ $0 == 32 || $0 == 9 || $0 == 13 }) { return }
            let data = Data(piece.bytes)
            guard let kind = try? decoder.decode(Kind.self, from: data) else {
                otherLines += 1
                return
            }
            switch kind.kind {
            case nil, "step"?:
                if let step = try? decoder.decode(StepRecord.self, from: data) { steps.append(step); return }
            case "eval"?:
                if let evaluation = try? decoder.decode(EvaluationRecord.self, from: data) { evaluations.append(evaluation); return }
            default: break
            }
            otherLines += 1
        }
    }
}

/// `ddptrain plot`: one run's curves as a self-contained HTML page (inline SVG, no script,
/// no network), drawn with the compare report's charts.
public struct RunPlot {
    public var title: String
    public var metrics: RunMetrics
    /// The run's config.json as it is, shown folded under the charts.
    public var configText: String?
    /// Class names by label, for the per-class chart.
    public var classNames: [String]

    public init(title: String, metrics: RunMetrics, configText: String?, classNames: [String]) {
        self.title = title; self.metrics = metrics; self.configText = configText; self.classNames = classNames
    }

    /// The run in `runDir`: its metrics.jsonl, and its config.json where there is a readable
    /// one (it is only shown, and names the dataset's classes).
    public init(runDir: String) throws {
        let metrics = try RunMetrics(path: runDir + "/metrics.jsonl")
        var configText: String?, dataset = ""
        if case .success(let bytes) = RegularFile.read(runDir + "/config.json", limit: 1 << 20, followingLinks: false) {
            configText = String(decoding: bytes, as: UTF8.self)
            dataset = (try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])?["dataset"] as? String ?? ""
        }
        self.init(title: "ddptrain run \(runDir)", metrics: metrics, configText: configText, classNames: DDPTrain.classNames(dataset: dataset))
    }

    /// A per-step value, as window means (at most 400 points) over the steps not skipped.
    func perStep(_ value: (StepRecord) -> Double, scale: Double = 1) -> [(x: Double, y: Double)] {
        // A row of an earlier version may lack the value (NaN): left out, as skipped steps are.
        windowedLoss(metrics.steps.filter { !$0.skipped && value($0).isFinite }.map { ($0.step, value($0) * scale) })
    }

    func perEvaluation(_ value: (EvaluationRecord) -> Double?) -> [(x: Double, y: Double)] {
        metrics.evaluations.compactMap { e in value(e).map { (Double(e.step), $0) } }
    }

    public var charts: [LineChart] {
        let evaluated = !metrics.evaluations.isEmpty
        var charts = [
            LineChart(title: "Loss", xLabel: "step", yLabel: "loss", series: [
                .init(name: "train (window mean)", points: perStep(\.loss)),
            ] + (evaluated ? [.init(name: "test", points: perEvaluation(\.testLoss), markers: true)] : []), logY: true),
            LineChart(title: "Accuracy", xLabel: "step", yLabel: "accuracy (%)", series: [
                .init(name: "train (window mean)", points: perStep(\.accuracy, scale: 100)),
            ] + (evaluated ? [.init(name: "test", points: perEvaluation { $0.testAccuracy * 100 }, markers: true)] : [])),
            LineChart(title: "Learning rate", xLabel: "step", yLabel: "learning rate", series: [
                .init(name: "lr", points: perStep(\.lr)),
            ]),
            LineChart(title: "Gradient norm before clipping", xLabel: "step", yLabel: "global L2 norm", series: [
                .init(name: "grad norm (window mean)", points: perStep(\.gradNorm)),
            ], logY: true),
            LineChart(title: "Step time", xLabel: "step", yLabel: "milliseconds per step (window mean)", series: [
                .init(name: "data", points: perStep(\.dataSeconds, scale: 1000)),
                .init(name: "compute", points: perStep(\.computeSeconds, scale: 1000)),
                .init(name: "communication", points: perStep(\.communicationSeconds, scale: 1000)),
                .init(name: "optimizer", points: perStep(\.optimizerSeconds, scale: 1000)),
            ]),
        ]
        if let classes = metrics.evaluations.last?.classAccuracy.count, classes <= 20 {
            charts.append(LineChart(title: "Test accuracy per class", xLabel: "step", yLabel: "accuracy (%)", series: (0..<classes).map { c in
                .init(name: c < classNames.count ? "\(c) \(classNames[c])" : "class \(c)", points: perEvaluation { e in
                    c < e.classAccuracy.count ? e.classAccuracy[c].map { $0 * 100 } : nil
                }, markers: true)
            }))
        }
        return charts
    }

    /// What the run did, in a few lines.
    public var facts: [(String, String)] {
        let steps = metrics.steps
        var facts: [(String, String)] = [("steps logged", "\(steps.count)")]
        if let first = steps.first, let last = steps.last { facts.append(("steps", "\(first.step) to \(last.step)")) }
        let times = steps.compactMap(\.time)
        if let start = times.min(), let end = times.max() {
            facts.append(("logged from", ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: start))))
            facts.append(("to", ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: end))))
        }
        facts.append(("clipped steps", "\(steps.filter(\.clipped).count)"))
        facts.append(("skipped steps", "\(steps.filter(\.skipped).count)"))
        if let e = metrics.evaluations.last {
            facts.append(("last test accuracy", String(format: "%.2f%% (step %d)", e.testAccuracy * 100, e.step)))
            facts.append(("last test loss", String(format: "%.4f", e.testLoss)))
        }
        if let best = metrics.evaluations.max(by: { $0.testAccuracy < $1.testAccuracy }) {
            facts.append(("best test accuracy", String(format: "%.2f%% (step %d)", best.testAccuracy * 100, best.step)))
        }
        return facts
    }

    /// The page's generator meta tag: `plot --out` replaces a file only if it carries it.
    public static let generator = "ddptrain plot"

    /// Whether a page's first bytes say `plot` wrote it.
    public static func isPlotPage(_ start: String) -> Bool {
        start.hasPrefix("<!DOCTYPE html>") && start.contains("<meta name=\"generator\" content=\"\(generator)\">")
    }

    public var html: String {
        var h = reportPageStart(title: title, generator: RunPlot.generator) + "\n<table>\n"
        for (name, value) in facts { h += "<tr><th>\(escapeHTML(name))</th><td>\(escapeHTML(value))</td></tr>\n" }
        h += "</table>\n"
        h += "<div class=\"charts\">\n"
        for chart in charts { h += "<div>\(chart.svg())</div>\n" }
        h += "</div>\n"
        if let configText { h += "<details><summary>config.json</summary><pre>\(escapeHTML(configText))</pre></details>\n" }
        return h + "</body></html>\n"
    }
}

/// Names of the classes of the datasets ddptrain knows, by label; empty for others.
public func classNames(dataset: String) -> [String] { DatasetKind(rawValue: dataset)?.classNames ?? [] }
