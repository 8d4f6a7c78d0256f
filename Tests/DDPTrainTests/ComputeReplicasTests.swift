import DDPKernels
import DDPNet
import DDPTrain
import Foundation
import XCTest

/// Compute threads inside a rank (`--threads`): the shards dealt out to replicas give the
/// gradient, loss, accuracy and running statistics of the whole slice on one thread, bit
/// for bit (virtual shards, DESIGN I2).
final class ComputeReplicasTests: XCTestCase {
    let shape = Shape(n: 1, c: 1, h: 28, w: 28)
    let classes = 10

    struct Batch {
        var x: FloatBuffer
        var labels: [Int32]
        var ids: [Int32]
    }

    func batch(_ n: Int, seed: UInt64) -> Batch {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        func next() -> UInt64 { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state }
        let x = FloatBuffer(capacity: n * shape.perSample)
        for i in 0..<(n * shape.perSample) { x.pointer[i] = Float(next() % 10_000) / 5_000 - 1 }
        return Batch(x: x, labels: (0..<n).map { _ in Int32(next() % UInt64(classes)) }, ids: (0..<n).map { Int32(3 * $0 + 1) })
    }

    func replicas(_ model: String, threads: Int, maxBatch: Int, shardSize: Int = 2) throws -> ComputeReplicas {
        let r = try ComputeReplicas(spec: try ModelSpec.named(model), inputShape: shape, maxBatch: maxBatch, threads: threads,
                                    classes: classes, labelSmoothing: 0.1, rankStatistics: LocalStatistics(), dropout: 0.3,
                                    gradientRoom: 3, shardSize: shardSize, maxShards: (maxBatch + shardSize - 1) / shardSize)
        _ = try r.main.initialize(Initializer(parsing: "default"), perLayer: [:], seed: 5)
        return r
    }

    struct Pass {
        var gradients: [Float]
        var lossSum: Double
        var correct: Int
        var buffers: [Float]
    }

    func trainingPass(_ r: ComputeReplicas, _ b: Batch, count: Int) throws -> Pass {
        let result = try b.labels.withUnsafeBufferPointer { labels in
            try b.ids.withUnsafeBufferPointer { ids in
                let plan = ShardPlan(samples: count, shardSize: r.shardSize, worldSize: 1)
                return try r.trainingPass(x: b.x.pointer, sampleShape: shape, labels: labels.baseAddress!, ids: ids.baseAddress!,
                                          count: count, plan: plan, block: plan.block(rank: 0), seed: 9, step: 4)
            }
        }
        XCTAssertEqual(result.pieces.count, 1, "one rank holds the whole tree")
        return Pass(gradients: Array(UnsafeBufferPointer(start: result.pieces[0], count: r.main.parameterCount)), lossSum: result.lossSum,
                    correct: result.correct, buffers: Array(r.main.buffers.buffer))
    }

    func worstRelative(_ a: [Float], _ b: [Float]) -> Double {
        let scale = Double(b.map { abs($0) }.max() ?? 1)
        return (zip(a, b).map { Double(abs($0 - $1)) }.max() ?? 0) / max(scale, 1e-30)
    }

    func testThreadsGiveTheOneThreadGradientBitForBit() throws {
        for model in ["mlp", "fmnist-cnn", "resnet8"] {
            let n = 13  // 7 shards of 2 (the last of 1): parts of 4 and 3, or 3, 2 and 2
            let b = batch(n, seed: 1)
            let one = try trainingPass(try replicas(model, threads: 1, maxBatch: 16), b, count: n)
            XCTAssertGreaterThan(one.gradients.map(abs).max() ?? 0, 0)
            for threads in [2, 3] {
                let r = try replicas(model, threads: threads, maxBatch: 16)
                let split = try trainingPass(r, b, count: n)
                XCTAssertEqual(split.gradients.map(\.bitPattern), one.gradients.map(\.bitPattern), "\(model), \(threads) threads")
                XCTAssertEqual(split.correct, one.correct)
                XCTAssertEqual(split.buffers.map(\.bitPattern), one.buffers.map(\.bitPattern), "running statistics, \(model), \(threads) threads")
                // A second pass on the same replicas (gradients are overwritten, not accumulated).
                let again = try trainingPass(r, b, count: n)
                XCTAssertEqual(again.gradients, split.gradients, "\(model), \(threads) threads: a pass is reproducible")
            }
        }
    }

    func testEvaluationCountsTheSameAcrossThreads() throws {
        let n = 29
        let b = batch(n, seed: 2)
        var results: [(Double, Int, [Int32])] = []
        for threads in [1, 2, 4] {
            let r = try replicas("fmnist-cnn", threads: threads, maxBatch: 32)
            _ = try trainingPass(r, b, count: n)  // running statistics away from their start
            r.main.buffers.pointer[0] = 0.25       // evaluation must read the first replica's buffers
            var predictions = [Int32](repeating: -1, count: n)
            let e = try b.labels.withUnsafeBufferPointer { labels in
                try predictions.withUnsafeMutableBufferPointer {
                    try r.evaluationPass(x: b.x.pointer, sampleShape: shape, labels: labels.baseAddress!, count: n, predictions: $0.baseAddress!)
                }
            }
            // Every sample predicted, and the correct count is the count of predictions equal to the label.
            XCTAssertTrue(predictions.allSatisfy { (0..<Int32(classes)).contains($0) }, "\(predictions)")
            XCTAssertEqual(zip(predictions, b.labels).filter { $0 == $1 }.count, e.correct)
            results.append((e.lossSum, e.correct, predictions))
        }
        for (lossSum, correct, predictions) in results.dropFirst() {
            XCTAssertEqual(correct, results[0].1)
            XCTAssertEqual(lossSum, results[0].0, accuracy: 1e-6 * abs(results[0].0))
            XCTAssertEqual(predictions, results[0].2)
        }
    }

    /// Batch norm over a slice of one sample is an error on one thread; with two threads
    /// (one with the sample, one with none) it must be the same error, not a hang.
    /// A batch larger than the replicas were sized for is refused before any thread runs,
    /// by training and evaluation alike, naming the batch and the capacity.
    func testBatchLargerThanTheCapacityIsRefused() throws {
        for threads in [1, 2] {
            let r = try replicas("mlp", threads: threads, maxBatch: 8, shardSize: 1)
            XCTAssertEqual(r.maxBatch, 8)
            let b = batch(9, seed: 3)
            let expected = "compute replicas (\(threads) thread\(threads == 1 ? "" : "s")): a batch of 9 samples is larger than the 8 its buffers were sized for"
            XCTAssertThrowsError(try trainingPass(r, b, count: 9)) { XCTAssertEqual("\($0)", expected) }
            XCTAssertThrowsError(try b.labels.withUnsafeBufferPointer {
                try r.evaluationPass(x: b.x.pointer, sampleShape: shape, labels: $0.baseAddress!, count: 9)
            }) { XCTAssertEqual("\($0)", expected) }
            XCTAssertNoThrow(try trainingPass(r, b, count: 8))
        }
    }

    func testAnErrorOnOneMemberEndsThePass() throws {
        let b = batch(1, seed: 3)
        for threads in [1, 2] {
            let r = try replicas("mlp", threads: threads, maxBatch: 4, shardSize: 1)
            XCTAssertThrowsError(try trainingPass(r, b, count: 1)) { error in
                XCTAssertTrue("\(error)".contains("Expected more than 1 value per channel"), "\(threads) threads: \(error)")
            }
            XCTAssertNoThrow(try trainingPass(r, batch(4, seed: 4), count: 4), "the replicas work after a failed pass")
        }
    }

    func testDefaultThreads() throws {
        let free = (node: 8, usable: 8)
        XCTAssertEqual(try ComputeReplicas.defaultThreads(environment: ["OPENBLAS_NUM_THREADS": "3", "OMP_NUM_THREADS": "5"], cores: free), 3)
        XCTAssertEqual(try ComputeReplicas.defaultThreads(environment: ["OMP_NUM_THREADS": "5,2"], cores: free), 5)
        XCTAssertEqual(try ComputeReplicas.defaultThreads(environment: [:], cores: free), 8)
        XCTAssertEqual(try ComputeReplicas.defaultThreads(environment: ["OMPI_COMM_WORLD_LOCAL_SIZE": "2"], cores: free), 4)
        XCTAssertEqual(try ComputeReplicas.defaultThreads(environment: ["OMPI_COMM_WORLD_LOCAL_SIZE": "4"], cores: (2, 2)), 1)
        // A rank bound to 3 of 16 cores gets 3 threads, whatever the rank count.
        XCTAssertEqual(try ComputeReplicas.defaultThreads(environment: ["OMPI_COMM_WORLD_LOCAL_SIZE": "2"], cores: (16, 3)), 3)
        // A node with more cores than --threads accepts: the recorded count must load again.
        XCTAssertEqual(try ComputeReplicas.defaultThreads(environment: [:], cores: (384, 384)), 256)
        XCTAssertEqual(try ComputeReplicas.defaultThreads(environment: [:], cores: (512, 300)), 256)
        for bad in ["zero", "0", "1000", ""] {
            XCTAssertThrowsError(try ComputeReplicas.defaultThreads(environment: ["OPENBLAS_NUM_THREADS": bad], cores: free)) { error in
                XCTAssertTrue("\(error)".contains("OPENBLAS_NUM_THREADS=\(bad) is not a thread count from 1 to 256"), "\(error)")
            }
        }
        XCTAssertNil(ComputeReplicas.oversubscriptionWarning(threads: 1, environment: ["OMPI_COMM_WORLD_LOCAL_SIZE": "2"], cores: (2, 2)))
        XCTAssertNil(ComputeReplicas.oversubscriptionWarning(threads: 1, environment: ["OMPI_COMM_WORLD_LOCAL_SIZE": "4"], cores: (2, 2)),
                     "4 ranks of 1 thread on 2 cores: nothing --threads could change")
        let shared = ComputeReplicas.oversubscriptionWarning(threads: 2, environment: ["OMPI_COMM_WORLD_LOCAL_SIZE": "2"], cores: (2, 2))
        XCTAssertEqual(shared?.contains("use --threads 1"), true, shared ?? "no warning")
        let bound = ComputeReplicas.oversubscriptionWarning(threads: 2, environment: [:], cores: (16, 1))
        XCTAssertEqual(bound?.contains("2 compute threads on the 1 core this rank is bound to"), true, bound ?? "no warning")
        XCTAssertGreaterThanOrEqual(ComputeReplicas.cores().usable, 1)
    }

    func testThreadsOptionIsValidated() throws {
        var config = TrainConfig()
        config.threads = 0
        XCTAssertThrowsError(try config.validate()) { XCTAssertTrue("\($0)".contains("--threads must be between 1 and 256, got 0"), "\($0)") }
        config.threads = 2
        XCTAssertNoThrow(try config.validate())
    }
}
