import DDPComm
import Foundation

/// The run dir: config.json, metrics.jsonl and checkpoints/. Rank 0 creates it; every rank
/// learns whether that worked before training starts.
public struct RunDirectory: Sendable {
    public let path: String
    public var metricsPath: String { path + "/metrics.jsonl" }
    public var configPath: String { path + "/config.json" }
    public var checkpointsPath: String { path + "/checkpoints" }

    /// `resumedAtStep` nil: a fresh run, which refuses a run dir that holds checkpoints
    /// already (they belong to another run, and `--resume auto` would later mix them up
    /// with this one's). Otherwise metrics.jsonl keeps the steps up to the resumed one.
    public static func prepare(config: TrainConfig, world: Communicator, resumedAtStep: Int?) throws -> RunDirectory {
        let run = RunDirectory(path: config.runDir)
        try agreeOnSuccess(world) {
            guard world.rank == 0 else { return }
            if resumedAtStep == nil, config.resume == nil,
               let existing = CheckpointStore(directory: run.checkpointsPath, keep: config.keep).files().first {
                throw CollectiveFailure(message: "run dir \(run.path) already holds checkpoints (\(existing)); continue that run "
                                        + "with --resume auto, or start this one in another --run-dir")
            }
            try run.create(config: config, keepMetricsUpTo: resumedAtStep)
        }
        return run
    }

    func create(config: TrainConfig, keepMetricsUpTo resumedStep: Int?) throws {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw TrainingError("run dir \(path) exists and is not a directory")
        }
        do {
            try fm.createDirectory(atPath: checkpointsPath, withIntermediateDirectories: true)
        } catch {
            throw TrainingError("run dir \(path): cannot create it: \(describe(error))")
        }
        guard access(path, W_OK) == 0 else {
            throw TrainingError("run dir \(path) is not writable: \(String(cString: strerror(errno)))")
        }
        try writeAtomically(config.json + "\n", to: configPath)
        // A resumed run repeats the steps after its checkpoint: drop their old lines.
        var kept = ""
        if let resumedStep, let old = try? String(contentsOfFile: metricsPath, encoding: .utf8) {
            for line in old.split(separator: "\n") {
                guard let data = line.data(using: .utf8),
                      let record = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                      let step = record["step"] as? Int, step <= resumedStep else { continue }
                kept += line + "\n"
            }
        }
        try writeAtomically(kept, to: metricsPath)
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
