import ArgumentParser
import DDPKernels
import DDPNet

struct Summary: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print each layer of a model with its output shape and parameter count, and the totals.")

    @Option(help: "A preset (\(ModelSpec.presetNames.joined(separator: ", "))) or a YAML/JSON model file.")
    var model = "fmnist-cnn"

    @Option(help: "Input shape of one sample, C,H,W (default 1,28,28).")
    var input = "1,28,28"

    func validate() throws { _ = try sampleShape(input) }

    func run() throws {
        do {
            let spec = try ModelSpec.named(model)
            let shape = try sampleShape(input)
            try spec.checkMemory(inputShape: shape, batch: 1, replicas: 1, optimizerSlots: 0, ranksOnNode: 1)
            let built = try spec.build(inputShape: shape, maxBatch: 1)
            print(built.summaryTable(name: spec.name), terminator: "")
        } catch let error as ModelSpecError {
            throw ValidationError(error.message)
        } catch let error as LayerError {
            throw ValidationError("model \(model): \(error.message)")
        }
    }
}

/// One sample's shape from "C,H,W" (`--input` of init and summary): positive integers whose
/// product a layer can hold (ModelSpec.maxValuesPerSample); a usage error otherwise.
func sampleShape(_ text: String) throws -> Shape {
    let dims = text.split(separator: ",", omittingEmptySubsequences: false).compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard dims.count == 3, dims.allSatisfy({ $0 > 0 }),
          case let (ch, false) = dims[0].multipliedReportingOverflow(by: dims[1]),
          case let (all, false) = ch.multipliedReportingOverflow(by: dims[2]), all <= ModelSpec.maxValuesPerSample else {
        throw ValidationError("--input takes C,H,W with positive integers, at most \(ModelSpec.maxValuesPerSample) values, got '\(text)'")
    }
    return Shape(n: 1, c: dims[0], h: dims[1], w: dims[2])
}
