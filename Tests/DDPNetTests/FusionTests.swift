import DDPKernels
import DDPNet
import XCTest

/// Batch norm followed by ReLU runs fused (BatchNorm.fusesReLU): outputs, parameter
/// gradients and running statistics must be bitwise those of the two layers apart, in
/// training and in evaluation, for 2-D and 4-D inputs.
final class FusionTests: XCTestCase {
    let input = Shape(n: 6, c: 2, h: 8, w: 8)

    func layers() -> [Layer] {
        [Conv2d(inChannels: 2, outChannels: 5, kernel: 3, padding: 1), BatchNorm(features: 5), ReLU(), MaxPool2d(kernel: 2),
         Flatten(), Linear(5 * 16, 12), BatchNorm(features: 12), ReLU(), Dropout(p: 0.3), Linear(12, 4)]
    }

    func run(fused: Bool, training: Bool) throws -> (output: [Float], gradients: [Float], buffers: [Float]) {
        let model = try Model(layers: layers(), inputShape: input.withBatch(1), maxBatch: input.n, fuseLayers: fused)
        XCTAssertEqual(model.layers.compactMap { $0 as? BatchNorm }.map(\.fusesReLU), [fused, fused])
        XCTAssertEqual(model.layers.compactMap { $0 as? BatchNorm }.map(\.fusesPool), [fused, false])
        randomize(model, seed: 31)
        // Put some pre-activations exactly at 0: beta equal to minus a channel's mean would
        // be luck; a large negative beta makes most of a channel ≤ 0 instead.
        if let beta = model.parameter(named: "1.bias") { model.parameters.pointer[beta.offset] = -2 }
        let x = TestData.uniformBuffer(input.count, seed: 32, stream: 1)
        let ids: [Int32] = (0..<Int32(input.n)).map { $0 * 7 }
        return try ids.withUnsafeBufferPointer { idPointer in
            let context = ForwardContext(training: training, seed: 3, step: 2, sampleIDs: idPointer.baseAddress)
            if !training { _ = try model.forward(x.tensor(input), ForwardContext(training: true, seed: 3, step: 1, sampleIDs: idPointer.baseAddress)) }
            let y = try model.forward(x.tensor(input), context)
            let output = Array(y.buffer)
            let dy = TestData.uniformBuffer(y.count, seed: 33, stream: 2)
            try model.backward(dy.tensor(y.shape), context)
            return (output, Array(model.gradients.buffer.prefix(model.parameterCount)), Array(model.buffers.buffer))
        }
    }

    func testFusedBatchNormReLUGivesTheSameBits() throws {
        for training in [true, false] {
            let apart = try run(fused: false, training: training)
            let fused = try run(fused: true, training: training)
            func differing(_ a: [Float], _ b: [Float]) -> Int {
                a.count == b.count ? zip(a, b).filter { $0.bitPattern != $1.bitPattern }.count : max(a.count, b.count)
            }
            XCTAssertEqual(differing(fused.output, apart.output), 0, "outputs that differ, training \(training)")
            XCTAssertEqual(differing(fused.gradients, apart.gradients), 0, "gradients that differ, training \(training)")
            XCTAssertEqual(differing(fused.buffers, apart.buffers), 0, "running statistics that differ, training \(training)")
            XCTAssertTrue(apart.output.contains { $0 != 0 })
            XCTAssertTrue(apart.gradients.contains { $0 != 0 })
        }
    }

    /// Batch norm, ReLU and a 2x2 max pool (BatchNorm.fusesPool): the same bits as the three
    /// apart, on planes whose pooled rows are shorter than a vector (6x6, 10x4) and longer
    /// (28x28, 14x14), in shards, training and evaluation; a pool off its fast path (odd
    /// plane, 3x3 window) does not fuse.
    func testFusedPoolGivesTheSameBits() throws {
        for (h, w, kernel) in [(8, 8, 2), (6, 6, 2), (10, 4, 2), (28, 28, 2), (14, 14, 2), (7, 7, 2), (9, 9, 3)] {
            for shardSize in [nil, 2] as [Int?] {
                for training in [true, false] {
                    let shape = Shape(n: 5, c: 3, h: h, w: w)
                    func run(fused: Bool) throws -> (output: [Float], gradients: [Float], buffers: [Float], pooled: Bool) {
                        let pool = MaxPool2d(kernel: kernel)
                        let model = try Model(layers: [Conv2d(inChannels: 3, outChannels: 4, kernel: 3, padding: 1), BatchNorm(features: 4),
                                                       ReLU(), pool, Flatten(), Linear(pool.outputShapeFlat(h, w, channels: 4), 3)],
                                              inputShape: shape.withBatch(1), maxBatch: shape.n, fuseLayers: fused)
                        randomize(model, seed: 61)
                        if let beta = model.parameter(named: "1.bias") { model.parameters.pointer[beta.offset] = -0.5 }
                        let x = TestData.uniformBuffer(shape.count, seed: 62, stream: UInt32(h))
                        let context = ForwardContext(training: training, shardSize: shardSize)
                        if !training { _ = try model.forward(x.tensor(shape), ForwardContext(training: true, shardSize: shardSize)) }
                        let y = try model.forward(x.tensor(shape), context)
                        let output = Array(y.buffer)
                        let dy = TestData.uniformBuffer(y.count, seed: 63, stream: 2)
                        try model.backward(dy.tensor(y.shape), context)
                        let norm = model.layers[1] as! BatchNorm
                        return (output, Array(model.gradients.buffer.prefix(model.parameterCount)), Array(model.buffers.buffer),
                                norm.fusesPool && pool.passesThrough)
                    }
                    let label = "\(h)x\(w) window \(kernel) shards \(shardSize.map(String.init) ?? "all") training \(training)"
                    let apart = try run(fused: false), fused = try run(fused: true)
                    XCTAssertFalse(apart.pooled, label)
                    XCTAssertEqual(fused.pooled, kernel == 2 && h % 2 == 0 && w % 2 == 0, label)
                    XCTAssertEqual(fused.output.map(\.bitPattern), apart.output.map(\.bitPattern), "output, \(label)")
                    XCTAssertEqual(fused.gradients.map(\.bitPattern), apart.gradients.map(\.bitPattern), "gradients, \(label)")
                    XCTAssertEqual(fused.buffers.map(\.bitPattern), apart.buffers.map(\.bitPattern), "running statistics, \(label)")
                    XCTAssertTrue(apart.gradients.contains { $0 != 0 }, label)
                }
            }
        }
    }

    /// The batch norm and ReLU inside a residual block fuse too.
    func testResidualBlockFusesItsBatchNormReLU() throws {
        let shape = Shape(n: 4, c: 3, h: 6, w: 6)
        func run(fused: Bool) throws -> (output: [Float], gradients: [Float]) {
            let model = try Model(layers: [ResidualBlock(inChannels: 3, outChannels: 4, stride: 2), GlobalAvgPool2d(), Linear(4, 3)],
                                  inputShape: shape.withBatch(1), maxBatch: shape.n, fuseLayers: fused)
            randomize(model, seed: 41)
            let x = TestData.uniformBuffer(shape.count, seed: 42, stream: 1)
            let context = ForwardContext(training: true)
            let y = try model.forward(x.tensor(shape), context)
            let output = Array(y.buffer)
            let dy = TestData.uniformBuffer(y.count, seed: 43, stream: 2)
            try model.backward(dy.tensor(y.shape), context)
            return (output, Array(model.gradients.buffer.prefix(model.parameterCount)))
        }
        let apart = try run(fused: false), fused = try run(fused: true)
        XCTAssertEqual(fused.output.map(\.bitPattern), apart.output.map(\.bitPattern))
        XCTAssertEqual(fused.gradients.map(\.bitPattern), apart.gradients.map(\.bitPattern))
        XCTAssertTrue(apart.gradients.contains { $0 != 0 })
    }
}

private extension MaxPool2d {
    /// Features after this pool (floor mode, no padding) of `channels` planes h x w.
    func outputShapeFlat(_ h: Int, _ w: Int, channels: Int) -> Int {
        channels * ((h - kernel) / stride + 1) * ((w - kernel) / stride + 1)
    }
}
