import DDPComm
import DDPSystem
import Foundation

/// The checkpoint a run resumed from: its path, and the step it records, which numbers the
/// checkpoints' names (a resume with `--allow-batch-change` counts its own steps anew).
public struct ResumedCheckpoint: Sendable {
    public var path: String
    public var step: Int
}

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
    /// `configJSON`: what config.json holds (Trainer.resolvedConfigJSON), else `config.json`.
    public static func prepare(config: TrainConfig, configJSON: String? = nil, world: Communicator, resumedAtStep: Int?,
                               resumedCheckpoint: ResumedCheckpoint? = nil) throws -> RunDirectory {
        let run = RunDirectory(path: config.resolvedRunDir)
        let warnings = try agreeOnSuccess(world) { () throws -> [String] in
            guard world.rank == 0 else { return [] }
            return try run.create(config: config, configJSON: configJSON, keepMetricsUpTo: resumedAtStep, resumedCheckpoint: resumedCheckpoint)
        }
        for warning in warnings { writeToStandardError("warning: \(warning)\n") }
        return run
    }

    /// The run dir of `compare`: its report and variants/ (each variant a run dir of its own,
    /// locked apart, so the comparison never waits for its own locks). A folder that holds
    /// another comparison is refused unless `resuming` (its variants would be mixed with this
    /// one's), and so is a training run's folder.
    public static func prepareComparison(path: String, resuming: Bool, world: Communicator) throws {
        let warnings = try agreeOnSuccess(world) { () throws -> [String] in
            guard world.rank == 0 else { return [] }
            let folder = RunDirectory(path: path)
            // A folder of another program is refused as such first (claim checks it again).
            try folder.checkOwnership(acceptingOldComparison: true)
            if let held = ["config.json", "metrics.jsonl", "checkpoints"].first(where: { fileType(path + "/" + $0) != nil }) {
                throw TrainingError("run dir \(path) holds a training run (\(held)), not a comparison; choose another --run-dir",
                                    exitCode: ExitStatus.inputError)
            }
            if !resuming, let held = ["variants", "report.md", "report.html"].first(where: { fileType(path + "/" + $0) != nil }) {
                throw TrainingError("run dir \(path) holds another comparison (\(held)); continue it with --resume auto, "
                                    + "or choose another --run-dir", exitCode: ExitStatus.inputError)
            }
            return try folder.claim(acceptingOldComparison: true)
        }
        for warning in warnings { writeToStandardError("warning: \(warning)\n") }
    }

    /// Rank 0's part of `prepare`: claims and locks the folder, then writes config.json and
    /// metrics.jsonl. Returns warnings for the user. Nothing is overwritten before every check passed.
    public func create(config: TrainConfig, configJSON: String? = nil, keepMetricsUpTo resumedStep: Int?,
                       resumedCheckpoint: ResumedCheckpoint? = nil) throws -> [String] {
        var warnings = try claim(acceptingOldComparison: false)
        // Locked for this run (a file system without locks says so in a warning): any
        // temporary file of ours here was left by a run killed while writing it.
        if warnings.isEmpty { warnings += removeLeftTemporaryFiles() }
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
        if let resumedCheckpoint, let resumedStep {
            warnings += try resumedStep == resumedCheckpoint.step ? setAsideCheckpoints(after: resumedCheckpoint)
                                                                  : renumberCheckpoints(resumed: resumedCheckpoint, atStep: resumedStep)
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
        try writeAtomically((configJSON ?? config.json) + "\n", to: configPath)
        return warnings
    }

    /// On resume from a checkpoint of step S: checkpoints of later steps belong to the future
    /// this run replaces (a resume from an older file, e.g. one before a divergence; damaged
    /// newer files that `--resume auto` passed over; or, for a resume from a file set aside
    /// earlier in superseded-after-step-K, this folder's checkpoints after K). Left in place,
    /// the next `--resume auto` would continue from them, the replaced run, as if it were this
    /// one. They are moved, never deleted, into checkpoints/superseded-after-step-<S> (-2, -3,
    /// ... when taken), where no resume and no pruning looks. S is the step the checkpoint
    /// records, the numbering of the files' names (after `--allow-batch-change` the run counts
    /// its steps anew). The resumed file itself and anything but regular files stay. Moved
    /// before metrics.jsonl is cut, and moved back if a move fails, so that a failure leaves
    /// the folder as it was. Returns a note naming them.
    func setAsideCheckpoints(after resumed: ResumedCheckpoint) throws -> [String] {
        var resumedStep = resumed.step
        let (resumedFolder, _) = splitPath(resumed.path)
        if let match = resumedFolder.wholeMatch(of: /.*\/superseded-after-step-([0-9]{8,})(-[0-9]+)?/),
           Self.sameFile(splitPath(resumedFolder).directory, checkpointsPath), let k = Int(match.1) {
            resumedStep = min(resumedStep, k)
        }
        let later = try CheckpointStore(directory: checkpointsPath, keep: 1).checkpoints()
            .filter { $0.step > resumedStep && fileType($0.path) == S_IFREG && !Self.sameFile($0.path, resumed.path) }
            .reversed()
        guard !later.isEmpty else { return [] }
        func fail(_ call: String, _ file: String) -> TrainingError {
            TrainingError("run dir \(path): cannot set aside the checkpoints after step \(resumedStep): \(call) \(file) failed: \(errnoText(errno))",
                          exitCode: ExitStatus.checkpointWriteFailed)
        }
        let folder = try moveAside(later.map(\.path), into: String(format: "superseded-after-step-%08d", resumedStep), fail: fail).folder
        let names = later.map { splitPath($0.path).name }
        return ["resumed from \(resumed.path) (step \(resumed.step)): the checkpoints of later steps (\(names.joined(separator: ", "))) "
                + "belong to the run this one replaces; moved to \(folder), so that --resume auto continues this run"]
    }

    /// On a resume with another global batch (`--allow-batch-change`), the run counts its
    /// steps anew (step 16 at batch 32 is step 8 at 64), and checkpoints are named by the
    /// run's steps: left in place, the old numbering's larger names would outrank this run's
    /// own (its step-00000012 is newer than their step-00000016), and a later `--resume auto`
    /// would go back to the old state. So every checkpoint of the old numbering is moved
    /// (never deleted) to checkpoints/superseded-by-batch-change-at-step-<S> (-2, ... when
    /// taken), and the file resumed from is linked back under this run's name for its step,
    /// so that a run that dies before its first checkpoint still resumes there.
    func renumberCheckpoints(resumed: ResumedCheckpoint, atStep step: Int) throws -> [String] {
        let old = Array(try CheckpointStore(directory: checkpointsPath, keep: 1).checkpoints().filter { fileType($0.path) == S_IFREG }.reversed())
        func fail(_ call: String, _ file: String) -> TrainingError {
            TrainingError("run dir \(path): cannot move the checkpoints of the old batch aside: \(call) \(file) failed: \(errnoText(errno))",
                          exitCode: ExitStatus.checkpointWriteFailed)
        }
        // Which of them is the file resumed from (it may be named another way), before it moves.
        let resumedIndex = old.firstIndex { $0.path == resumed.path || Self.sameFile($0.path, resumed.path) }
        let (folder, moved) = try moveAside(old.map(\.path), into: String(format: "superseded-by-batch-change-at-step-%08d", resumed.step), fail: fail)
        let source = resumedIndex.map { moved[$0].to } ?? resumed.path
        let name = CheckpointStore.name(step: step)
        // A file on another file system (a --resume FILE from elsewhere) is copied instead.
        if link(source, checkpointsPath + "/" + name) != 0
            && (errno != EXDEV || (try? FileManager.default.copyItem(atPath: source, toPath: checkpointsPath + "/" + name)) == nil) {
            let failure = fail("link", source)
            putBack(moved, removing: folder)
            throw failure
        }
        let names = old.map { splitPath($0.path).name }
        return ["resumed from \(resumed.path) (step \(resumed.step) at the old global batch, step \(step) at this one): checkpoints are named "
                + "by this run's steps, so those of the old numbering (\(names.joined(separator: ", "))) were moved to \(folder), "
                + "and the file resumed from is also \(checkpointsPath)/\(name)"]
    }

    /// Moves `files` into a new folder checkpoints/<name> (<name>-2, -3, ... when taken); when
    /// a move fails, what was moved goes back and the folder goes, so that nothing changed.
    /// The folder and each file's way (in the order of `files`).
    private func moveAside(_ files: [String], into name: String, fail: (String, String) -> TrainingError) throws
        -> (folder: String, moved: [(from: String, to: String)]) {
        let base = checkpointsPath + "/" + name
        var folder: String?
        for n in 1...1000 {
            let candidate = base + (n == 1 ? "" : "-\(n)")
            if mkdir(candidate, 0o755) == 0 { folder = candidate; break }
            guard errno == EEXIST else { throw fail("mkdir", candidate) }
        }
        guard let folder else {
            throw TrainingError("run dir \(path): \(base) and 999 more names are taken; move them away", exitCode: ExitStatus.inputError)
        }
        var moved: [(from: String, to: String)] = []
        for file in files {
            let target = folder + "/" + splitPath(file).name
            guard rename(file, target) == 0 else {
                let failure = fail("rename", file)
                putBack(moved, removing: folder)
                throw failure
            }
            moved.append((file, target))
        }
        return (folder, moved)
    }

    /// Undoes `moveAside`.
    private func putBack(_ moved: [(from: String, to: String)], removing folder: String) {
        for move in moved.reversed() { rename(move.to, move.from) }
        rmdir(folder)
    }

    /// Whether two paths name the same file (device and inode), following links.
    static func sameFile(_ a: String, _ b: String) -> Bool {
        var x = stat(), y = stat()
        return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino
    }

    /// Removes the temporary files (`.<name>.tmp.<16 hex digits>`, TemporaryFile) that a run
    /// killed while writing a checkpoint or metrics left in the folder and in checkpoints/
    /// (SIGKILL, the OOM killer: a signal that can be caught removes its own): each as large
    /// as what it was writing, they would pile up with every such kill. Returns a note.
    /// Only the names train writes: `plot` and `eval` work beside a run without its lock, and
    /// their temporary files are theirs.
    func removeLeftTemporaryFiles() -> [String] {
        var removed: [String] = []
        for (folder, prefixes) in [(path, [".metrics.jsonl.tmp.", ".config.json.tmp."]), (checkpointsPath, [".step-"])] {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { continue }
            for name in names.sorted() where TemporaryFile.isTemporaryName(name) && prefixes.contains(where: { name.hasPrefix($0) }) {
                let file = folder + "/" + name
                if fileType(file) == S_IFREG, unlink(file) == 0 { removed.append(file) }
            }
        }
        guard !removed.isEmpty else { return [] }
        return ["removed \(removed.count) temporary file\(removed.count == 1 ? "" : "s") a killed run left: \(removed.joined(separator: ", "))"]
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
        // Earlier versions spelled keys as the flags do (run-dir), this one in snake_case.
        return ["model", "dataset", "seed"].allSatisfy { object[$0] != nil } && (object["run-dir"] != nil || object["run_dir"] != nil)
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
        // Failing calls here write (the temporary file, the rename): disk full is 74, as for
        // any metrics line; a metrics.jsonl that cannot be read stays an input error.
        try DDPSystem.AtomicFile.replace(metricsPath, failure: { failure in
            TrainingError("\(failure.path ?? metricsPath): \(failure.call) failed: \(failure.reason)", exitCode: ExitStatus.checkpointWriteFailed)
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

/// Run dirs that no --run-dir names: each run gets a new folder, runs/YYYYMMDD-HHMMSS (local
/// time; -2, -3, ... when two start in the same second), and runs/latest, a symbolic link,
/// names the newest, so that `--resume auto` alone continues it. Rank 0 decides and creates the
/// folder (mkdir, which fails when the name is taken, so two runs never share one) and every
/// rank receives the name.
public enum DefaultRunDirectory {
    public static let parent = "runs"
    public static let latest = parent + "/latest"

    /// The run dir for `config`: its own --run-dir, or with `--resume auto` the folder
    /// runs/latest names (a new one when there is none), or a new folder. `created` is the
    /// folder made here, which `removeIfUnused` takes away again when the run fails before
    /// it starts.
    public static func resolve(_ config: TrainConfig, world: Communicator) throws -> (config: TrainConfig, created: String?) {
        guard config.runDir == nil else { return (config, nil) }
        struct Decision: Codable { var path: String; var created: Bool }
        let decided = try decideOnRankZero(world) { () throws -> Decision in
            if config.resume == "auto", let continued = try latestTarget() { return Decision(path: continued, created: false) }
            return Decision(path: try makeNew(), created: true)
        }
        var resolved = config
        resolved.runDir = decided.path
        return (resolved, decided.created ? decided.path : nil)
    }

    /// The folder runs/latest names (a run dir of an earlier version may be a folder under
    /// that name itself), or nil when there is none.
    static func latestTarget() throws -> String? {
        switch fileType(latest) {
        case nil: return nil
        case S_IFDIR?: return latest
        case S_IFLNK?:
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: latest) else {
                throw TrainingError("\(latest): cannot read the link: \(errnoText(errno))", exitCode: ExitStatus.inputError)
            }
            let path = target.hasPrefix("/") ? target : parent + "/" + target
            guard fileType(path, following: true) == S_IFDIR else {
                throw TrainingError("\(latest) names \(path), which is not a folder; give --run-dir", exitCode: ExitStatus.inputError)
            }
            return path
        case let type?:
            throw TrainingError("\(latest) is \(describeFileType(type)), not a link to a run dir; give --run-dir", exitCode: ExitStatus.inputError)
        }
    }

    static func makeNew(now: Date = Date()) throws -> String {
        do { try createDirectories(parent) } catch let error as TrainingError {
            throw TrainingError("default run dir: \(error.message); give --run-dir", exitCode: ExitStatus.inputError)
        }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        let stamp = formatter.string(from: now)
        for n in 1...1000 {
            let path = parent + "/" + stamp + (n == 1 ? "" : "-\(n)")
            if mkdir(path, 0o755) == 0 { return path }
            let code = errno
            guard code == EEXIST else {
                throw TrainingError("default run dir: cannot create \(path): \(errnoText(code)); give --run-dir", exitCode: ExitStatus.inputError)
            }
        }
        throw TrainingError("default run dir: \(parent)/\(stamp) and 999 more names are taken; give --run-dir", exitCode: ExitStatus.inputError)
    }

    /// Rank 0, once the run dir is prepared: runs/latest now names `path` when it is a folder
    /// runs/NAME (the default's, or one given so), whether the run is new or resumed. A new
    /// link is made under a temporary name and renamed over the old one, so that a reader
    /// always finds one. Returns a warning when that cannot be done (the run goes on).
    public static func pointLatest(at path: String) -> String? {
        var relative = Substring(path)
        while relative.hasPrefix("./") { relative = relative.dropFirst(2) }
        guard relative.hasPrefix(parent + "/") else { return nil }
        let name = String(relative.dropFirst(parent.count + 1))
        guard !name.isEmpty, !name.contains("/"), name != "latest", !name.hasPrefix(".") else { return nil }
        if let type = fileType(latest), type != S_IFLNK {
            return "\(latest) is \(describeFileType(type)) (the default run dir of an earlier version?), not a link: it is left as it is "
                + "and does not name \(path); move it away to have runs/latest name the newest run"
        }
        let temporary = parent + "/.latest-\(getpid())"
        unlink(temporary)
        guard symlink(name, temporary) == 0 else { return "\(latest): cannot make the link: symlink failed: \(errnoText(errno))" }
        guard rename(temporary, latest) == 0 else {
            let code = errno
            unlink(temporary)
            return "\(latest): cannot update the link: rename failed: \(errnoText(code))"
        }
        return nil
    }

    /// Rank 0: takes away a folder `resolve` created when the run failed before using it
    /// (rmdir: only an empty folder goes).
    public static func removeIfUnused(_ created: String?, world: Communicator) {
        guard let created, world.rank == 0 else { return }
        rmdir(created)
    }
}
