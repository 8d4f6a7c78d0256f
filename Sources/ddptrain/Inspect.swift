import ArgumentParser
import Foundation
import SafeTensors

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a checkpoint's metadata, its tensors (name, shape, dtype) and whether its checksum holds.")

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
            FileHandle.standardError.write(Data("ddptrain inspect: \(error)\n".utf8))
            throw ExitCode.failure
        }
        let checksumOK = opened.checksumVerified
        let checksumProblem: String? = checksumOK == false ? "the data does not match the CRC-32 in the header" : nil
        if json {
            var object: [String: Any] = [
                "file": file,
                "metadata": opened.metadata,
                "tensors": opened.tensors.map { ["name": $0.name, "dtype": $0.dtype.rawValue, "shape": $0.shape] as [String: Any] },
            ]
            object["checksum_ok"] = checksumOK ?? NSNull()
            if let checksumProblem { object["checksum_problem"] = checksumProblem }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("file: \(file)")
            switch checksumOK {
            case true?: print("checksum: ok")
            case false?: print("checksum: MISMATCH: \(checksumProblem ?? "")")
            case nil: print("checksum: none in the header")
            }
            print("metadata:")
            for key in opened.metadata.keys.sorted() where key != "config" { print("  \(key): \(opened.metadata[key]!)") }
            if let config = opened.metadata["config"] { print("  config: \(config)") }
            let width = opened.tensors.map(\.name.count).max() ?? 0
            print("tensors (\(opened.tensors.count)):")
            for t in opened.tensors {
                print("  " + t.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  \(t.dtype.rawValue)  \(t.shape)")
            }
        }
        if checksumOK == false { throw ExitCode.failure }
    }
}
