import Foundation
import XCTest

/// A real run's logs as people read them: TensorBoard's event files read back with the
/// `tensorboard` package from PyPI (launch/setup installs it into the PyTorch environment),
/// and `ddptrain plot`'s page rendered in headless Chromium.
final class TensorBoardTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-tensorboard-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    /// 512 samples, per-rank batch 16 on 2 ranks: 16 steps per epoch, 2 epochs, an evaluation after each.
    func train(_ run: String, _ extra: [String] = []) throws {
        let args = ["train", "--model", "mlp", "--train-samples", "512", "--per-rank-batch", "16", "--epochs", "2",
                    "--eval-every", "1", "--checkpoint-every", "8", "--log-every", "8", "--run-dir", run] + extra
        let r = try MPIRun.run(ranks: 2, args, timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    /// metrics.jsonl's rows, parsed. Every number is read again from its text with
    /// Double(String), which is exact: Foundation's JSONSerialization on Linux reads some
    /// doubles a few ulps off ("0.004199709001113661" as ...662), and such a value, converted
    /// to Float as TensorBoard's are, can land one Float ulp away from the product's own.
    func rows(_ run: String) throws -> [[String: Any]] {
        try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { line in
            var row = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            for key in row.keys {
                // Numbers with a fraction or an exponent (whole numbers and booleans stay as parsed).
                guard let start = line.range(of: "\"\(key)\":")?.upperBound else { continue }
                let token = String(line[start...].prefix { "0123456789+-.eE".contains($0) })
                guard token.contains(where: { ".eE".contains($0) }) else { continue }
                row[key] = try XCTUnwrap(Double(token), "\(key) in \(line)")
            }
            return row
        }
    }

    struct Scalar: Equatable {
        var step: Int
        var wallTime: Double
        var value: Float
    }

    /// What TensorBoard should show, from metrics.jsonl: every finite value of a step row as
    /// "train/KEY" or "time/KEY", of an evaluation row as "test/loss", "test/accuracy" and
    /// "test/class_accuracy/CLASS", at the row's step and time.
    func expectedScalars(_ rows: [[String: Any]]) throws -> [String: [Scalar]] {
        var out: [String: [Scalar]] = [:]
        func add(_ tag: String, _ row: [String: Any], _ value: Any?) throws {
            let number: Double? = (value as? Bool).map { $0 ? 1 : 0 } ?? (value as? Double)
            guard let number, number.isFinite else { return }
            let step = try XCTUnwrap(row["step"] as? Int), time = try XCTUnwrap(row["time"] as? Double)
            out[tag, default: []].append(Scalar(step: step, wallTime: time, value: Float(number)))
        }
        for row in rows {
            switch row["kind"] as? String {
            case "step":
                for key in ["loss", "accuracy", "lr", "grad_norm"] { try add("train/" + key, row, row[key]) }
                for key in ["clipped", "skipped"] { try add("train/" + key, row, try XCTUnwrap(row[key] as? Bool)) }
                for key in ["data_s", "compute_s", "forward_s", "backward_s", "comm_s", "optimizer_s"] { try add("time/" + key, row, row[key]) }
            case "eval":
                try add("test/loss", row, row["test_loss"])
                try add("test/accuracy", row, row["test_accuracy"])
                for (c, value) in try XCTUnwrap(row["class_accuracy"] as? [Any]).enumerated() {
                    try add("test/class_accuracy/\(c)", row, value)
                }
            default: XCTFail("a row of another kind: \(row)")
            }
        }
        return out
    }

    /// The scalars TensorBoard reads from a folder of event files (EventAccumulator, every
    /// value kept).
    func readWithTensorBoard(_ directory: String) throws -> [String: [Scalar]] {
        let python = ProcessInfo.processInfo.environment["DDPTRAIN_TORCH_PYTHON"] ?? "/opt/ddptrain-peers/bin/python"
        let script = """
            import json, sys
            from tensorboard.backend.event_processing import event_accumulator as ea
            accumulator = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})
            accumulator.Reload()
            print(json.dumps({tag: [[str(e.step), repr(e.wall_time), repr(e.value)] for e in accumulator.Scalars(tag)]
                              for tag in accumulator.Tags()["scalars"]}))
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", script, directory]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        do { try p.run() } catch {
            XCTFail("cannot run \(python) (launch/setup installs it with tensorboard; or set DDPTRAIN_TORCH_PYTHON): \(error)")
            throw error
        }
        let stdout = DataCollector(out.fileHandleForReading), stderr = DataCollector(err.fileHandleForReading)
        p.waitUntilExit()
        let text = stdout.finish(), errors = stderr.finish()
        XCTAssertEqual(p.terminationStatus, 0, "TensorBoard could not read the files (launch/setup installs tensorboard): \(errors)")
        // Numbers travel as text, read with Double(String): exact (see `rows`).
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: [[String]]], text)
        return try object.mapValues { scalars in
            try scalars.map { s in
                Scalar(step: try XCTUnwrap(Int(s[0])), wallTime: try XCTUnwrap(Double(s[1])), value: Float(try XCTUnwrap(Double(s[2]))))
            }
        }
    }

    /// Every tag, step, time and value TensorBoard reads equals metrics.jsonl's, also after a
    /// resume: the resumed run appends a second file, the first is kept as it was, and the
    /// steps it logs again replace the first file's (each step once, in order).
    func testEventFilesReadBackWithTensorBoardMatchTheMetrics() throws {
        let run = scratch.appendingPathComponent("run").path
        try train(run)
        let events = run + "/tensorboard"
        let firstFiles = try FileManager.default.contentsOfDirectory(atPath: events)
        XCTAssertEqual(firstFiles.count, 1, "\(firstFiles)")
        let firstFile = events + "/" + firstFiles[0]
        XCTAssertTrue(firstFiles[0].hasPrefix("events.out.tfevents."), firstFiles[0])
        let firstBytes = try Data(contentsOf: URL(fileURLWithPath: firstFile))

        // The finished run again from its step-16 checkpoint: steps 17 to 32 and the second
        // evaluation are logged again, with new times.
        try train(run, ["--resume", run + "/checkpoints/step-00000016.safetensors"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: events).count, 2)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: firstFile)), firstBytes, "the first file is kept as it was")

        let rows = try rows(run)
        XCTAssertEqual(rows.filter { $0["kind"] as? String == "eval" }.map { $0["step"] as? Int }, [16, 32])
        let expected = try expectedScalars(rows)
        let read = try readWithTensorBoard(events)
        XCTAssertEqual(Set(read.keys), Set(expected.keys))
        XCTAssertEqual(expected["train/loss"]?.map(\.step), Array(1...32))
        XCTAssertEqual(expected["test/class_accuracy/9"]?.map(\.step), [16, 32])
        for (tag, scalars) in expected.sorted(by: { $0.key < $1.key }) {
            XCTAssertEqual(read[tag], scalars, tag)
        }
    }

    /// A run whose events folder cannot be made (a file in its place) stops before training on
    /// every rank with the reason, exit 65, and no MPI_Abort.
    func testEventsFolderThatCannotBeMadeStopsTheRun() throws {
        let run = scratch.appendingPathComponent("blocked").path
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        try Data("not a folder\n".utf8).write(to: URL(fileURLWithPath: run + "/tensorboard"))
        try Data().write(to: URL(fileURLWithPath: run + "/.ddptrain-run"))  // a run dir of ddptrain's
        let r = try MPIRun.run(ranks: 2, ["train", "--model", "mlp", "--train-samples", "512", "--steps", "2", "--eval-every", "0",
                                          "--run-dir", run], timeout: 60)
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains("ddptrain: error on rank 0: cannot create \(run)/tensorboard: Not a directory (errno 20)"), r.stderr)
        XCTAssertFalse(r.stderr.contains("MPI_ABORT") || r.stderr.contains("ORTE"), r.stderr)
        XCTAssertEqual(try String(contentsOfFile: run + "/tensorboard", encoding: .utf8), "not a folder\n")
    }

    /// `ddptrain plot` draws a real run's curves: every series with its number of points,
    /// one page that renders in headless Chromium.
    func testPlotOfAShortRun() throws {
        let run = scratch.appendingPathComponent("plotted").path
        try train(run)
        let plot = try Background(MPIRun.binary, ["plot", run]).wait(timeout: 30)
        XCTAssertEqual(plot.status, 0, plot.stderr)
        XCTAssertEqual(plot.stdout, "plot: \(run)/plot.html (32 steps, 2 evaluations)\n")
        let html = try String(contentsOfFile: run + "/plot.html", encoding: .utf8)
        let classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
        let series = [("train (window mean)", 32), ("test", 2), ("lr", 32), ("grad norm (window mean)", 32), ("data", 32),
                      ("compute", 32), ("communication", 32), ("optimizer", 32)]
            + classes.enumerated().map { ("\($0.offset) \($0.element)", 2) }
        for (name, points) in series {
            XCTAssertTrue(html.contains("data-variant=\"\(name)\" data-points=\"\(points)\""), "\(name) with \(points) points")
        }
        XCTAssertEqual(html.components(separatedBy: "<polyline class=\"series\"").count - 1, 2 + 2 + 1 + 1 + 4 + 10)
        XCTAssertFalse(html.contains("<script") || html.contains("<link"), "self-contained")
        try Chromium.screenshot(html: run + "/plot.html", png: scratch.appendingPathComponent("plot.png").path, windowSize: "1600,1900")

        // A page that cannot be written is exit 74, with the reason.
        let folder = scratch.appendingPathComponent("no/such/folder").path
        let unwritable = try Background(MPIRun.binary, ["plot", run, "--out", folder + "/plot.html"]).wait(timeout: 30)
        XCTAssertEqual(unwritable.status, 74, unwritable.stderr)
        XCTAssertTrue(unwritable.stderr.hasPrefix("ddptrain plot: \(folder)/plot.html: open(\(folder)/.plot.html.tmp."), unwritable.stderr)
        XCTAssertTrue(unwritable.stderr.hasSuffix(") failed: No such file or directory (errno 2)\n"), unwritable.stderr)

        let missing = try Background(MPIRun.binary, ["plot", scratch.appendingPathComponent("nothing").path]).wait(timeout: 30)
        XCTAssertEqual(missing.status, 65, missing.stderr)
        XCTAssertEqual(missing.stderr, "ddptrain plot: \(scratch.appendingPathComponent("nothing").path)/metrics.jsonl: no such file (is this a run dir?)\n")
    }

}
