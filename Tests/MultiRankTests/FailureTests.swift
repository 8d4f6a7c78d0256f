import Foundation
import XCTest

/// I5: bad input and failures end every rank within 10 s, with a message naming the
/// problem (and the rank), a non-zero exit, and nothing half-written.
final class FailureTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-fail-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    /// A small, valid Fashion-MNIST-shaped folder (plain IDX files) to damage.
    func makeData(train: Int = 64, test: Int = 32) throws -> URL {
        try TestData.fashionMNISTLike(in: scratch.appendingPathComponent("data-\(UUID().uuidString.prefix(8))"), train: train, test: test)
    }

    func expectFailure(_ args: [String], ranks: Int = 4, mentions: [String], environment: [String: String] = [:],
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let run = scratch.appendingPathComponent("run-\(UUID().uuidString.prefix(8))").path
        let full = ["train", "--steps", "5", "--per-rank-batch", "4", "--model", "mlp", "--eval-every", "0", "--run-dir", run] + args
        let r = try MPIRun.run(ranks: ranks, full, timeout: 30, environment: environment)
        XCTAssertFalse(r.timedOut, "hung: \(args)", file: file, line: line)
        XCTAssertNotEqual(r.status, 0, "\(args) should fail", file: file, line: line)
        XCTAssertLessThan(r.seconds, 10, "\(args) took \(r.seconds) s to end", file: file, line: line)
        for text in mentions {
            XCTAssertTrue(r.stderr.contains(text), "\(args): stderr lacks '\(text)':\n\(r.stderr)", file: file, line: line)
        }
        XCTAssertFalse(r.stderr.contains("Fatal error"), "crash trace: \(r.stderr)", file: file, line: line)
        // Nothing half-written: no temporary files left in the run dir.
        let leftovers = (FileManager.default.enumerator(atPath: run)?.allObjects as? [String] ?? []).filter { $0.contains(".tmp") }
        XCTAssertEqual(leftovers, [], file: file, line: line)
    }

    func testInvalidOption() throws {
        try expectFailure(["--bn", "sometimes"], mentions: ["sometimes"])
        try expectFailure(["--lr=-1"], mentions: ["--lr must be a positive number, got -1"])
        try expectFailure(["--model", "nonesuch"], mentions: ["model 'nonesuch' is neither a preset"])
    }

    func testMissingDataFile() throws {
        let dir = try makeData()
        try FileManager.default.removeItem(at: dir.appendingPathComponent("train-labels-idx1-ubyte"))
        try expectFailure(["--data-dir", dir.path], mentions: ["train-labels-idx1-ubyte", "not found"])
    }

    func testWrongMagicNumber() throws {
        let dir = try makeData()
        let path = dir.appendingPathComponent("train-images-idx3-ubyte")
        var data = try Data(contentsOf: path)
        data[3] = 0x01
        try data.write(to: path)
        try expectFailure(["--data-dir", dir.path], mentions: ["train-images-idx3-ubyte", "magic"])
    }

    func testTruncatedFile() throws {
        let dir = try makeData()
        let path = dir.appendingPathComponent("t10k-images-idx3-ubyte")
        let data = try Data(contentsOf: path)
        try data.prefix(data.count - 100).write(to: path)
        // The test set is checked before training starts, not when the first evaluation needs it.
        try expectFailure(["--data-dir", dir.path, "--eval-every", "1"], mentions: ["t10k-images-idx3-ubyte", "truncated"])
    }

    func testLabelOutOfRange() throws {
        let dir = try makeData()
        let path = dir.appendingPathComponent("train-labels-idx1-ubyte")
        var data = try Data(contentsOf: path)
        data[8 + 5] = 12
        try data.write(to: path)
        try expectFailure(["--data-dir", dir.path], mentions: ["train-labels-idx1-ubyte", "label 12"])
    }

    func testRunDirCannotBeWritten() throws {
        let blocker = scratch.appendingPathComponent("a-file")
        try Data("x".utf8).write(to: blocker)
        try expectFailure(["--data-dir", try makeData().path, "--run-dir", blocker.appendingPathComponent("run").path],
                          mentions: ["run dir", blocker.path])
    }

    func testErrorOnOneRankOnlyEndsTheJob() throws {
        try expectFailure(["--data-dir", try makeData().path], mentions: ["error on rank 1 of 4", "injected fault at step 2"],
                          environment: ["DDPTRAIN_INJECT_FAULT": "1:2"])
    }

    /// A leftover last batch of one sample would reach batch norm with one value per channel:
    /// refused before training, not an epoch in.
    func testBatchNormSingleSampleBatchIsRefusedUpFront() throws {
        let r = try MPIRun.run(ranks: 2, ["train", "--model", "mlp", "--train-samples", "33", "--global-batch", "32", "--epochs", "1",
                                          "--eval-every", "0", "--run-dir", scratch.appendingPathComponent("lastbatch").path], timeout: 30)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(r.seconds, 10)
        XCTAssertTrue(r.stderr.contains("would see 1 value per channel in the global batch for the last batch of each epoch (33 samples, global batch 32: 1 left over)"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch.appendingPathComponent("lastbatch").path), "nothing written")
        try expectFailure(["--bn", "local", "--per-rank-batch", "1"], mentions: ["a rank's slice (--bn local)"])
        try expectFailure(["--clip-norm", "inf"], mentions: ["--clip-norm must be a positive number, got inf"])
        try expectFailure(["--model", "resnet8", "--bn", "none"], mentions: ["batch norm inside its residual blocks"])
    }
}
