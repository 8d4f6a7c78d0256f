import ArgumentParser
import DDPSystem
import DDPTrain
import Foundation

struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw one run's curves from its metrics.jsonl as a self-contained HTML page.",
        discussion: """
            Charts against the step: training and test loss, training and test accuracy, learning rate, gradient \
            norm, the step time split, and test accuracy per class; the run's facts above them and its config.json \
            below. Runs without MPI, also on a run in progress. Writes RUN_DIR/plot.html unless --out is given.
            """)

    @Argument(help: "The run dir (it holds metrics.jsonl).")
    var runDir: String
    @Option(help: "Where to write the page (default RUN_DIR/plot.html). An existing file there must be a page plot wrote, or give --force.")
    var out: String?
    @Flag(help: "Replace the regular file at --out whatever wrote it (never a device, a FIFO, a directory or a link).")
    var force = false

    private var output: String { out ?? runDir + "/plot.html" }

    func validate() throws {
        // RUN_DIR/plot.html is plot's own by name (pages of earlier versions carry no
        // generator tag); another path must hold a page plot wrote.
        try OutputFile(path: output, option: out == nil ? "the page" : "--out", kind: "a page plot wrote", isOwnKind: { path in
            out == nil || OutputFile.starts(path, within: 512) { RunPlot.isPlotPage(String(decoding: $0, as: UTF8.self)) }
        }).check(force: force)
    }

    func run() throws {
        do {
            let plot = try RunPlot(runDir: runDir)
            let metrics = plot.metrics
            guard !metrics.steps.isEmpty else {
                throw TrainingError("\(runDir)/metrics.jsonl holds no step records", exitCode: ExitStatus.inputError)
            }
            if metrics.otherLines > 0 {
                writeToStandardError("warning: \(runDir)/metrics.jsonl: \(metrics.otherLines) line\(metrics.otherLines == 1 ? " is" : "s are") "
                                               + "neither a step nor an evaluation record; left out\n")
            }
            do {
                try writeAtomically(plot.html, to: output)
            } catch let error as TrainingError {
                throw TrainingError(error.message, exitCode: ExitStatus.checkpointWriteFailed)
            }
            print("plot: \(output) (\(metrics.steps.count) steps, \(metrics.evaluations.count) evaluations)")
        } catch let error as TrainingError {
            writeToStandardError("ddptrain plot: \(error.message)\n")
            throw ExitCode(error.exitCode)
        }
    }
}
