import DDPKernels
import DDPNet
import XCTest

/// Batch norm's statistics: normalization, running averages, evaluation, edge cases.
final class BatchNormTests: XCTestCase {
    /// A reducer that only records what it was handed (and changes nothing, like LocalStatistics).
    final class RecordingStatistics: BatchStatisticsReducer {
        var counts: [Double] = []
        var sums = 0
        func combineMoments(_ m: ShardMoments) throws {
            counts += (0..<m.shards).map { m.records[$0 * m.recordSize] }
            try LocalStatistics.shared.combineMoments(m)
        }
        func sum(_ records: UnsafeMutablePointer<Double>, width: Int, shards: Int, firstShard: Int) throws { sums += 1 }
    }

    /// A model holding one batch norm with gamma = 1 and beta = 0.
    func plainBatchNorm(_ shape: Shape, maxBatch: Int, momentum: Float = 0.1) throws -> Model {
        let model = try Model(layers: [BatchNorm(features: shape.c, momentum: momentum)], inputShape: shape, maxBatch: maxBatch)
        let gamma = model.parameter(named: "0.weight")!
        model.parameters.pointer.advanced(by: gamma.offset).update(repeating: 1, count: gamma.count)
        return model
    }

    /// Per-channel mean and biased variance of an NCHW (or [n, c]) array, in Float64.
    func channelMoments(_ values: UnsafePointer<Float>, _ shape: Shape) -> [(mean: Double, variance: Double)] {
        (0..<shape.c).map { c in
            var sum = 0.0, count = 0.0
            for s in 0..<shape.n { for i in 0..<shape.spatial { sum += Double(values[(s * shape.c + c) * shape.spatial + i]); count += 1 } }
            let mean = sum / count
            var sq = 0.0
            for s in 0..<shape.n { for i in 0..<shape.spatial { let d = Double(values[(s * shape.c + c) * shape.spatial + i]) - mean; sq += d * d } }
            return (mean, sq / count)
        }
    }

    func testTrainingOutputIsStandardized() throws {
        for shape in [Shape(n: 64, features: 3), Shape(n: 8, c: 3, h: 5, w: 5)] {
            for (center, spread) in [(Float(0), Float(1)), (1e4, 1e-1)] {
                let model = try plainBatchNorm(shape.withBatch(1), maxBatch: shape.n)
                let x = FloatBuffer(capacity: shape.count)
                let u = TestData.uniform(shape.count, seed: 3, stream: 1)
                for i in 0..<shape.count { x.pointer[i] = center + spread * u[i] * 1.7 }
                let inputMoments = channelMoments(x.pointer, shape)
                let y = try model.forward(x.tensor(shape), ForwardContext(training: true))
                for (c, m) in channelMoments(y.data, shape).enumerated() {
                    // The variance is v/(v + eps) rather than exactly 1.
                    let v = inputMoments[c].variance
                    XCTAssertEqual(m.mean, 0, accuracy: 1e-4, "\(shape) mean \(center) channel \(c)")
                    XCTAssertEqual(m.variance, v / (v + 1e-5), accuracy: 1e-4, "\(shape) mean \(center) channel \(c)")
                }
            }
        }
    }

    func testRunningStatisticsFollowTheClosedForm() throws {
        let shape = Shape(n: 6, c: 3, h: 4, w: 5), m = 0.2, steps = 4
        let model = try plainBatchNorm(shape.withBatch(1), maxBatch: shape.n, momentum: Float(m))
        var batchMoments: [[(mean: Double, variance: Double)]] = []
        let x = FloatBuffer(capacity: shape.count)
        for t in 1...steps {
            let u = TestData.uniform(shape.count, seed: 4, stream: UInt32(t))
            for i in 0..<shape.count { x.pointer[i] = Float(t) + Float(t) * u[i] }
            batchMoments.append(channelMoments(x.pointer, shape))
            _ = try model.forward(x.tensor(shape), ForwardContext(training: true))
        }
        let count = Double(shape.n * shape.spatial)
        let runningMean = model.buffers.pointer + model.buffer(named: "0.running_mean")!.offset
        let runningVar = model.buffers.pointer + model.buffer(named: "0.running_var")!.offset
        for c in 0..<shape.c {
            // running_k = (1-m)^k·init + Σ_t m(1-m)^(k-t)·stat_t; the variance is unbiased.
            var mean = 0.0, variance = pow(1 - m, Double(steps)) * 1
            for t in 1...steps {
                let weight = m * pow(1 - m, Double(steps - t))
                mean += weight * batchMoments[t - 1][c].mean
                variance += weight * batchMoments[t - 1][c].variance * count / (count - 1)
            }
            XCTAssertEqual(Double(runningMean[c]), mean, accuracy: 1e-5 * max(1, abs(mean)))
            XCTAssertEqual(Double(runningVar[c]), variance, accuracy: 1e-5 * max(1, variance))
        }
        XCTAssertEqual(model.counters[model.buffer(named: "0.num_batches_tracked")!.offset], Int64(steps))

        // Evaluation normalizes with the running statistics and leaves them alone.
        randomize(model, seed: 9)
        let gamma = model.parameters.pointer + model.parameter(named: "0.weight")!.offset
        let beta = model.parameters.pointer + model.parameter(named: "0.bias")!.offset
        let y = try model.forward(x.tensor(shape), ForwardContext(training: false))
        for s in 0..<shape.n { for c in 0..<shape.c { for i in 0..<shape.spatial {
            let k = (s * shape.c + c) * shape.spatial + i
            let expected = (Double(x.pointer[k]) - Double(runningMean[c])) / (Double(runningVar[c]) + 1e-5).squareRoot()
                * Double(gamma[c]) + Double(beta[c])
            XCTAssertEqual(Double(y[k]), expected, accuracy: 1e-5 * max(1, abs(expected)))
        } } }
        XCTAssertEqual(model.counters[model.buffer(named: "0.num_batches_tracked")!.offset], Int64(steps))
    }

    func testOneValuePerChannelThrowsInTraining() throws {
        for shape in [Shape(n: 1, features: 4), Shape(n: 1, c: 4, h: 1, w: 1)] {
            let model = try plainBatchNorm(shape, maxBatch: 1)
            let x = FloatBuffer(capacity: 4)
            XCTAssertThrowsError(try model.forward(x.tensor(shape), ForwardContext(training: true))) { error in
                XCTAssertTrue("\(error)".contains("Expected more than 1 value per channel when training"), "\(error)")
            }
            XCTAssertNoThrow(try model.forward(x.tensor(shape), ForwardContext(training: false)))
        }
    }

    func testEmptySliceStillCallsTheReducer() throws {
        let shape = Shape(n: 0, c: 2, h: 3, w: 3)
        let model = try plainBatchNorm(shape.withBatch(1), maxBatch: 4)
        model.layers[0].needsInputGradient = true
        let reducer = RecordingStatistics()
        let context = ForwardContext(training: true, statistics: reducer)
        let x = FloatBuffer(capacity: 1)
        let y = try model.forward(x.tensor(shape), context)
        XCTAssertEqual(y.count, 0)
        XCTAssertEqual(reducer.counts, [0])
        _ = try model.layers[0].backward(y, context)
        XCTAssertEqual(reducer.sums, 1)
    }

    func testSpecsAndSummaries() throws {
        let flat = try Model(layers: [BatchNorm(features: 128)], inputShape: Shape(n: 1, features: 128), maxBatch: 2)
        XCTAssertEqual(flat.layers[0].summary, "BatchNorm1d(128, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)")
        XCTAssertEqual(flat.parameterViews.map(\.name), ["0.weight", "0.bias"])
        XCTAssertEqual(flat.parameterViews.map(\.role), [.normWeight, .normBias])
        XCTAssertEqual(flat.bufferViews.map(\.name), ["0.running_mean", "0.running_var", "0.num_batches_tracked"])
        XCTAssertEqual(flat.buffers.pointer[128], 1, "running_var starts at 1")
        let spatial = try Model(layers: [BatchNorm(features: 8, eps: 1e-3, momentum: 0.01)], inputShape: Shape(n: 1, c: 8, h: 2, w: 2), maxBatch: 2)
        XCTAssertEqual(spatial.layers[0].summary, "BatchNorm2d(8, eps=0.001, momentum=0.01, affine=True, track_running_stats=True)")
        XCTAssertThrowsError(try Model(layers: [BatchNorm(features: 3)], inputShape: Shape(n: 1, features: 4), maxBatch: 2))
    }

    /// A reducer that combines like LocalStatistics and keeps copies of what it was handed
    /// and what it handed back.
    final class CapturingStatistics: BatchStatisticsReducer {
        var momentsIn: [Double] = [], momentsOut: [Double] = [], sumsIn: [Double] = [], sumsOut: [Double] = []
        func combineMoments(_ m: ShardMoments) throws {
            momentsIn = Array(UnsafeBufferPointer(start: m.records, count: m.shards * m.recordSize))
            try LocalStatistics.shared.combineMoments(m)
            momentsOut = Array(UnsafeBufferPointer(start: m.records, count: m.shards * m.recordSize))
        }
        func sum(_ records: UnsafeMutablePointer<Double>, width: Int, shards: Int, firstShard: Int) throws {
            sumsIn = Array(UnsafeBufferPointer(start: records, count: shards * width))
            try LocalStatistics.shared.sum(records, width: width, shards: shards, firstShard: firstShard)
            sumsOut = Array(UnsafeBufferPointer(start: records, count: shards * width))
        }
    }

    /// The element passes must give the bits they gave when they ran sample by sample, one
    /// row at a time (ReferencePasses): each shard's moments and gradient sums as handed to
    /// the reducer, the output and the input gradient; fused with a ReLU or not, odd plane
    /// sizes, shards of fewer and more than four samples, means large against the spread.
    func testElementPassesGiveTheBitsOfTheRowByRowPasses() throws {
        let C = 3, eps = Double(Float(1e-5))  // BatchNorm.eps, a Float
        for (h, w) in [(1, 1), (1, 3), (7, 1), (7, 7), (14, 14), (28, 28)] {
            for n in [2, 3, 5, 9] {
                for shardSize in [nil, 2, 4] as [Int?] {
                    for fused in [false, true] {
                        for (center, spread) in [(Float(0), Float(1)), (1e4, 1e-2), (-300, 5)] {
                            let shape = Shape(n: n, c: C, h: h, w: w), area = h * w
                            let label = "\(shape.dims) shards of \(shardSize.map(String.init) ?? "all") fused \(fused) mean \(center)"
                            let layers: [Layer] = fused ? [BatchNorm(features: C), ReLU()] : [BatchNorm(features: C)]
                            let model = try Model(layers: layers, inputShape: shape.withBatch(1), maxBatch: n, fuseLayers: fused)
                            randomize(model, seed: 51)
                            let bn = model.layers[0]
                            bn.needsInputGradient = true
                            let gamma = model.parameters.pointer + model.parameter(named: "0.weight")!.offset
                            let beta = model.parameters.pointer + model.parameter(named: "0.bias")!.offset
                            let x = FloatBuffer(capacity: shape.count)
                            let u = TestData.uniform(shape.count, seed: 52, stream: UInt32(n))
                            for i in 0..<shape.count { x.pointer[i] = center + spread * u[i] }
                            let dy = TestData.uniformBuffer(shape.count, seed: 53, stream: UInt32(n))
                            let reducer = CapturingStatistics()
                            let context = ForwardContext(training: true, statistics: reducer, shardSize: shardSize)
                            let y = try model.forward(x.tensor(shape), context)
                            let dx = try bn.backward(dy.tensor(shape), context)

                            let size = 1 + 2 * C
                            var moments: [Double] = [], sums: [Double] = []
                            var expectedY = [Float](repeating: 0, count: shape.count), expectedDx = expectedY
                            for j in 0..<context.shards(batch: n) {
                                let samples = context.shard(j, batch: n)
                                let count = Double(samples.count * area)
                                var mu = [Double](repeating: 0, count: C), sq = mu
                                for s in samples { for c in 0..<C { mu[c] += ReferencePasses.sum(x.pointer + (s * C + c) * area, count: area) } }
                                if count > 0 { for c in 0..<C { mu[c] /= count } }
                                for s in samples {
                                    for c in 0..<C {
                                        sq[c] += ReferencePasses.sumOfSquaredDeviations(x.pointer + (s * C + c) * area, count: area, mean: mu[c])
                                    }
                                }
                                moments += [count] + mu + sq
                                // The rest follows the group's statistics, as the reducer combined them.
                                let group = Array(reducer.momentsOut[(j * size)..<((j + 1) * size)])
                                let mean = Array(group[1...C])
                                let inv = (0..<C).map { 1 / (group[1 + C + $0] / group[0] + eps).squareRoot() }
                                let scale = (0..<C).map { Float(inv[$0]) * gamma[$0] }
                                var sumDy = [Double](repeating: 0, count: C), sumDyXhat = sumDy
                                for s in samples {
                                    for c in 0..<C {
                                        let offset = (s * C + c) * area
                                        for i in 0..<area {
                                            let z = Float(Double(x.pointer[offset + i]) - mean[c]) * scale[c] + beta[c]
                                            expectedY[offset + i] = fused ? max(z, 0) : z
                                        }
                                        let (a, b) = fused
                                            ? ReferencePasses.reluMaskedGradientSums(dy.pointer + offset, x.pointer + offset, count: area,
                                                                                     mean: mean[c], scale: scale[c], shift: beta[c])
                                            : ReferencePasses.gradientSums(dy.pointer + offset, x.pointer + offset, count: area, mean: mean[c])
                                        sumDy[c] += a
                                        sumDyXhat[c] += b
                                    }
                                }
                                for c in 0..<C { sumDyXhat[c] *= inv[c] }
                                sums += sumDy + sumDyXhat
                                let total = reducer.sumsOut[(j * 2 * C)..<((j + 1) * 2 * C)]
                                for s in samples {
                                    for c in 0..<C {
                                        let offset = (s * C + c) * area
                                        ReferencePasses.inputGradient(&expectedDx, offset, dy.pointer + offset, x.pointer + offset, count: area,
                                                                      mean: mean[c], scale: fused ? scale[c] : nil, shift: beta[c],
                                                                      k: Float(Double(gamma[c]) * inv[c]),
                                                                      a: Float(total[j * 2 * C + c] / group[0]),
                                                                      b: Float(total[j * 2 * C + C + c] / group[0]), invStd: Float(inv[c]))
                                    }
                                }
                            }
                            XCTAssertEqual(reducer.momentsIn.map(\.bitPattern), moments.map(\.bitPattern), "moments, \(label)")
                            XCTAssertEqual(reducer.sumsIn.map(\.bitPattern), sums.map(\.bitPattern), "gradient sums, \(label)")
                            XCTAssertEqual(Array(y.buffer).map(\.bitPattern), expectedY.map(\.bitPattern), "output, \(label)")
                            XCTAssertEqual(Array(dx.buffer).map(\.bitPattern), expectedDx.map(\.bitPattern), "input gradient, \(label)")
                        }
                    }
                }
            }
        }
    }
}

/// Batch norm's element passes as they were when the statistics ran sample by sample and
/// one row at a time (as of commit 48f7eef): the
/// reference the faster passes must match bit for bit.
enum ReferencePasses {
    static func sum(_ x: UnsafePointer<Float>, count: Int) -> Double {
        var a = SIMD4<Double>(), b = SIMD4<Double>()
        var i = 0
        while i + 8 <= count {
            a += SIMD4<Double>(Double(x[i]), Double(x[i + 1]), Double(x[i + 2]), Double(x[i + 3]))
            b += SIMD4<Double>(Double(x[i + 4]), Double(x[i + 5]), Double(x[i + 6]), Double(x[i + 7]))
            i += 8
        }
        var total = (a + b).sum()
        while i < count { total += Double(x[i]); i += 1 }
        return total
    }

    static func sumOfSquaredDeviations(_ x: UnsafePointer<Float>, count: Int, mean: Double) -> Double {
        var a = SIMD4<Double>(), b = SIMD4<Double>()
        let m = SIMD4<Double>(repeating: mean)
        var i = 0
        while i + 8 <= count {
            let u = SIMD4<Double>(Double(x[i]), Double(x[i + 1]), Double(x[i + 2]), Double(x[i + 3])) - m
            let v = SIMD4<Double>(Double(x[i + 4]), Double(x[i + 5]), Double(x[i + 6]), Double(x[i + 7])) - m
            a += u * u
            b += v * v
            i += 8
        }
        var total = (a + b).sum()
        while i < count { let d = Double(x[i]) - mean; total += d * d; i += 1 }
        return total
    }

    /// Σg and Σg·(x - mean) with element i in lane i mod 8 (lanes 0-3 in `a`, 4-7 in `b`),
    /// the lanes added, then the tail in order (8 lanes since the row pairs of round five;
    /// 4 lanes before).
    static func gradientSums(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, count: Int, mean: Double) -> (Double, Double) {
        maskedGradientSums(g, x, count: count, mean: mean, mask: nil)
    }

    static func reluMaskedGradientSums(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, count: Int, mean: Double,
                                       scale: Float, shift: Float) -> (Double, Double) {
        maskedGradientSums(g, x, count: count, mean: mean, mask: (scale, shift))
    }

    private static func maskedGradientSums(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, count: Int, mean: Double,
                                           mask: (scale: Float, shift: Float)?) -> (Double, Double) {
        var ga = SIMD4<Double>(), gb = SIMD4<Double>(), gxa = SIMD4<Double>(), gxb = SIMD4<Double>()
        func masked(_ i: Int) -> (g: Double, centred: Double) {
            let centred = Double(x[i]) - mean
            guard let mask else { return (Double(g[i]), centred) }
            return (Float(centred) * mask.scale + mask.shift > 0 ? Double(g[i]) : 0, centred)
        }
        var i = 0
        while i + 8 <= count {
            for l in 0..<4 {
                let (u, cu) = masked(i + l), (v, cv) = masked(i + 4 + l)
                ga[l] += u; gxa[l] += u * cu
                gb[l] += v; gxb[l] += v * cv
            }
            i += 8
        }
        var totalG = (ga + gb).sum(), totalGX = (gxa + gxb).sum()
        while i < count { let (gi, ci) = masked(i); totalG += gi; totalGX += gi * ci; i += 1 }
        return (totalG, totalGX)
    }

    /// dx = k·(g - a - x̂·b), g masked where the fused ReLU's input was ≤ 0 when `scale` is given.
    static func inputGradient(_ dx: inout [Float], _ offset: Int, _ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
                              count: Int, mean: Double, scale: Float?, shift: Float, k: Float, a: Float, b: Float, invStd: Float) {
        for i in 0..<count {
            let centred = Float(Double(x[i]) - mean)
            let gi = scale.map { centred * $0 + shift > 0 } ?? true ? g[i] : 0
            dx[offset + i] = k * (gi - a - centred * invStd * b)
        }
    }
}
