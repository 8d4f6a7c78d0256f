import ArgumentParser
import DDPTrain
import DDPSystem
import Foundation
import SafeTensors

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a checkpoint's metadata, its tensors (name, shape, dtype) and whether its checksum holds.",
        discussion: """
            Exits 1 when the file cannot be read (permissions, an I/O error, not a regular file: \
            a FIFO or a device is refused without reading it) or is damaged. A file whose layout \
            is sound is still shown with its problems: a failed checksum, non-finite values, \
            a ddptrain checkpoint's bad metadata.
            """)

    @Argument(help: "A .safetensors file.")
    var file: String
    @Flag(help: "Print one JSON object.")
    var json = false

    func run() throws {
        // A file whose data fails its checksum is still shown, with the mismatch, and exits 1.
        let opened: SafeTensorsFile
        do {
            opened = try SafeTensorsFile(path: file, verifyingChecksum: false)
        } catch {
            writeToStandardError("ddptrain inspect: \(error)\n")
            throw ExitCode.failure
        }
        let checksumOK = opened.checksumVerified
        let covered = opened.checksumScope == .data ? "data" : "file"
        let checksumProblem: String? = checksumOK == false ? "the \(covered) does not match the CRC-32 in the header" : nil
        var problems = checksumProblem.map { [$0] } ?? []
        for t in opened.tensors {
            if let problem = StateDict.valueProblem(in: opened, t.name) { problems.append(problem) }
        }
        if opened.metadata["format"] == "ddptrain-checkpoint" && checksumOK != false {
            do { _ = try CheckpointReader(path: file) } catch let error as CheckpointError { problems.append(error.problem) } catch {
                problems.append("\(error)")
            }
        }
        if json {
            var object: [String: Any] = [
                "file": file,
                "metadata": Inspect.typedMetadata(opened.metadata),
                "tensors": opened.tensors.map { ["name": $0.name, "dtype": $0.dtype.rawValue, "shape": $0.shape] as [String: Any] },
            ]
            object["checksum_ok"] = checksumOK ?? NSNull()
            object["checksum_covers"] = opened.checksumScope == nil ? NSNull() : covered
            if let checksumProblem { object["checksum_problem"] = checksumProblem }
            object["problems"] = problems
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("file: \(file)")
            switch checksumOK {
            case true?: print("checksum: ok (\(covered == "file" ? "whole file" : "data only"))")
            case false?: print("checksum: MISMATCH: \(checksumProblem ?? "")")
            case nil: print("checksum: none in the header")
            }
            print("metadata:")
            // A value of several lines (model_layers) keeps its lines under its key.
            for key in opened.metadata.keys.sorted() where key != "config" {
                print("  \(key): " + opened.metadata[key]!.replacingOccurrences(of: "\n", with: "\n    "))
            }
            if let config = opened.metadata["config"] { print("  config: \(config)") }
            for problem in problems where problem != checksumProblem { print("problem: \(problem)") }
            let width = opened.tensors.map(\.name.count).max() ?? 0
            print("tensors (\(opened.tensors.count)):")
            for t in opened.tensors {
                print("  " + t.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  \(t.dtype.rawValue)  \(t.shape)")
            }
        }
        if !problems.isEmpty { throw ExitCode.failure }
    }

    /// safetensors metadata is text; in JSON a ddptrain checkpoint's counts and numbers are
    /// numbers and its configuration an object. Values that do not read as such (a damaged
    /// file's) stay text, as the file has them.
    static func typedMetadata(_ metadata: [String: String]) -> [String: Any] {
        guard metadata["format"] == "ddptrain-checkpoint" else { return metadata }
        let counts: Set = ["step", "epoch", "position_in_epoch", "steps_per_epoch", "optimizer_steps", "skipped_steps",
                           "consecutive_skipped_steps", "world_size", "global_batch"]
        var typed: [String: Any] = metadata
        for (key, text) in metadata {
            if counts.contains(key), let value = Int(text) {
                typed[key] = value
            } else if key == "seed", let value = UInt64(text) {
                typed[key] = value
            } else if key.hasPrefix("normalize."), let value = Double(text), value.isFinite {
                typed[key] = value
            } else if key == "config", let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)), object is [String: Any] {
                typed[key] = object
            }
        }
        return typed
    }
}
