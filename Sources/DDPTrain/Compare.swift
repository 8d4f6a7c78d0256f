import DDPComm
import Foundation

/// One `--vary KEY=V1,V2,...`.
public struct Variation: Sendable {
    public var key: String
    public var values: [String]

    public static let keys = ["bn", "per-rank-batch", "global-batch", "init", "model", "lr", "clip-norm", "optimizer",
                              "dropout", "weight-decay", "seed"]

    public init(parsing text: String) throws {
        let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[1].isEmpty else {
            throw ConfigError("--vary takes KEY=V1,V2,...; got '\(text)'")
        }
        guard Variation.keys.contains(parts[0]) else {
            throw ConfigError("--vary: unknown key '\(parts[0])'; keys: \(Variation.keys.joined(separator: ", "))")
        }
        key = parts[0]
        values = parts[1].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard Set(values).count == values.count, !values.contains("") else {
            throw ConfigError("--vary \(key): values must be distinct and non-empty; got '\(parts[1])'")
        }
    }

    /// Sets this key to `value` in `config`, with the same checks as the flag.
    static func apply(key: String, value: String, to config: inout TrainConfig) throws {
        func number(_ v: String) throws -> Double {
            guard let d = Double(v) else { throw ConfigError("--vary \(key): '\(v)' is not a number") }
            return d
        }
        func integer(_ v: String) throws -> Int {
            guard let i = Int(v) else { throw ConfigError("--vary \(key): '\(v)' is not an integer") }
            return i
        }
        switch key {
        case "bn":
            guard let mode = TrainConfig.BNMode(rawValue: value) else {
                throw ConfigError("--vary bn: '\(value)' is not one of \(TrainConfig.BNMode.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            config.bn = mode
        case "per-rank-batch": config.perRankBatch = try integer(value); config.globalBatch = nil
        case "global-batch": config.globalBatch = try integer(value); config.perRankBatch = nil
        case "init": config.initializer = value
        case "model": config.model = value
        case "lr": config.lr = try number(value)
        case "clip-norm": config.clipNorm = value == "off" ? nil : try number(value)
        case "optimizer": config.optimizer = value
        case "dropout": config.dropout = try number(value)
        case "weight-decay": config.weightDecay = try number(value)
        case "seed":
            guard let s = UInt64(value) else { throw ConfigError("--vary seed: '\(value)' is not a non-negative integer") }
            config.seed = s
        default: throw ConfigError("--vary: unknown key '\(key)'")
        }
    }
}

/// One combination of the variations, with its own run dir.
public struct Variant: Sendable {
    public var name: String
    public var config: TrainConfig
}

/// Every combination, first variation outermost. Each variant gets the base's seed (so the
/// same initial weights where the model is the same) and data order, and its own folder.
public func makeVariants(base: TrainConfig, variations: [Variation]) throws -> [Variant] {
    var variants = [Variant(name: "", config: base)]
    for variation in variations {
        var next: [Variant] = []
        for v in variants {
            for value in variation.values {
                var config = v.config
                try Variation.apply(key: variation.key, value: value, to: &config)
                next.append(Variant(name: v.name.isEmpty ? "\(variation.key)=\(value)" : "\(v.name) \(variation.key)=\(value)", config: config))
            }
        }
        variants = next
    }
    for i in variants.indices {
        let folder = variants[i].name.map { $0.isLetter || $0.isNumber || "-_.=".contains($0) ? $0 : "_" }
        variants[i].config.runDir = base.resolvedRunDir + "/variants/" + String(folder)
        variants[i].config.resume = base.resume == nil ? nil : "auto"
        try variants[i].config.validate()
    }
    return variants
}

/// What a finished variant contributes to the report.
public struct VariantResult: Codable, Sendable {
    public var name: String
    public var summary: TrainSummary
    /// (step, training loss) from metrics.jsonl, skipped steps left out.
    public var losses: [StepLoss]

    public init(name: String, summary: TrainSummary, losses: [StepLoss]) {
        self.name = name; self.summary = summary; self.losses = losses
    }

    public struct StepLoss: Codable, Sendable {
        public var step: Int
        public var loss: Double
    }

    /// Reads a variant's metrics.jsonl line by line: a line that is not a step record (one
    /// kept on resume, see RunDirectory.keepMetrics) is left out of the chart, not the others.
    public static func losses(metricsPath: String) throws -> [StepLoss] {
        guard let fd = try openRegularFileForReading(metricsPath) else { return [] }
        defer { close(fd) }
        struct Record: Decodable { var step: Int; var loss: Double; var skipped: Bool? }
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        var out: [StepLoss] = []
        try forEachLine(fd: fd, path: metricsPath) { piece in
            guard piece.starts && piece.ends, let record = try? decoder.decode(Record.self, from: Data(piece.bytes)),
                  record.skipped != true else { return }
            out.append(StepLoss(step: record.step, loss: record.loss))
        }
        return out
    }
}

/// report.md, report.html (self-contained: inline SVG, no network), loss.svg, accuracy.svg.
public struct ComparisonReport {
    public var title: String
    public var command: String
    public var results: [VariantResult]
    public var worldSize: Int

    public init(title: String, command: String, results: [VariantResult], worldSize: Int) {
        self.title = title; self.command = command; self.results = results; self.worldSize = worldSize
    }

    public var lossChart: LineChart {
        LineChart(title: "Training loss", xLabel: "step", yLabel: "training loss (window mean)",
                  series: results.map { .init(name: $0.name, points: windowedLoss($0.losses.map { ($0.step, $0.loss) })) }, logY: true)
    }

    public var accuracyChart: LineChart {
        LineChart(title: "Test accuracy", xLabel: "epoch", yLabel: "test accuracy (%)",
                  series: results.map { r in
                      .init(name: r.name, points: zip(r.summary.evaluatedEpochs, r.summary.accuracyPerEpoch).map { (Double($0), $1 * 100) })
                  })
    }

    public var header: [String] {
        ["variant", "final test acc", "best test acc (epoch)", "final train loss", "wall time", "samples/s", "communication"]
    }

    public var rows: [[String]] {
        results.map { r in
            let s = r.summary
            return [r.name,
                    s.testAccuracy.map { String(format: "%.2f%%", $0 * 100) } ?? "-",
                    s.bestTestAccuracy.map { String(format: "%.2f%% (%d)", $0 * 100, s.bestEpoch ?? 0) } ?? "-",
                    s.finalTrainLoss.isFinite ? String(format: "%.4f", s.finalTrainLoss) : "diverged",
                    formatDuration(s.wallSeconds),
                    String(format: "%.0f", s.samplesPerSecond),
                    String(format: "%.1f%%", s.communicationShare * 100)]
        }
    }

    /// The table as aligned plain text, for the terminal.
    public var textTable: String {
        let all = [header] + rows
        let widths = header.indices.map { c in all.map { $0[c].count }.max()! }
        return all.map { row in row.indices.map { row[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ") }
            .joined(separator: "\n") + "\n"
    }

    public var markdown: String {
        var md = "# \(title)\n\n`\(command)`\n\n\(plural(worldSize, "rank")).\n\n"
        md += "| " + header.joined(separator: " | ") + " |\n|" + header.map { _ in "---" }.joined(separator: "|") + "|\n"
        for row in rows { md += "| " + row.joined(separator: " | ") + " |\n" }
        md += "\n![training loss](loss.svg)\n\n![test accuracy](accuracy.svg)\n"
        return md
    }

    public var html: String {
        var h = """
        <!DOCTYPE html>
        <html><head><meta charset="utf-8"><title>\(escapeHTML(title))</title>
        <style>body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}
        td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
        th{background:#f3f3f3}code{background:#f6f6f6;padding:2px 4px}</style></head><body>
        <h1>\(escapeHTML(title))</h1><p><code>\(escapeHTML(command))</code></p><p>\(plural(worldSize, "rank")).</p>
        <table><tr>
        """
        h += header.map { "<th>\(escapeHTML($0))</th>" }.joined() + "</tr>\n"
        for row in rows { h += "<tr>" + row.map { "<td>\(escapeHTML($0))</td>" }.joined() + "</tr>\n" }
        h += "</table>\n<div>\(lossChart.svg())</div>\n<div>\(accuracyChart.svg())</div>\n</body></html>\n"
        return h
    }

    /// Writes the four files into `directory`, each atomically.
    public func write(to directory: String) throws {
        try writeAtomically(markdown, to: directory + "/report.md")
        try writeAtomically(html, to: directory + "/report.html")
        try writeAtomically(lossChart.svg(), to: directory + "/loss.svg")
        try writeAtomically(accuracyChart.svg(), to: directory + "/accuracy.svg")
    }
}
