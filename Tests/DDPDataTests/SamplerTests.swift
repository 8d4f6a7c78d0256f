import DDPData
import XCTest

final class SamplerTests: XCTestCase {
    func sampler(_ n: Int, batch: Int, world: Int = 1, rank: Int = 0, seed: UInt64 = 1, shuffle: Bool = true) -> Sampler {
        Sampler(datasetSize: n, globalBatch: batch, worldSize: world, rank: rank, seed: seed, shuffle: shuffle)
    }

    func testEpochOrderIsAPermutation() {
        for n in [0, 1, 2, 1000] {
            XCTAssertEqual(sampler(n, batch: 7).epochOrder(3).sorted(), (0..<Int32(n)).map { $0 })
        }
    }

    func testOrderDependsOnlyOnSeedAndEpoch() {
        let order = sampler(1000, batch: 10).epochOrder(0)
        XCTAssertEqual(sampler(1000, batch: 33, world: 4, rank: 3).epochOrder(0), order)
        XCTAssertNotEqual(sampler(1000, batch: 10).epochOrder(1), order)
        XCTAssertNotEqual(sampler(1000, batch: 10, seed: 2).epochOrder(0), order)
        XCTAssertNotEqual(order, (0..<1000).map { $0 })
    }

    /// Pins the permutation (checked against a Python Philox4x32-10 with the same keying):
    /// changing it would break resuming runs started by older builds.
    func testKnownOrder() {
        XCTAssertEqual(sampler(10, batch: 4, seed: 42).epochOrder(0), [0, 2, 7, 1, 5, 4, 6, 3, 8, 9])
    }

    func testWithoutShuffleTheOrderIsIdentity() {
        let s = sampler(23, batch: 10, shuffle: false)
        XCTAssertEqual(s.epochOrder(5), (0..<23).map { $0 })
        XCTAssertEqual(s.globalBatchRange(1), 10..<20)
    }

    func testStepsPerEpochKeepTheLastPartialBatch() {
        let keep = sampler(23, batch: 10)
        XCTAssertEqual(keep.stepsPerEpoch, 3)
        XCTAssertEqual((0..<3).map(keep.globalBatchRange), [0..<10, 10..<20, 20..<23])
        XCTAssertEqual(sampler(20, batch: 10).stepsPerEpoch, 2)
    }

    /// Rank slices of batch k, in rank order, are the global batch: contiguous blocks of whole
    /// shards (the last shard of a batch may be short), block sizes in shards differing by at
    /// most one, some empty when the batch has fewer shards than the world has ranks.
    func testRankSlicesPartitionEachGlobalBatchIntoShardBlocks() {
        for (n, batch) in [(23, 10), (7, 5), (100, 7), (3, 3)] {
            for shardSize in [1, 2, 3] {
                for world in 1...4 {
                    let ranks = (0..<world).map { sampler(n, batch: batch, world: world, rank: $0) }
                    for k in 0..<ranks[0].stepsPerEpoch {
                        let global = ranks[0].globalBatchRange(k)
                        let slices = ranks.map { $0.localSlice(ofBatch: k, shardSize: shardSize) }
                        XCTAssertEqual(slices.first?.lowerBound, global.lowerBound)
                        XCTAssertEqual(slices.last?.upperBound, global.upperBound)
                        for r in 1..<world { XCTAssertEqual(slices[r - 1].upperBound, slices[r].lowerBound) }
                        let shards = (global.count + shardSize - 1) / shardSize
                        for (r, slice) in slices.enumerated() {
                            if !slice.isEmpty { XCTAssertEqual((slice.lowerBound - global.lowerBound) % shardSize, 0, "a slice starts at a shard") }
                            let owned = shards / world + (r < shards % world ? 1 : 0)
                            XCTAssertEqual((slice.count + shardSize - 1) / shardSize, owned, "n \(n) batch \(batch) m \(shardSize) world \(world) rank \(r)")
                        }
                    }
                }
            }
        }
        // 7 samples in batches of 5, shards of 1: the last batch has 2 samples, so ranks 2 and 3 of 4 get none.
        XCTAssertEqual((0..<4).map { sampler(7, batch: 5, world: 4, rank: $0).localSlice(ofBatch: 1, shardSize: 1).count }, [1, 1, 0, 0])
        // Shards of 2 in a batch of 5: shards of 2, 2 and 1 on three ranks of four.
        XCTAssertEqual((0..<4).map { sampler(7, batch: 5, world: 4, rank: $0).localSlice(ofBatch: 0, shardSize: 2).count }, [2, 2, 1, 0])
    }

    /// The samples of a step, gathered over all ranks, do not depend on the world size (I2).
    func testWorldSizeInvariance() {
        let n = 103, batch = 10, epoch = 2
        let single = sampler(n, batch: batch)
        let order = single.epochOrder(epoch)
        for world in 1...4 {
            let ranks = (0..<world).map { sampler(n, batch: batch, world: world, rank: $0) }
            XCTAssertEqual(ranks[0].stepsPerEpoch, single.stepsPerEpoch)
            for k in 0..<single.stepsPerEpoch {
                let gathered = ranks.flatMap { rank in rank.epochOrder(epoch)[rank.localSlice(ofBatch: k, shardSize: 3)] }
                XCTAssertEqual(gathered, Array(order[single.globalBatchRange(k)]))
            }
        }
    }

    func testEvaluationSlicesCoverEverySampleOnce() {
        for count in [0, 1, 5, 10000, 10001] {
            for world in 1...5 {
                let slices = (0..<world).map { Sampler.evaluationSlice(count: count, worldSize: world, rank: $0) }
                XCTAssertEqual(slices.flatMap { Array($0) }, Array(0..<count))
                let sizes = slices.map(\.count)
                XCTAssertLessThanOrEqual(sizes.max()! - sizes.min()!, 1)
            }
        }
    }
}
