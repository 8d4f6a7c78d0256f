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
    @Option(parsing: .unconditional, help: "Time only the layers whose name contains this text (e.g. \"32->64\", \"winograd\").")
    var only: String?

    /// The largest batch: the widest case's im2col columns (16 -> 16 at 28x28) take 450 KB a
    /// sample, so 1024 samples are half a GiB.
    static let maxBatch = 1024
    /// The most BLAS threads asked for (OpenBLAS caps them at its own build's maximum).
    static let maxThreads = 1024
    /// The longest measurement: an hour.
    static let maxSeconds = 3600.0

    func validate() throws {
        guard batch >= 1 && batch <= Microbench.maxBatch else {
            throw ValidationError("--batch must be 1 to \(Microbench.maxBatch), got \(batch)")
        }
        guard seconds > 0 && seconds <= Microbench.maxSeconds else {
            throw ValidationError("--seconds must be more than 0 and at most \(Int(Microbench.maxSeconds)), got \(seconds)")
        }
        if let threads, !(1...Microbench.maxThreads).contains(threads) {
            throw ValidationError("--threads must be 1 to \(Microbench.maxThreads), got \(threads)")
        }
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
        // Every convolution and linear shape of fmnist-cnn and resnet8 (28x28 input), and the
        // mlp's first layer. 3x3 padding-1 convolutions run each way the layer can: the direct kernels,
        // Winograd's F(2x2, 3x3) (stride 1) and im2col + GEMM, to compare them on the same shape.
        var cases: [Case] = []
        func conv(_ cin: Int, _ cout: Int, _ k: Int, stride: Int = 1, padding: Int, at size: Int, _ models: String) {
            let out = (size + 2 * padding - k) / stride + 1
            let flops = 2.0 * Double(k * k * cin * cout * out * out)
            let name = "conv \(cin)->\(cout) \(k)x\(k)" + (stride > 1 ? " s\(stride)" : "") + (padding > 0 ? " p\(padding)" : "")
                + " @\(size)x\(size) \(models)"
            let direct = k == 3 && stride <= 2 && padding == 1 && cout % 4 == 0
            let algorithms: [(Conv2d.Algorithm, String)] = !direct ? [(.automatic, "")]
                : stride == 1 ? [(.direct, " direct"), (.winograd, " winograd"), (.gemm, " gemm")]
                : [(.direct, " direct"), (.gemm, " gemm")]
            for (algorithm, label) in algorithms {
                cases.append(Case(name: name + label,
                                  layer: Conv2d(inChannels: cin, outChannels: cout, kernel: k, stride: stride, padding: padding,
                                                bias: false, algorithm: algorithm),
                                  input: Shape(n: 1, c: cin, h: size, w: size), forwardFLOPs: flops))
            }
        }
        func linear(_ i: Int, _ o: Int, _ models: String) {
            cases.append(Case(name: "linear \(i)->\(o) \(models)", layer: Linear(i, o, bias: false),
                              input: Shape(n: 1, features: i), forwardFLOPs: 2.0 * Double(i * o)))
        }
        conv(1, 32, 3, padding: 1, at: 28, "[F]")
        conv(32, 64, 3, padding: 1, at: 14, "[F]")
        conv(1, 16, 3, padding: 1, at: 28, "[R]")
        conv(16, 16, 3, padding: 1, at: 28, "[R x2]")
        conv(16, 32, 3, stride: 2, padding: 1, at: 28, "[R]")
        conv(16, 32, 1, stride: 2, padding: 0, at: 28, "[R]")
        conv(32, 32, 3, padding: 1, at: 14, "[R]")
        conv(32, 64, 3, stride: 2, padding: 1, at: 14, "[R]")
        conv(32, 64, 1, stride: 2, padding: 0, at: 14, "[R]")
        conv(64, 64, 3, padding: 1, at: 7, "[R]")
        linear(3136, 128, "[F]")
        linear(64, 10, "[R]")
        linear(784, 256, "[mlp]")
        let peak = sgemmPeakGFLOPS(threads: BLASThreads.current)
        print(String(format: "batch %d, %@ (timed by %@); sgemm 512x512x512 peak: %.1f GFLOP/s", batch,
                     plural(BLASThreads.current, "BLAS thread"), BLASThreads.current > 1 ? "wall clock" : "thread CPU time", peak))
        print("[F] fmnist-cnn, [R] resnet8 (x2: twice in the model)")
        print("layer                                    forward GFLOP/s (% peak) ms/batch   backward GFLOP/s (% peak) ms/batch")
        for c in cases where only.map({ c.name.contains($0) }) ?? true {
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
            // A convolution's or linear layer's backward reads only what forward kept, so it
            // can be timed on its own, call after call (a difference of two noisy times cannot).
            _ = try model.forward(input, context)
            let backward = try timePerCall { try model.backward(dy.tensor(y.shape), context) }
            // Backward computes the weight gradient and the input gradient: twice the forward FLOPs.
            let f = c.forwardFLOPs * Double(batch)
            let fwd = f / forward / 1e9, bwd = 2 * f / backward / 1e9
            print(c.name.padding(toLength: 41, withPad: " ", startingAt: 0)
                  + String(format: "%7.1f (%3.0f%%) %7.2f              %7.1f (%3.0f%%) %7.2f",
                                  fwd, 100 * fwd / peak, 1e3 * forward, bwd, 100 * bwd / peak, 1e3 * backward))
        }
    }

    /// With one BLAS thread, the calling thread's CPU time: all the work runs on it, and time
    /// the machine gives to other processes does not count (the machine is often shared).
    /// With more BLAS threads, wall-clock time.
    private func now() -> Double {
        if BLASThreads.current > 1 { return Clock.seconds() }
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }

    /// Seconds per call of `body`, over about `seconds` of calls after a warm-up call.
    private func timePerCall(_ body: () throws -> Void) throws -> Double {
        try body()
        var calls = 0
        let start = now()
        var elapsed = 0.0
        while elapsed < seconds {
            try body()
            calls += 1
            elapsed = now() - start
        }
        return elapsed / Double(calls)
    }
}
