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

/// Sync-BN statistics for one of the two ranks of a PairExchange: both ranks' shard records,
/// in shard order (rank 0 holds the first shards), combined along the shard tree of all of
/// them (LocalStatistics over the whole array), as ShardStatistics does across ranks.
final class PairStatistics: BatchStatisticsReducer {
    let rank: Int
    let exchange: PairExchange
    init(rank: Int, exchange: PairExchange) { self.rank = rank; self.exchange = exchange }

    private func combined(_ records: UnsafeMutablePointer<Double>, count: Int, _ reduce: (UnsafeMutablePointer<Double>, Int) throws -> Void) throws {
        let both = try exchange.exchange(rank: rank, (0..<count).map { records[$0] })
        var all = both[0] + both[1]
        let total = all.count
        try all.withUnsafeMutableBufferPointer { try reduce($0.baseAddress!, total) }
        let mine = rank == 0 ? 0 : both[0].count
        for i in 0..<count { records[i] = all[mine + i] }
    }

    func combineMoments(_ m: ShardMoments) throws {
        try combined(m.records, count: m.shards * m.recordSize) { all, count in
            try LocalStatistics().combineMoments(ShardMoments(records: all, shards: count / m.recordSize, channels: m.channels,
                                                              firstShard: 0, running: m.running))
        }
    }

    func sum(_ records: UnsafeMutablePointer<Double>, width: Int, shards: Int, firstShard: Int) throws {
        try combined(records, count: shards * width) { all, count in
            try LocalStatistics().sum(all, width: width, shards: count / width, firstShard: 0)
        }
    }
}

final class Unchecked<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

/// DESIGN I2 at the layer level: a global batch cut into shards and split over two ranks
/// (or a rank's threads) at shard boundaries, with synchronized batch norm, gives bit for
/// bit the outputs, the per-shard parameter gradients (and so their sum along the shard
/// tree) and the running statistics of the whole batch on one rank, dropout included.
final class SplitBatchTests: XCTestCase {
    let input = Shape(n: 8, c: 3, h: 6, w: 6)
    let shardSize = 2
    var shards: Int { input.n / shardSize }
    private var savedBLASThreads = 1

    // One BLAS thread, as training runs (ComputeReplicas): with several, a convolution takes
    // one GEMM over the whole batch, whose rounding depends on the batch (microbench only).
    override func setUp() {
        savedBLASThreads = BLASThreads.current
        BLASThreads.set(1)
    }

    override func tearDown() { BLASThreads.set(savedBLASThreads) }

    func makeModel(maxBatch: Int) throws -> Model {
        let model = try Model(layers: makeLayers(), inputShape: input.withBatch(1), maxBatch: maxBatch, gradientSlots: shards)
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
        /// Per shard of the step, its parameter gradients.
        var gradients: [[Float]]
        var buffers: [Float]
        var counters: [Int64]
    }

    /// One training step (forward, backward of dy = r) on the shards `shardRange` of the batch.
    func step(_ model: Model, _ shardRange: Range<Int>, x: [Float], r: [Float], ids: [Int32],
              statistics: BatchStatisticsReducer) throws -> Outcome {
        let range = min(shardRange.lowerBound * shardSize, input.n) ..< min(shardRange.upperBound * shardSize, input.n)
        let per = input.perSample, outPer = model.outputShape.perSample
        let shape = input.withBatch(range.count)
        let xs = FloatBuffer(capacity: max(1, shape.count)), rs = FloatBuffer(capacity: max(1, range.count * outPer))
        for i in 0..<shape.count { xs.pointer[i] = x[range.lowerBound * per + i] }
        for i in 0..<(range.count * outPer) { rs.pointer[i] = r[range.lowerBound * outPer + i] }
        let localIDs = Array(ids[range])
        return try localIDs.withUnsafeBufferPointer { idPointer in
            let context = ForwardContext(training: true, seed: 77, step: 5, sampleIDs: idPointer.baseAddress, statistics: statistics,
                                         shardSize: shardSize, firstShard: shardRange.lowerBound,
                                         gradientSlotStride: model.gradientSlotStride)
            let y = try model.forward(xs.tensor(shape), context)
            try model.backward(rs.tensor(model.outputShape.withBatch(range.count)), context)
            let gradients = (0..<shardRange.count).map {
                Array(UnsafeBufferPointer(start: model.gradients.pointer + $0 * model.gradientSlotStride, count: model.parameterCount))
            }
            return Outcome(output: Array(y.buffer), gradients: gradients, buffers: Array(model.buffers.buffer),
                           counters: Array(UnsafeBufferPointer(start: model.counters, count: model.counterCount)))
        }
    }

    /// The shards' gradients summed along the shard tree.
    func treeSum(_ gradients: [[Float]]) -> [Float] {
        var parts = gradients
        let tree = ShardTree(span: 0..<parts.count)
        let top = tree.reduce(tree.root, items: parts.indices.map { $0 ..< $0 + 1 }) { i, j in
            for k in parts[i].indices { parts[i][k] += parts[j][k] }
        }
        return parts[top]
    }

    func bits(_ values: [Float]) -> [UInt32] { values.map(\.bitPattern) }

    func testTwoRanksEqualOneRankBitForBit() throws {
        let x = TestData.uniform(input.count, seed: 22, stream: 1)
        let r = TestData.uniform(input.n * 5, seed: 22, stream: 2)
        let ids = (0..<Int32(input.n)).map { 100 + 3 * $0 }
        let whole = try step(try makeModel(maxBatch: input.n), 0..<shards, x: x, r: r, ids: ids,
                             statistics: LocalStatistics())
        XCTAssertTrue(treeSum(whole.gradients).contains { $0 != 0 })

        for split in [2, 1, 3, 0] {
            let exchange = PairExchange()
            let ranges = [0..<split, split..<shards]
            let models = try ranges.map { try makeModel(maxBatch: max(1, $0.count * shardSize)) }
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

            XCTAssertEqual(bits(rank0.output + rank1.output), bits(whole.output), "outputs, split \(split)")
            XCTAssertEqual((rank0.gradients + rank1.gradients).map(bits), whole.gradients.map(bits), "shard gradients, split \(split)")
            XCTAssertEqual(bits(rank0.buffers), bits(whole.buffers), "running statistics, rank 0, split \(split)")
            XCTAssertEqual(bits(rank1.buffers), bits(whole.buffers), "running statistics, rank 1, split \(split)")
            XCTAssertEqual(rank0.counters, whole.counters)
            XCTAssertEqual(rank1.counters, whole.counters)
        }
    }

    /// The same at the level of one rank's compute threads: replicas sharing one parameter
    /// buffer, each on its shards, batch norm combining them through TeamStatistics.
    func testThreadPartsEqualTheWholeBatchBitForBit() throws {
        let x = TestData.uniform(input.count, seed: 23, stream: 1)
        let r = TestData.uniform(input.n * 5, seed: 23, stream: 2)
        let ids = (0..<Int32(input.n)).map { 7 + 5 * $0 }
        let whole = try step(try makeModel(maxBatch: input.n), 0..<shards, x: x, r: r, ids: ids, statistics: LocalStatistics())

        for size in [2, 3, 5] {  // 5 members for 4 shards: one member has none
            let team = try ThreadTeam(size: size)
            let first = try makeModel(maxBatch: input.n)
            var models = [first]
            // Only the first model is randomized: the replicas see those weights only through
            // the shared buffer.
            for _ in 1..<size {
                models.append(try Model(layers: makeLayers(), inputShape: input.withBatch(1), maxBatch: input.n,
                                        sharingParametersOf: first, gradientSlots: shards))
            }
            for model in models.dropFirst() { model.copyBuffers(from: first) }
            let exchange = TeamStatistics(team: team, rankReducer: LocalStatistics(), channels: 6, maxShards: shards)
            exchange.beginPass(firstShard: 0, shards: shards)
            let members = exchange.members
            let outcomes = (0..<size).map { _ in Unchecked<SplitBatchTests.Outcome?>(nil) }
            try team.run { member in
                outcomes[member].value = try step(models[member], team.part(member, of: shards), x: x, r: r, ids: ids,
                                                  statistics: members[member])
            }
            let parts = outcomes.map { $0.value! }
            XCTAssertEqual(bits(parts.flatMap(\.output)), bits(whole.output), "outputs, \(size) members")
            XCTAssertEqual(parts.flatMap(\.gradients).map(bits), whole.gradients.map(bits), "shard gradients, \(size) members")
            for part in parts {
                XCTAssertEqual(bits(part.buffers), bits(whole.buffers), "running statistics, \(size) members")
                XCTAssertEqual(part.counters, whole.counters)
            }
        }
    }
}

/// TeamStatistics under calls of changing width (batch norms of different channel counts in
/// a row): a member still copying out its results must not see member 0's next records.
final class TeamStatisticsTests: XCTestCase {
    func testCallsOfChangingWidthKeepEachMembersResults() throws {
        let team = try ThreadTeam(size: 2)
        let shards = 6
        let exchange = TeamStatistics(team: team, rankReducer: LocalStatistics(), channels: 1000, maxShards: shards)
        let members = exchange.members
        let failures = Unchecked(0)
        for round in 0..<100 {
            exchange.beginPass(firstShard: 0, shards: shards)
            let failed = (0..<2).map { _ in Unchecked(0) }
            try team.run { member in
                let part = team.part(member, of: shards)
                for call in 0..<40 {
                    let width = call % 2 == 0 ? 20 : 2001
                    // Shard j's record: every value j + 1, so each sum is 1 + 2 + ... + 6 = 21.
                    var records = [Double](repeating: 0, count: part.count * width)
                    for (i, j) in part.enumerated() { for k in 0..<width { records[i * width + k] = Double(j + 1) } }
                    try records.withUnsafeMutableBufferPointer {
                        try members[member].sum($0.baseAddress!, width: width, shards: part.count, firstShard: part.lowerBound)
                    }
                    if records.contains(where: { $0 != 21 }) { failed[member].value += 1 }
                }
            }
            failures.value += failed[0].value + failed[1].value
            XCTAssertEqual(failures.value, 0, "round \(round)")
            if failures.value > 0 { break }
        }
    }
}

/// The shard tree's two ways to combine: shards as items, and `reduceShards`, add in the
/// same order (the order is the tree's, whoever calls it).
final class ShardTreeTests: XCTestCase {
    func testReduceShardsFollowsTheTreeLikeReduce() {
        for count in 1...13 {
            let tree = ShardTree(span: 3..<(3 + count))
            for node in [tree.root] + tree.pieces(of: 3..<(3 + count)) + tree.pieces(of: (3 + count / 2)..<(3 + count)) where !node.shards.isEmpty {
                var byItems: [String] = [], byShards: [String] = []
                let items = node.shards.map { $0 ..< $0 + 1 }
                let a = tree.reduce(node, items: items) { i, j in byItems.append("\(items[i].lowerBound)+\(items[j].lowerBound)") }
                let b = tree.reduceShards(node) { i, j in byShards.append("\(i)+\(j)") }
                XCTAssertEqual(byItems, byShards, "\(count) shards, node \(node.shards)")
                XCTAssertEqual(items[a].lowerBound, b)
            }
        }
        // 5 shards: ((0+1)+(2+3))+4.
        var order: [String] = []
        let five = ShardTree(span: 0..<5)
        five.reduceShards(five.root) { i, j in order.append("\(i)+\(j)") }
        XCTAssertEqual(order, ["0+1", "2+3", "0+2", "0+4"])
    }
}
