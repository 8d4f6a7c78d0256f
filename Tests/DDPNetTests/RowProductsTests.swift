import DDPKernels
import DDPNet
import XCTest

/// `rowProducts` (Linear's forward and gradients) against its definition, bit for bit: every element one
/// fused multiply-add chain over k in order, whatever the block it falls in (8 rows, 4 or 1;
/// 48, 32, 24 or 8 columns, or the scalar tail). And Linear's outputs per sample do not depend
/// on the batch, whichever kernels OpenBLAS picked on this CPU.
final class RowProductsTests: XCTestCase {
    func testEveryElementIsOneFusedChainInOrder() {
        for rows in [1, 3, 4, 5, 8, 9, 13, 17] {
            for k in [0, 1, 7, 37] {
                for n in [1, 7, 8, 10, 23, 24, 25, 47, 48, 49, 64, 80, 90, 100, 128] {
                    let x = TestData.uniform(rows * k, seed: 1, stream: UInt32(n)), b = TestData.uniform(k * n, seed: 2, stream: UInt32(rows))
                    XCTAssertEqual(Self.products(x, b, rows: rows, k: k, n: n).map(\.bitPattern),
                                   Self.chains(x, b, rows: rows, k: k, n: n).map(\.bitPattern), "rows \(rows), k \(k), n \(n)")
                }
            }
        }
    }

    /// Past a chunk of the inner dimension (512) an element's chain goes on from the sums the
    /// chunk before left in y, and past a panel of columns (192) the next panel starts: still
    /// one chain in order, bit for bit, at and around both edges.
    func testChunksAndPanelsKeepEachChain() {
        for rows in [3, 4, 8, 9, 12] {
            for k in [511, 512, 513, 1100] {
                for n in [10, 191, 192, 193, 400] {
                    let x = TestData.uniform(rows * k, seed: 6, stream: UInt32(n)), b = TestData.uniform(k * n, seed: 7, stream: UInt32(k))
                    XCTAssertEqual(Self.products(x, b, rows: rows, k: k, n: n).map(\.bitPattern),
                                   Self.chains(x, b, rows: rows, k: k, n: n).map(\.bitPattern), "rows \(rows), k \(k), n \(n)")
                }
            }
        }
    }

    /// `rowProductsTransposing` (Linear's forward, Wᵀ a chunk at a time through a scratch)
    /// gives x · wᵀ as the definition does, bit for bit, and leaves w as it was.
    func testTransposingGivesTheChainsOfTheTranspose() {
        for (rows, k, n) in [(7, 3136, 128), (9, 1100, 10), (5, 513, 33), (8, 1, 3), (4, 0, 5)] {
            let x = TestData.uniform(rows * k, seed: 8, stream: UInt32(n)), w = TestData.uniform(n * k, seed: 9, stream: UInt32(k))
            var wt = [Float](repeating: 0, count: k * n)
            for o in 0..<n { for i in 0..<k { wt[i * n + o] = w[o * k + i] } }
            var y = [Float](repeating: .nan, count: rows * n)
            var scratch = [Float](repeating: .nan, count: transposeScratchCount(inner: k, columns: n))
            x.withUnsafeBufferPointer { xp in
                w.withUnsafeBufferPointer { wp in
                    scratch.withUnsafeMutableBufferPointer { sp in
                        y.withUnsafeMutableBufferPointer { yp in
                            rowProductsTransposing(xp.baseAddress!, rows: rows, inner: k, wp.baseAddress!, columns: n,
                                                   scratch: sp.baseAddress!, into: yp.baseAddress!)
                        }
                    }
                }
            }
            XCTAssertEqual(y.map(\.bitPattern), Self.chains(x, wt, rows: rows, k: k, n: n).map(\.bitPattern),
                           "rows \(rows), k \(k), n \(n)")
            XCTAssertEqual(w.map(\.bitPattern), TestData.uniform(n * k, seed: 9, stream: UInt32(k)).map(\.bitPattern),
                           "w changed: rows \(rows), k \(k), n \(n)")
        }
    }

    /// Linear's backward: dW = dyᵀ x shard by shard into the shard's gradient slot, each
    /// element one FMA chain over the shard's samples in order, and dx = dy W, each element
    /// one chain over the outputs, bit for bit, across the panels of 192 inputs and the
    /// chunks of 512, in one shard and in shards of 3 (the last short).
    func testLinearGradientsAreOneChainPerElement() throws {
        for (inFeatures, outFeatures) in [(400, 10), (1100, 33), (3136, 128)] {
            for shardSize in [nil, 3] as [Int?] {
                let n = 7, layer = Linear(inFeatures, outFeatures, bias: true)
                try layer.configure(input: Shape(n: n, features: inFeatures), maxBatch: n, index: 0)
                let shards = shardSize.map { (n + $0 - 1) / $0 } ?? 1, stride = outFeatures * inFeatures + outFeatures
                let weight = TestData.uniformBuffer(outFeatures * inFeatures, seed: 11, stream: 1)
                let bias = TestData.uniformBuffer(outFeatures, seed: 11, stream: 2)
                let gradients = FloatBuffer(capacity: shards * stride)
                var storage = LayerStorage()
                storage.parameters = [weight.pointer, bias.pointer]
                storage.gradients = [gradients.pointer, gradients.pointer + outFeatures * inFeatures]
                layer.bind(storage)
                let x = TestData.uniformBuffer(n * inFeatures, seed: 12, stream: 1), dy = TestData.uniformBuffer(n * outFeatures, seed: 12, stream: 2)
                let context = ForwardContext(training: true, shardSize: shardSize, gradientSlotStride: stride)
                _ = try layer.forward(x.tensor(Shape(n: n, features: inFeatures)), context)
                let dx = Array(try layer.backward(dy.tensor(Shape(n: n, features: outFeatures)), context).buffer)
                var expectedDx = [Float](repeating: 0, count: n * inFeatures)
                for s in 0..<n {
                    for i in 0..<inFeatures {
                        var acc: Float = 0
                        for o in 0..<outFeatures { acc = acc.addingProduct(dy.pointer[s * outFeatures + o], weight.pointer[o * inFeatures + i]) }
                        expectedDx[s * inFeatures + i] = acc
                    }
                }
                let label = "Linear(\(inFeatures), \(outFeatures)), shards of \(shardSize.map(String.init) ?? "all")"
                XCTAssertEqual(dx.map(\.bitPattern), expectedDx.map(\.bitPattern), "dx, \(label)")
                for j in 0..<shards {
                    let samples = context.shard(j, batch: n), slot = gradients.pointer + j * stride
                    var expected = [Float](repeating: 0, count: outFeatures * inFeatures), actual = expected
                    for o in 0..<outFeatures {
                        for i in 0..<inFeatures {
                            var acc: Float = 0
                            for s in samples { acc = acc.addingProduct(dy.pointer[s * outFeatures + o], x.pointer[s * inFeatures + i]) }
                            expected[o * inFeatures + i] = acc
                            actual[o * inFeatures + i] = slot[o * inFeatures + i]
                        }
                    }
                    XCTAssertEqual(actual.map(\.bitPattern), expected.map(\.bitPattern), "dW of shard \(j), \(label)")
                }
            }
        }
    }

    /// `rowProducts` of x [rows, k] and b [k, n], into a y that starts as NaN.
    private static func products(_ x: [Float], _ b: [Float], rows: Int, k: Int, n: Int) -> [Float] {
        var y = [Float](repeating: .nan, count: rows * n)
        x.withUnsafeBufferPointer { xp in
            b.withUnsafeBufferPointer { bp in
                y.withUnsafeMutableBufferPointer { yp in
                    rowProducts(xp.baseAddress!, rows: rows, inner: k, bp.baseAddress!, columns: n, into: yp.baseAddress!)
                }
            }
        }
        return y
    }

    /// y[r, j] = Σ_i x[r, i] · b[i, j], one FMA chain in i's order.
    private static func chains(_ x: [Float], _ b: [Float], rows: Int, k: Int, n: Int) -> [Float] {
        var expected = [Float](repeating: 0, count: rows * n)
        for r in 0..<rows {
            for j in 0..<n {
                var acc: Float = 0
                for i in 0..<k { acc = acc.addingProduct(x[r * k + i], b[i * n + j]) }
                expected[r * n + j] = acc
            }
        }
        return expected
    }

    /// `transpose` (Linear's Wᵀ): every float where the definition puts it, in 8 x 8
    /// register blocks, edge tiles, and shapes of only edges.
    func testTransposeMovesEveryFloat() {
        for (rows, columns) in [(1, 1), (1, 9), (9, 1), (7, 7), (8, 8), (8, 16), (16, 8), (13, 21), (24, 17), (128, 3136), (10, 128)] {
            let a = TestData.uniform(rows * columns, seed: 5, stream: UInt32(rows))
            var b = [Float](repeating: .nan, count: rows * columns)
            a.withUnsafeBufferPointer { ap in
                b.withUnsafeMutableBufferPointer { transpose(ap.baseAddress!, rows: rows, columns: columns, into: $0.baseAddress!) }
            }
            var expected = [Float](repeating: 0, count: rows * columns)
            for r in 0..<rows { for c in 0..<columns { expected[c * rows + r] = a[r * columns + c] } }
            XCTAssertEqual(b.map(\.bitPattern), expected.map(\.bitPattern), "\(rows) x \(columns)")
        }
        // Columns 3 to 3 + 21 of rows 29 floats apart (a chunk of a wider matrix).
        let (rows, columns, stride, first) = (13, 21, 29, 3)
        let a = TestData.uniform(rows * stride, seed: 6, stream: 1)
        var b = [Float](repeating: .nan, count: rows * columns)
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeMutableBufferPointer {
                transpose(ap.baseAddress! + first, rows: rows, columns: columns, rowStride: stride, into: $0.baseAddress!)
            }
        }
        var expected = [Float](repeating: 0, count: rows * columns)
        for r in 0..<rows { for c in 0..<columns { expected[c * rows + r] = a[r * stride + first + c] } }
        XCTAssertEqual(b.map(\.bitPattern), expected.map(\.bitPattern), "rows \(stride) apart")
    }

    func testLinearOutputsDoNotDependOnTheBatch() throws {
        for (inFeatures, outFeatures) in [(3136, 128), (64, 10), (37, 49)] {
            let batch = Shape(n: 7, features: inFeatures)
            let model = try Model(layers: [Linear(inFeatures, outFeatures)], inputShape: batch, maxBatch: batch.n)
            randomize(model, seed: 3)
            let x = TestData.uniformBuffer(batch.count, seed: 4, stream: 1)
            let whole = Array(try model.forward(x.tensor(batch), ForwardContext(training: true)).buffer)
            for s in 0..<batch.n {
                let alone = Array(try model.forward(Tensor(x.pointer + s * inFeatures, batch.withBatch(1)), ForwardContext(training: true)).buffer)
                XCTAssertEqual(alone.map(\.bitPattern), whole[(s * outFeatures)..<((s + 1) * outFeatures)].map(\.bitPattern),
                               "Linear(\(inFeatures), \(outFeatures)): sample \(s) alone differs from the same sample in a batch of 7")
            }
        }
    }
}
