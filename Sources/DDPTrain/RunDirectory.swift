import DDPComm
import DDPSystem
import Foundation

/// The run dir: config.json, metrics.jsonl and checkpoints/, plus two files of ddptrain's own:
/// `.ddptrain-run`, the marker that says ddptrain made the folder, and `.lock`, which rank 0
/// holds locked while a run uses the folder. Rank 0 creates it; every rank learns whether that
/// worked before training starts.
///
/// ddptrain never overwrites a file it did not create: a folder that exists, is not empty and is
/// neither marked nor a run dir of an earlier version (a ddptrain config.json and checkpoints/)
/// is refused. The lock is a kernel lock (flock), dropped when the process ends however it ends,
/// so a crashed run never blocks its own restart; readers (eval, inspect) take no lock.
public struct RunDirectory: Sendable {
    public let path: String
    public var metricsPath: String { path + "/metrics.jsonl" }
    public var configPath: String { path + "/config.json" }
    public var checkpointsPath: String { path + "/checkpoints" }
    var markerPath: String { path + "/" + RunDirectory.markerName }
    var lockPath: String { path + "/" + RunDirectory.lockName }

    public static let markerName = ".ddptrain-run"
    public static let lockName = ".lock"
    /// What `compare` writes into its own run dir, next to variants/ (for folders made before the marker).
    static let comparisonEntries: Set<String> = ["variants", "report.md", "report.html", "loss.svg", "accuracy.svg"]
    /// launch/train appends its log to the run dir before ddptrain starts: a folder that holds
    /// only that is as good as empty.
    static let launcherLog = "launch.log"

    public init(path: String) { self.path = path }

    /// `resumedAtStep` nil: a fresh run, which refuses a run dir that holds checkpoints
    /// already (they belong to another run, and `--resume auto` would later mix them up
    /// with this one's). Otherwise metrics.jsonl keeps the steps up to the resumed one.
    public static func prepare(config: TrainConfig, world: Communicator, resumedAtStep: Int?) throws -> RunDirectory {
        let run = RunDirectory(path: config.runDir)
        let warnings = try agreeOnSuccess(world) { () throws -> [String] in
            guard world.rank == 0 else { return [] }
            return try run.create(config: config, keepMetricsUpTo: resumedAtStep)
        }
        for warning in warnings { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
        return run
    }

    /// The run dir of `compare`: its report and variants/ (each variant a run dir of its own,
    /// locked apart, so the comparison never waits for its own locks).
    public static func prepareComparison(path: String, world: Communicator) throws {
        let warnings = try agreeOnSuccess(world) { () throws -> [String] in
            guard world.rank == 0 else { return [] }
            return try RunDirectory(path: path).claim(acceptingOldComparison: true)
        }
        for warning in warnings { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
    }

    /// Rank 0's part of `prepare`: claims and locks the folder, then writes config.json and
    /// metrics.jsonl. Returns warnings for the user. Nothing is overwritten before every check passed.
    public func create(config: TrainConfig, keepMetricsUpTo resumedStep: Int?) throws -> [String] {
        var warnings = try claim(acceptingOldComparison: false)
        if resumedStep == nil, config.resume == nil,
           let existing = try CheckpointStore(directory: checkpointsPath, keep: config.keep).files().first {
            throw TrainingError("run dir \(path) already holds checkpoints (\(existing)); continue that run "
                                + "with --resume auto, or start this one in another --run-dir", exitCode: ExitStatus.inputError)
        }
        for name in ["config.json", "metrics.jsonl"] {
            if let type = fileType(path + "/" + name), type != S_IFREG {
                throw TrainingError("run dir \(path): \(name) is \(describeFileType(type)), not a file ddptrain wrote; "
                                    + "move it away", exitCode: ExitStatus.inputError)
            }
        }
        if let type = fileType(checkpointsPath, following: true), type != S_IFDIR {
            throw TrainingError("run dir \(path): checkpoints is \(describeFileType(type)), not a directory", exitCode: ExitStatus.inputError)
        }
        // metrics.jsonl first: if it cannot be read, config.json stays as it was too.
        if let resumedStep {
            warnings += try keepMetrics(upTo: resumedStep)
        } else {
            try writeAtomically("", to: metricsPath)
        }
        do {
            try createDirectories(checkpointsPath)
        } catch let error as TrainingError {
            throw TrainingError("run dir \(path): \(error.message)", exitCode: ExitStatus.inputError)
        }
        try writeAtomically(config.json + "\n", to: configPath)
        return warnings
    }

    /// Makes sure the folder is new, empty or ddptrain's, creates it, locks it for this process
    /// and marks it. Returns warnings (a file system without locks).
    func claim(acceptingOldComparison: Bool) throws -> [String] {
        try checkOwnership(acceptingOldComparison: acceptingOldComparison)
        do {
            try createDirectories(path)
        } catch let error as TrainingError {
            throw TrainingError("run dir \(path): \(error.message)", exitCode: ExitStatus.inputError)
        }
        guard access(path, W_OK) == 0 else {
            throw TrainingError("run dir \(path) is not writable: \(errnoText(errno))", exitCode: ExitStatus.inputError)
        }
        // The marker before the lock: a folder that holds only a lock file is never ddptrain's.
        switch fileType(markerPath) {
        case S_IFREG?: break
        case nil: try writeAtomically("This folder is a ddptrain run dir (config.json, metrics.jsonl, checkpoints/).\n", to: markerPath)
        case let type?:
            throw TrainingError("run dir \(path): \(RunDirectory.markerName) is \(describeFileType(type)), not ddptrain's marker file",
                                exitCode: ExitStatus.inputError)
        }
        return try RunDirectoryLocks.shared.acquire(directory: path, lockPath: lockPath)
    }

    /// Refuses a folder that holds files ddptrain did not create.
    func checkOwnership(acceptingOldComparison: Bool) throws {
        var info = stat()
        if stat(path, &info) != 0 {
            let code = errno
            if code == ENOENT { return }
            throw TrainingError("run dir \(path): cannot examine it: \(errnoText(code))", exitCode: ExitStatus.inputError)
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw TrainingError("run dir \(path) exists and is not a directory", exitCode: ExitStatus.inputError)
        }
        let entries: [String]
        do {
            entries = try FileManager.default.contentsOfDirectory(atPath: path).sorted()
        } catch {
            throw TrainingError("run dir \(path): cannot list it: \(describe(error))", exitCode: ExitStatus.inputError)
        }
        let ours = entries.filter { $0 != RunDirectory.launcherLog }
        if ours.isEmpty || entries.contains(RunDirectory.markerName) || isOldRunDir
            || (acceptingOldComparison && isOldComparison(ours)) { return }
        let shown = entries.prefix(6).joined(separator: ", ") + (entries.count > 6 ? " and \(entries.count - 6) more" : "")
        throw TrainingError("run dir \(path) is not empty and is not a ddptrain run dir (it holds \(shown), and no "
                            + "\(RunDirectory.markerName) marker): ddptrain does not overwrite files it did not create; "
                            + "choose a new or empty folder for --run-dir", exitCode: ExitStatus.inputError)
    }

    /// A run dir made before the marker: a ddptrain config.json (with our keys) and checkpoints/.
    var isOldRunDir: Bool {
        guard fileType(checkpointsPath, following: true) == S_IFDIR,
              case .success(let bytes) = RegularFile.read(configPath, limit: 1 << 20, followingLinks: false), let data = Optional(Data(bytes)),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return false }
        return ["run-dir", "model", "dataset", "seed"].allSatisfy { object[$0] != nil }
    }

    /// A comparison folder made before the marker: only what `compare` writes there.
    func isOldComparison(_ entries: [String]) -> Bool {
        fileType(path + "/variants", following: true) == S_IFDIR && entries.allSatisfy(RunDirectory.comparisonEntries.contains)
    }

    /// On resume: metrics.jsonl keeps its lines up to `step` byte for byte and drops the later
    /// ones (the resumed run logs those steps again). It is read line by line, never whole, and
    /// the result replaces it by rename. A line that is not a step record (not JSON, not UTF-8,
    /// no integer "step") is kept as it is, with a warning: ddptrain does not drop what it cannot read.
    /// A file that cannot be read stops the run with the reason, before anything is written.
    func keepMetrics(upTo resumedStep: Int) throws -> [String] {
        guard let input = try openRegularFileForReading(metricsPath) else {
            try writeAtomically("", to: metricsPath)
            return []
        }
        defer { close(input) }
        var lineNumber = 0
        var unreadLines: [Int] = []
        var unterminated = false
        let decoder = JSONDecoder()
        struct StepOnly: Decodable { var step: Int }
        try DDPSystem.AtomicFile.replace(metricsPath, failure: { failure in
            TrainingError("\(failure.path ?? metricsPath): \(failure.call) failed: \(failure.reason)", exitCode: ExitStatus.inputError)
        }) { output, temporary throws(TrainingError) in
            do {
                try forEachLine(fd: input, path: metricsPath) { piece in
                    if piece.starts { lineNumber += 1 }
                    let keep: Bool
                    if !(piece.starts && piece.ends) {
                        // Longer than any step record: not one; kept, piece by piece.
                        if piece.starts { unreadLines.append(lineNumber) }
                        keep = true
                    } else if piece.bytes.allSatisfy({ $0 == 32 || $0 == 9 || $0 == 13 }) {
                        keep = true
                    } else if let record = try? decoder.decode(StepOnly.self, from: Data(piece.bytes)) {
                        keep = record.step <= resumedStep
                    } else {
                        unreadLines.append(lineNumber)
                        keep = true
                    }
                    guard keep else { return }
                    try writeEvery(piece.bytes, to: output, path: temporary)
                    if piece.ends {
                        if !piece.terminated { unterminated = true }
                        try writeEvery([10], to: output, path: temporary)
                    }
                }
            } catch let error as TrainingError {
                throw error
            } catch {
                throw TrainingError("\(metricsPath): \(error)", exitCode: ExitStatus.inputError)
            }
        }
        var warnings: [String] = []
        if !unreadLines.isEmpty {
            let shown = unreadLines.prefix(10).map(String.init).joined(separator: ", ") + (unreadLines.count > 10 ? ", ..." : "")
            warnings.append("\(metricsPath): \(unreadLines.count) line\(unreadLines.count == 1 ? " is" : "s are") not a step record "
                            + "(line \(shown)); kept as \(unreadLines.count == 1 ? "it is" : "they are")")
        }
        if unterminated { warnings.append("\(metricsPath): its last line had no line end (a run stopped while writing it); one was added") }
        return warnings
    }
}

/// A Foundation error's reason without the noise of its domain and code.
func describe(_ error: Error) -> String {
    let ns = error as NSError
    if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
        return String(cString: strerror(Int32(underlying.code)))
    }
    return ns.localizedDescription
}
