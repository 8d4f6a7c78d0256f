import DDPKernels
import DDPNet
import Foundation
import XCTest

/// Two "ranks" as two threads of one process: each rank's reducer hands its values to the
/// exchange and waits for the other's, as an allgather would. Both ranks then combine the
/// two contributions in rank order, so they compute bitwise the same result.
final class PairExchange: @unchecked Sendable {
    private let condition = NSCondition()
    private var slots: [[Double]?] = [nil, nil]
    private var results: [[Double]] = []
    private var generation = 0

    struct Timeout: Error {}

    func exchange(rank: Int, _ values: [Double]) throws -> [[Double]] {
        condition.lock()
        defer { condition.unlock() }
        slots[rank] = values
        if let a = slots[0], let b = slots[1] {
            results = [a, b]
            slots = [nil, nil]
            generation += 1
            condition.broadcast()
            return results
        }
        let target = generation + 1
        let deadline = Date().addingTimeInterval(30)
        while generation < target {
            // The other rank failed before its collective: fail rather than hang.
            if !condition.wait(until: deadline) { throw Timeout() }
        }
        return results
    }
}

/// Sync-BN statistics for one of the two ranks of a PairExchange.
final class PairStatistics: BatchStatisticsReducer {
    let rank: Int
    let exchange: PairExchange
    init(rank: Int, exchange: PairExchange) { self.rank = rank; self.exchange = exchange }

    func combineMoments(count: inout Double, mean: UnsafeMutablePointer<Double>, m2: UnsafeMutablePointer<Double>, channels: Int) throws {
        let mine = [count] + (0..<channels).map { mean[$0] } + (0..<channels).map { m2[$0] }
        let both = try exchange.exchange(rank: rank, mine)
        // Chan et al.: merge (n, mean, M2) of two parts.
        let na = both[0][0], nb = both[1][0], n = na + nb
        for c in 0..<channels {
            let ma = both[0][1 + c], mb = both[1][1 + c]
            let delta = mb - ma
            mean[c] = n > 0 ? ma + delta * nb / n : 0
            m2[c] = both[0][1 + channels + c] + both[1][1 + channels + c] + (n > 0 ? delta * delta * na * nb / n : 0)
        }
        count = n
    }

    func sum(_ values: UnsafeMutablePointer<Double>, count: Int) throws {
        let both = try exchange.exchange(rank: rank, (0..<count).map { values[$0] })
        for i in 0..<count { values[i] = both[0][i] + both[1][i] }
    }
}

final class Unchecked<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

/// DESIGN I2 at the layer level: a global batch split over two ranks with synchronized
/// batch norm gives the same outputs, the same (summed) parameter gradients and the same
/// running statistics as the whole batch on one rank, dropout included.
final class SplitBatchTests: XCTestCase {
    let input = Shape(n: 8, c: 3, h: 6, w: 6)

    func makeModel(maxBatch: Int) throws -> Model {
        let model = try Model(layers: makeLayers(), inputShape: input.withBatch(1), maxBatch: maxBatch)
        randomize(model, seed: 21)
        return model
    }

    func makeLayers() -> [Layer] {
        [
            Conv2d(inChannels: 3, outChannels: 4, kernel: 3, padding: 1), BatchNorm(features: 4), ReLU(),
            Dropout(p: 0.2), ResidualBlock(inChannels: 4, outChannels: 6, stride: 2),
            GlobalAvgPool2d(), Linear(6, 5), BatchNorm(features: 5),
        ]
    }

    struct Outcome {
        var output: [Float]
        var gradients: [Float]
        var buffers: [Float]
        var counters: [Int64]
    }

    /// One training step (forward, backward of dy = r) on samples `range` of the batch.
    func step(_ model: Model, _ range: Range<Int>, x: [Float], r: [Float], ids: [Int32],
              statistics: BatchStatisticsReducer) throws -> Outcome {
        let per = input.perSample, outPer = model.outputShape.perSample
        let shape = input.withBatch(range.count)
        let xs = FloatBuffer(capacity: max(1, shape.count)), rs = FloatBuffer(capacity: max(1, range.count * outPer))
        for i in 0..<shape.count { xs.pointer[i] = x[range.lowerBound * per + i] }
        for i in 0..<(range.count * outPer) { rs.pointer[i] = r[range.lowerBound * outPer + i] }
        let localIDs = Array(ids[range])
        return try localIDs.withUnsafeBufferPointer { idPointer in
            let context = ForwardContext(training: true, seed: 77, step: 5, sampleIDs: idPointer.baseAddress, statistics: statistics)
            let y = try model.forward(xs.tensor(shape), context)
            try model.backward(rs.tensor(model.outputShape.withBatch(range.count)), context)
            return Outcome(output: Array(y.buffer), gradients: Array(model.gradients.buffer.prefix(model.parameterCount)),
                           buffers: Array(model.buffers.buffer),
                           counters: Array(UnsafeBufferPointer(start: model.counters, count: model.counterCount)))
        }
    }

    func assertClose(_ a: [Float], _ b: [Float], _ what: String, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, line: line)
        let scale = max(1, b.map { abs(Double($0)) }.max() ?? 0)
        let worst = zip(a, b).map { abs(Double($0) - Double($1)) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst, 1e-4 * scale, what, line: line)
    }

    func testTwoRanksEqualOneRank() throws {
        let x = TestData.uniform(input.count, seed: 22, stream: 1)
        let r = TestData.uniform(input.n * 5, seed: 22, stream: 2)
        let ids = (0..<Int32(input.n)).map { 100 + 3 * $0 }
        let whole = try step(try makeModel(maxBatch: input.n), 0..<input.n, x: x, r: r, ids: ids, statistics: LocalStatistics())

        for split in [4, 3, 0] {
            let exchange = PairExchange()
            let ranges = [0..<split, split..<input.n]
            let models = try ranges.map { try makeModel(maxBatch: max(1, $0.count)) }
            let outcomes = [Unchecked<Result<Outcome, Error>?>(nil), Unchecked(nil)]
            let work = Unchecked({ (rank: Int) in
                outcomes[rank].value = Result {
                    try self.step(models[rank], ranges[rank], x: x, r: r, ids: ids,
                                  statistics: PairStatistics(rank: rank, exchange: exchange))
                }
            })
            let done = DispatchSemaphore(value: 0)
            Thread { work.value(1); done.signal() }.start()
            work.value(0)
            done.wait()
            let rank0 = try outcomes[0].value!.get(), rank1 = try outcomes[1].value!.get()

            assertClose(rank0.output + rank1.output, whole.output, "outputs, split \(split)")
            assertClose(zip(rank0.gradients, rank1.gradients).map { $0 + $1 }, whole.gradients, "gradient sum, split \(split)")
            XCTAssertEqual(rank0.buffers, rank1.buffers, "running statistics agree bitwise across ranks, split \(split)")
            assertClose(rank0.buffers, whole.buffers, "running statistics, split \(split)")
            XCTAssertEqual(rank0.counters, whole.counters)
            XCTAssertEqual(rank1.counters, whole.counters)
        }
    }

    /// The same at the level of one rank's compute threads: replicas sharing one parameter
    /// buffer, each on its part of the batch, batch norm combining the parts through
    /// TeamStatistics, equal the whole batch on one replica (DESIGN I2 inside a rank).
    func testThreadPartsEqualTheWholeBatch() throws {
        let x = TestData.uniform(input.count, seed: 23, stream: 1)
        let r = TestData.uniform(input.n * 5, seed: 23, stream: 2)
        let ids = (0..<Int32(input.n)).map { 7 + 5 * $0 }
        let whole = try step(try makeModel(maxBatch: input.n), 0..<input.n, x: x, r: r, ids: ids, statistics: LocalStatistics())

        for size in [2, 3, 9] {  // 9 members for 8 samples: one member has none
            let team = try ThreadTeam(size: size)
            let first = try makeModel(maxBatch: input.n)
            var models = [first]
            // Only the first model is randomized: the replicas see those weights only through
            // the shared buffer.
            for _ in 1..<size {
                models.append(try Model(layers: makeLayers(), inputShape: input.withBatch(1), maxBatch: input.n,
                                        sharingParametersOf: first))
            }
            for model in models.dropFirst() { model.copyBuffers(from: first) }
            let members = TeamStatistics(team: team, rankReducer: LocalStatistics(), channels: 6).members
            let outcomes = (0..<size).map { _ in Unchecked<SplitBatchTests.Outcome?>(nil) }
            try team.run { member in
                outcomes[member].value = try step(models[member], team.part(member, of: input.n), x: x, r: r, ids: ids,
                                                        statistics: members[member])
            }
            let parts = outcomes.map { $0.value! }
            assertClose(parts.flatMap(\.output), whole.output, "outputs, \(size) members")
            var gradients = parts[0].gradients
            for part in parts.dropFirst() { for i in gradients.indices { gradients[i] += part.gradients[i] } }
            assertClose(gradients, whole.gradients, "gradient sum, \(size) members")
            for part in parts {
                XCTAssertEqual(part.buffers, parts[0].buffers, "running statistics agree bitwise across members")
                XCTAssertEqual(part.counters, whole.counters)
            }
            assertClose(parts[0].buffers, whole.buffers, "running statistics, \(size) members")
        }
    }
}
