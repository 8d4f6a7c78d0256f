import Foundation
import XCTest

/// Hostile data inputs through the real binary: a damaged dataset cache, a gzip bomb, a
/// sparse giant, a synthetic dataset larger than memory. Each ends in a warning or a clear
/// error (status 65 or 64), never a crash, within seconds.
final class DataInputTests: XCTestCase {
    var scratch: URL!
    var cacheHome: String { scratch.appendingPathComponent("cache").path }

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-data-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    /// A small Fashion-MNIST-shaped folder of plain IDX files; labels are i mod 10.
    func makeData(train: Int = 64, test: Int = 32) throws -> URL {
        try TestData.fashionMNISTLike(in: scratch.appendingPathComponent("data"), train: train, test: test)
    }

    func train(_ args: [String], ranks: Int = 2) throws -> MPIRun.Result {
        let run = scratch.appendingPathComponent("run-\(UUID().uuidString.prefix(8))").path
        let full = ["train", "--steps", "3", "--per-rank-batch", "4", "--model", "mlp", "--eval-every", "0", "--run-dir", run] + args
        let r = try MPIRun.run(ranks: ranks, full, timeout: 60, environment: ["XDG_CACHE_HOME": cacheHome])
        XCTAssertFalse(r.timedOut, "hung: \(args)")
        XCTAssertFalse(r.stderr.contains("Fatal error"), "crash trace: \(r.stderr)")
        return r
    }

    func expectFailure(_ args: [String], statuses: Set<Int32> = [65], mentions: [String],
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try train(args)
        XCTAssertTrue(statuses.contains(r.status), "\(args): status \(r.status), expected \(statuses):\n\(r.stderr)", file: file, line: line)
        XCTAssertLessThan(r.seconds, 20, "\(args) took \(r.seconds) s to end", file: file, line: line)
        for text in mentions {
            XCTAssertTrue(r.stderr.contains(text), "\(args): stderr lacks '\(text)':\n\(r.stderr)", file: file, line: line)
        }
    }

    /// A data folder and the path of the training set's cache, built by a first run.
    func dataWithItsCache() throws -> (data: URL, cache: String) {
        let data = try makeData()
        let first = try train(["--data-dir", data.path])
        XCTAssertEqual(first.status, 0, first.stderr)
        let folder = cacheHome + "/ddptrain"
        let caches = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasPrefix("data-train-") }
        XCTAssertEqual(caches.count, 1, "\(caches)")
        return (data, folder + "/" + (try XCTUnwrap(caches.first)))
    }

    /// One damaged label byte in the cache once read out of bounds; now the cache's checksum
    /// finds it, and the cache is rebuilt from the source files with a warning.
    func testDamagedCacheIsRebuiltWithAWarning() throws {
        let (data, path) = try dataWithItsCache()
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        // Labels 0...9 as little-endian Int32.
        let labels: [UInt8] = (0..<10).flatMap { (i: Int) -> [UInt8] in [UInt8(i), 0, 0, 0] }
        let offset = try XCTUnwrap((0...(bytes.count - labels.count)).first { (i: Int) -> Bool in
            bytes[i..<(i + labels.count)].elementsEqual(labels)
        })
        bytes[offset + 4 * 7] = 200
        try Data(bytes).write(to: URL(fileURLWithPath: path))

        let second = try train(["--data-dir", data.path])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stderr.contains("warning: \(path): damaged dataset cache (checksum mismatch"), second.stderr)
        XCTAssertTrue(second.stderr.contains("rebuilt from the source files"), second.stderr)
        let third = try train(["--data-dir", data.path])
        XCTAssertEqual(third.status, 0, third.stderr)
        XCTAssertFalse(third.stderr.contains("damaged"), "the rebuilt cache is sound: \(third.stderr)")
    }

    /// 200 MB of zeros behind a header announcing 64 images: refused after inflating those.
    func testGzipBombIsRefused() throws {
        let data = try makeData()
        let images = data.appendingPathComponent("train-images-idx3-ubyte")
        let header = try Data(contentsOf: images).prefix(16)
        try header.write(to: images)
        let handle = try FileHandle(forWritingTo: images)
        try handle.truncate(atOffset: 16 + 200_000_000)  // sparse: zeros that take no disk
        try handle.close()
        let gzip = Process()
        gzip.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gzip.arguments = ["-1", images.path]
        try gzip.run()
        gzip.waitUntilExit()
        XCTAssertEqual(gzip.terminationStatus, 0)
        try expectFailure(["--data-dir", data.path],
                          mentions: ["train-images-idx3-ubyte.gz", "trailing data after the 64 images of 28x28 the header announces",
                                     "inflates to more than 50192 bytes"])
    }

    /// A valid header at the start of a 1 TiB sparse file: refused from its size, unread.
    func testSparseTebibyteFileIsRefusedFromItsSize() throws {
        let data = try makeData()
        let images = data.appendingPathComponent("train-images-idx3-ubyte")
        let handle = try FileHandle(forWritingTo: images)
        try handle.truncate(atOffset: 1 << 40)
        try handle.close()
        try expectFailure(["--data-dir", data.path],
                          mentions: ["train-images-idx3-ubyte", "\((1 << 40) - 50192) bytes of trailing data after the 64 images of 28x28"])
    }

    /// Counts whose bytes exceed the 32-bit sample indices or the memory: refused before
    /// allocating (by the option's check or by the data layer's).
    func testSyntheticDatasetLargerThanMemoryIsRefused() throws {
        try expectFailure(["--dataset", "synthetic", "--synthetic-samples", "1000000000000"], statuses: [64, 65],
                          mentions: ["1000000000000"])
        try expectFailure(["--dataset", "synthetic", "--synthetic-samples", "2000000000"], statuses: [64, 65],
                          mentions: ["2000000000"])
    }
    /// A FIFO where the dataset cache belongs once blocked rank 0 in open(), waiting for a
    /// writer, while the other ranks waited for it: now it is a damaged cache, rebuilt.
    func testFIFOAtTheCachePathIsRebuiltWithAWarning() throws {
        let (data, path) = try dataWithItsCache()
        try FileManager.default.removeItem(atPath: path)
        XCTAssertEqual(mkfifo(path, 0o600), 0)
        let second = try train(["--data-dir", data.path])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stderr.contains("warning: \(path): damaged dataset cache (not a regular file (a FIFO))"), second.stderr)
        var info = stat()
        XCTAssertEqual(stat(path, &info), 0)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFREG, "the FIFO was replaced by a cache")
    }

    /// CIFAR-10 batches of valid format whose pixels are all 0: std 0. Normalizing divided by
    /// it, every step was non-finite and the run ended "diverged" (70); now refused at load.
    func testCIFARWithAllPixelsEqualIsRefused() throws {
        let dir = scratch.appendingPathComponent("cifar")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let record = Data([1]) + Data(count: 3 * 32 * 32)
        for name in (1...5).map({ "data_batch_\($0).bin" }) + ["test_batch.bin"] {
            try (record + record).write(to: dir.appendingPathComponent(name))
        }
        try expectFailure(["--dataset", "cifar10", "--data-dir", dir.path],
                          mentions: ["data_batch_1.bin", "all 30720 pixels of the 10 samples are 0: std 0, the data cannot be normalized"])
    }

    /// A synthetic training set too large, sized by --train-samples: the error names that
    /// option, not --synthetic-samples.
    func testOversizedTrainSamplesNameTheirOption() throws {
        try expectFailure(["--dataset", "synthetic", "--synthetic-samples", "2100000000", "--train-samples", "2000000000"],
                          mentions: ["--train-samples 2000000000: "])
    }
}
