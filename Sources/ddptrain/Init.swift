import ArgumentParser
import DDPKernels
import DDPNet
import DDPTrain

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
    @Option(help: "Output file (.safetensors).")
    var out: String

    func validate() throws {
        guard out.hasSuffix(".safetensors") else { throw ValidationError("--out must end in .safetensors, got '\(out)'") }
        do { _ = try Initializer(parsing: initializer) } catch { throw ValidationError("--init: \(error)") }
    }

    func run() throws {
        let shape = try sampleShape(input)
        do {
            let spec = try ModelSpec.named(model)
            try spec.checkMemory(inputShape: shape, batch: 1, replicas: 1, optimizerSlots: 0, ranksOnNode: 1)
            let built = try spec.build(inputShape: shape, maxBatch: 1)
            let perLayer = try spec.layerInitializers.mapValues { try Initializer(parsing: $0) }
            for warning in try built.initialize(try Initializer(parsing: initializer), perLayer: perLayer, seed: seed) {
                print("warning: \(warning)")
            }
            try StateDict.write(model: built, optimizer: nil,
                                metadata: ["format": "ddptrain-init", "model": model, "init": initializer, "seed": String(seed)], to: out)
            print("wrote \(out): \(plural(built.parameterCount, "parameter")) of \(spec.name)")
        } catch let error as ModelSpecError {
            throw ValidationError(error.message)
        }
    }
}
