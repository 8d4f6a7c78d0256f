import ArgumentParser
import DDPKernels
import DDPNet
import DDPSystem
import DDPTrain
import Foundation
import SafeTensors

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a model's initial weights to a safetensors file (PyTorch state-dict names), for --init-from.")

    @Option(help: "A preset or a YAML/JSON model file.")
    var model = "fmnist-cnn"
    @Option(name: .customLong("init"), help: "Weight initializer (default: PyTorch's per layer).")
    var initializer = "default"
    @Option(parsing: .unconditional, help: "Seed.")
    var seed: UInt64 = 0
    @Option(help: "Input shape of one sample, C,H,W.")
    var input = "1,28,28"
    @Option(help: "Output file (.safetensors). An existing file there must be one init wrote, or give --force.")
    var out: String
    @Flag(help: "Replace the regular file at --out whatever wrote it, a checkpoint too (never a device, a FIFO, a directory or a link).")
    var force = false

    /// The metadata `format` of the files init writes.
    static let format = "ddptrain-init"

    func validate() throws {
        guard out.hasSuffix(".safetensors") else { throw ValidationError("--out must end in .safetensors, got '\(out)'") }
        do { _ = try Initializer(parsing: initializer) } catch { throw ValidationError("--init: \(error)") }
        try OutputFile(path: out, option: "--out", kind: "a file init wrote", isOwnKind: { path in
            (try? SafeTensorsFile(path: path, verifyingChecksum: false))?.metadata["format"] == Init.format
        }).check(force: force)
    }

    func run() throws {
        let shape = try sampleShape(input)
        let spec: ModelSpec, built: Model
        do {
            spec = try ModelSpec.named(model)
            try spec.checkMemory(inputShape: shape, batch: 1, replicas: 1, optimizerSlots: 0, ranksOnNode: 1)
            built = try spec.build(inputShape: shape, maxBatch: 1)
            let perLayer = try spec.layerInitializers.mapValues { try Initializer(parsing: $0) }
            for warning in try built.initialize(try Initializer(parsing: initializer), perLayer: perLayer, seed: seed) {
                print("warning: \(warning)")
            }
        } catch {
            // A model file that cannot be used is bad input, as in train.
            writeToStandardError("ddptrain init: \(error)\n")
            throw ExitCode(ExitStatus.inputError)
        }
        do {
            try StateDict.write(model: built, optimizer: nil,
                                metadata: ["format": Init.format, "model": model, "init": initializer, "seed": String(seed)], to: out)
        } catch {
            writeToStandardError("ddptrain init: \(error)\n")
            throw ExitCode(ExitStatus.checkpointWriteFailed)
        }
        print("wrote \(out): \(plural(built.parameterCount, "parameter")) of \(spec.name)")
    }
}
