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

    func validate() throws {
        guard parseInput() != nil else { throw ValidationError("--input takes C,H,W with positive integers, got '\(input)'") }
    }

    private func parseInput() -> Shape? {
        let dims = input.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard dims.count == 3, dims.allSatisfy({ $0 > 0 }) else { return nil }
        return Shape(n: 1, c: dims[0], h: dims[1], w: dims[2])
    }

    func run() throws {
        do {
            let spec = try ModelSpec.named(model)
            let built = try spec.build(inputShape: parseInput()!, maxBatch: 1)
            print(built.summaryTable(name: spec.name), terminator: "")
        } catch let error as ModelSpecError {
            throw ValidationError(error.message)
        } catch let error as LayerError {
            throw ValidationError("model \(model): \(error.message)")
        }
    }
}
