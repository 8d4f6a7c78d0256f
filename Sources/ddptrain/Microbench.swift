import ArgumentParser
import DDPComm
import DDPKernels
import DDPNet
import DDPTrain
import Foundation

struct Microbench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "GFLOP/s of convolution and linear forward and backward, next to this machine's sgemm peak (one process).")

    @Option(parsing: .unconditional, help: "Batch size.")
    var batch = 64
    @Option(parsing: .unconditional, help: "BLAS threads (default: OpenBLAS's own setting).")
    var threads: Int?
    @Option(parsing: .unconditional, help: "Seconds to time each measurement for (after one warm-up call).")
    var seconds = 1.0

    func validate() throws {
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1, got \(batch)") }
        guard seconds > 0 else { throw ValidationError("--seconds must be positive, got \(seconds)") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1, got \(threads)") }
    }

    /// A layer to time: its input shape and its forward FLOPs per sample.
    struct Case {
        var name: String
        var layer: Layer
        var input: Shape
        var forwardFLOPs: Double
    }

    func run() throws {
        if let threads { BLASThreads.set(threads) }
        let cases = [
            Case(name: "conv 1->32 3x3 p1 @28x28", layer: Conv2d(inChannels: 1, outChannels: 32, kernel: 3, padding: 1, bias: false),
                 input: Shape(n: 1, c: 1, h: 28, w: 28), forwardFLOPs: 2.0 * 9 * 1 * 32 * 28 * 28),
            Case(name: "conv 32->64 3x3 p1 @14x14", layer: Conv2d(inChannels: 32, outChannels: 64, kernel: 3, padding: 1, bias: false),
                 input: Shape(n: 1, c: 32, h: 14, w: 14), forwardFLOPs: 2.0 * 9 * 32 * 64 * 14 * 14),
            Case(name: "conv 64->64 3x3 p1 @8x8", layer: Conv2d(inChannels: 64, outChannels: 64, kernel: 3, padding: 1, bias: false),
                 input: Shape(n: 1, c: 64, h: 8, w: 8), forwardFLOPs: 2.0 * 9 * 64 * 64 * 8 * 8),
            Case(name: "linear 3136->128", layer: Linear(3136, 128, bias: false),
                 input: Shape(n: 1, features: 3136), forwardFLOPs: 2.0 * 3136 * 128),
            Case(name: "linear 784->256", layer: Linear(784, 256, bias: false),
                 input: Shape(n: 1, features: 784), forwardFLOPs: 2.0 * 784 * 256),
        ]
        let peak = sgemmPeakGFLOPS(threads: BLASThreads.current)
        print(String(format: "batch %d, %@; sgemm 512x512x512 peak: %.1f GFLOP/s", batch, plural(BLASThreads.current, "BLAS thread"), peak))
        print("layer                          forward GFLOP/s (% peak)   backward GFLOP/s (% peak)")
        for c in cases {
            let model = try Model(layers: [c.layer], inputShape: c.input, maxBatch: batch)
            c.layer.needsInputGradient = true
            _ = try model.initialize(.kaimingNormal(mode: .fanIn), seed: 1)
            let x = FloatBuffer(capacity: batch * c.input.perSample)
            Philox(seed: 2, purpose: .test).fillUniform(x.pointer, count: x.capacity, stream: 0)
            let input = x.tensor(c.input.withBatch(batch))
            let context = ForwardContext(training: true)
            var y = try model.forward(input, context)
            let dy = FloatBuffer(capacity: y.count)
            Philox(seed: 3, purpose: .test).fillUniform(dy.pointer, count: dy.capacity, stream: 0)
            let forward = try timePerCall { y = try model.forward(input, context) }
            let backward = try timePerCall {
                _ = try model.forward(input, context)
                try model.backward(dy.tensor(y.shape), context)
            } - forward
            // Backward computes the weight gradient and the input gradient: twice the forward FLOPs.
            let f = c.forwardFLOPs * Double(batch)
            let fwd = f / forward / 1e9, bwd = 2 * f / backward / 1e9
            print(c.name.padding(toLength: 31, withPad: " ", startingAt: 0)
                  + String(format: "%7.1f (%3.0f%%)              %7.1f (%3.0f%%)", fwd, 100 * fwd / peak, bwd, 100 * bwd / peak))
        }
    }

    /// Seconds per call of `body`, over about `seconds` of calls after a warm-up call.
    private func timePerCall(_ body: () throws -> Void) throws -> Double {
        try body()
        var calls = 0
        let start = Clock.seconds()
        var elapsed = 0.0
        while elapsed < seconds {
            try body()
            calls += 1
            elapsed = Clock.seconds() - start
        }
        return elapsed / Double(calls)
    }
}
