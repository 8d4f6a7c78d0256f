import DDPComm
import Foundation

/// The run dir: config.json, metrics.jsonl and checkpoints/. Rank 0 creates it; every rank
/// learns whether that worked before training starts.
public struct RunDirectory: Sendable {
    public let path: String
    public var metricsPath: String { path + "/metrics.jsonl" }
    public var configPath: String { path + "/config.json" }
    public var checkpointsPath: String { path + "/checkpoints" }

    public static func prepare(config: TrainConfig, world: Communicator, freshMetrics: Bool = true) throws -> RunDirectory {
        let run = RunDirectory(path: config.runDir)
        try agreeOnSuccess(world) {
            guard world.rank == 0 else { return }
            try run.create(config: config, freshMetrics: freshMetrics)
        }
        return run
    }

    func create(config: TrainConfig, freshMetrics: Bool) throws {
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
        if freshMetrics {
            guard let f = fopen(metricsPath, "w") else {
                throw TrainingError("\(metricsPath): cannot create: \(String(cString: strerror(errno)))")
            }
            fclose(f)
        }
    }
}

/// Writes a small text file by temporary name and rename, so it is never seen half-written.
public func writeAtomically(_ text: String, to path: String) throws {
    let temporary = path + ".tmp.\(getpid())"
    do {
        try Data(text.utf8).write(to: URL(fileURLWithPath: temporary))
        if rename(temporary, path) != 0 {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw TrainingError("\(path): rename failed: \(reason)")
        }
    } catch let error as TrainingError {
        throw error
    } catch {
        unlink(temporary)
        throw TrainingError("\(path): cannot write: \(describe(error))")
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
