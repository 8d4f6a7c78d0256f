import Foundation
import SafeTensors
import XCTest

/// A command started in the background (a launcher, mpirun), watched and acted on while it
/// runs, then waited for with a time limit.
final class Background {
    let process = Process()
    let out: DataCollector
    let err: DataCollector
    let start = Date()

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = MPIRun.childEnvironment()
        for (key, value) in environment { env[key] = value }
        process.environment = env
        let outPipe = Pipe(), errPipe = Pipe()
        process.standardOutput = outPipe
        process.standardError = errPipe
        out = DataCollector(outPipe.fileHandleForReading)
        err = DataCollector(errPipe.fileHandleForReading)
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    /// Polls `condition` every 50 ms until it holds (true) or `timeout` passes (false).
    static func waitUntil(timeout: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return condition()
    }

    /// Waits for the end; after `timeout` seconds the whole process tree started here is killed.
    func wait(timeout: Double) -> MPIRun.Result {
        let finished = Background.waitUntil(timeout: timeout) { !process.isRunning }
        if !finished {
            for child in Processes.descendants(of: pid).reversed() { kill(child, SIGKILL) }
            kill(pid, SIGKILL)
        }
        process.waitUntilExit()
        return MPIRun.Result(status: process.terminationStatus, stdout: out.finish(), stderr: err.finish(),
                             seconds: Date().timeIntervalSince(start), timedOut: !finished)
    }
}

/// The process table, read from /proc.
enum Processes {
    /// (pid, parent pid, command name) of every process.
    static func table() -> [(pid: Int32, parent: Int32, name: String)] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> (Int32, Int32, String)? in
            guard let pid = Int32(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { return nil }
            let name = String(stat[stat.index(after: open)..<close])
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            guard fields.count > 1, let parent = Int32(fields[1]) else { return nil }
            return (pid, parent, name)
        }
    }

    static func children(of pid: Int32, named name: String? = nil) -> [Int32] {
        table().filter { $0.parent == pid && (name == nil || $0.name == name) }.map(\.pid).sorted()
    }

    /// Every process below `pid`, parents before children.
    static func descendants(of pid: Int32) -> [Int32] {
        let all = table()
        var out: [Int32] = []
        var frontier = [pid]
        while let next = frontier.popLast() {
            let kids = all.filter { $0.parent == next }.map(\.pid)
            out += kids
            frontier += kids
        }
        return out
    }

    /// A process's command name, nil once it is gone.
    static func name(of pid: Int32) -> String? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { return nil }
        return String(stat[stat.index(after: open)..<close])
    }

    /// A process's state letter (R running, S sleeping, T stopped, Z zombie), nil once it is gone.
    static func state(of pid: Int32) -> String? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(close, offsetBy: 2)...].split(separator: " ").first.map(String.init)
    }

    /// The MPI rank Open MPI gave a process (OMPI_COMM_WORLD_RANK in its environment).
    /// The pid a rank held by DDPTRAIN_INJECT_HOLD at `stepIndex` printed in `output`
    /// ("ddptrain: rank 0 (pid 1234) holds at step index 13 until a stop signal reaches it").
    static func heldRank(in output: String, stepIndex: Int) -> Int32? {
        output.split(separator: "\n").first { $0.contains("holds at step index \(stepIndex) until a stop signal") }
            .flatMap { $0.components(separatedBy: "(pid ").last?.split(separator: ")").first }.flatMap { Int32($0) }
    }

    static func mpiRank(of pid: Int32) -> Int? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return nil }
        for entry in data.split(separator: 0) {
            let text = String(decoding: entry, as: UTF8.self)
            if text.hasPrefix("OMPI_COMM_WORLD_RANK=") { return Int(text.dropFirst("OMPI_COMM_WORLD_RANK=".count)) }
        }
        return nil
    }
}

/// Checkpoint contents for comparisons.
enum Checkpoints {
    /// The checkpoint file names of a run dir, oldest first.
    static func names(runDir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: runDir + "/checkpoints")) ?? []).filter { $0.hasSuffix(".safetensors") }.sorted()
    }

    /// The newest checkpoint file of a run dir.
    static func newest(runDir: String) throws -> String {
        runDir + "/checkpoints/" + (try XCTUnwrap(names(runDir: runDir).last, "no checkpoint in \(runDir)/checkpoints"))
    }

    static func count(runDir: String) -> Int { names(runDir: runDir).count }

    /// Every tensor's raw bytes (parameters, buffers, optimizer state), metadata left out.
    static func tensorBytes(_ path: String) throws -> [String: [UInt8]] {
        let file = try SafeTensorsFile(path: path)
        var out: [String: [UInt8]] = [:]
        for t in file.tensors {
            switch t.dtype {
            case .f32: out[t.name] = try file.values(of: t.name, as: Float.self).withUnsafeBytes { Array($0) }
            case .i64: out[t.name] = try file.values(of: t.name, as: Int64.self).withUnsafeBytes { Array($0) }
            default: XCTFail("unexpected dtype \(t.dtype) for \(t.name)")
            }
        }
        return out
    }

    /// Largest over Float32 tensors (parameters and buffers, not optimizer state) of
    /// max |a - b| / max |a|.
    static func relativeDifference(_ a: String, _ b: String) throws -> Double {
        let x = try SafeTensorsFile(path: a), y = try SafeTensorsFile(path: b)
        XCTAssertEqual(Set(x.tensors.map(\.name)), Set(y.tensors.map(\.name)))
        var worst = 0.0
        for t in x.tensors where t.dtype == .f32 && !t.name.hasPrefix("optim.") {
            let u = try x.values(of: t.name, as: Float.self), v = try y.values(of: t.name, as: Float.self)
            guard u.count == v.count else { XCTFail("\(t.name) differs in size"); return .infinity }
            let scale = Double(u.map { abs($0) }.max() ?? 0)
            let diff = zip(u, v).map { Double(abs($0 - $1)) }.max() ?? 0
            worst = max(worst, scale > 0 ? diff / scale : diff)
        }
        return worst
    }
}
