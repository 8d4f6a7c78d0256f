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
}
