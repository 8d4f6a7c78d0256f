import DDPData
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// FIFOs and directories where a data file or the cache should be, and data that cannot be
/// normalized: each is reported (or, for the cache, rebuilt), never waited on.
final class SpecialFileTests: SmallIDXTestCase {

    func makeFIFO(_ path: String) {
        XCTAssertEqual(mkfifo(path, 0o600), 0, "mkfifo \(path)")
    }

    /// Runs `body` on another thread and returns its result, or fails if it is still blocked
    /// (in open() of `fifo`, which has no writer) after a generous bound; the FIFO is then
    /// opened for writing so that the blocked thread is released.
    func withoutBlocking<T: Sendable>(on fifo: String, _ body: @escaping @Sendable () throws -> T) -> Result<T, Error>? {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: Result<T, Error>?
        Thread.detachNewThread {
            result = Result { try body() }
            done.signal()
        }
        guard done.wait(timeout: .now() + 30) == .success else {
            XCTFail("still blocked after 30 s: opening \(fifo) waits for a writer")
            let writer = open(fifo, O_WRONLY | O_NONBLOCK)
            if writer >= 0 { close(writer) }
            done.wait()
            return nil
        }
        return result
    }

    func testFIFOAtTheCachePathIsReplaced() throws {
        let source = DataSource.idx(images: images, labels: labels, name: "tiny"), cache = cache
        guard case .built(let path) = try Dataset.load(source, cacheDirectory: cache).cacheStatus else { return XCTFail() }
        try FileManager.default.removeItem(atPath: path)
        makeFIFO(path)
        guard let loaded = withoutBlocking(on: path, { try Dataset.load(source, cacheDirectory: cache) }) else { return }
        let dataset = try loaded.get()
        guard case .rebuilt(path, let reason) = dataset.cacheStatus else { return XCTFail("\(dataset.cacheStatus)") }
        XCTAssertTrue(reason.contains("not a regular file (a FIFO)"), reason)
        XCTAssertEqual(dataset.labels[5], 5)
        XCTAssertTrue(try Dataset.load(source, cacheDirectory: cache).loadedFromCache, "the FIFO was replaced by a cache")
    }

    /// A data file swapped for a FIFO after the directory was listed: open must not wait.
    func testFIFOAsADataFileIsRefused() throws {
        try FileManager.default.removeItem(atPath: images)
        makeFIFO(images)
        let source = DataSource.idx(images: images, labels: labels, name: "tiny")
        guard let loaded = withoutBlocking(on: images, { try Dataset.load(source, cacheDirectory: nil) }) else { return }
        assertDataError(images, "not a regular file (a FIFO)") { _ = try loaded.get() }
    }

    func testFIFOInADataDirectoryIsNotAMissingFile() throws {
        let fifo = folder.path + "/train-images-idx3-ubyte.gz"
        makeFIFO(fifo)
        assertDataError(fifo, "not a regular file (a FIFO)") { _ = try DataSource.idx(directory: folder.path, split: .train) }
    }

    func testDirectoryInADataDirectoryIsNotAMissingFile() throws {
        folder.write("cifar-10-batches-bin/data_batch_1.bin", [])
        let batch = folder.path + "/cifar-10-batches-bin/data_batch_2.bin"
        try FileManager.default.createDirectory(atPath: batch, withIntermediateDirectories: false)
        assertDataError(batch, "not a regular file (a directory)") { _ = try DataSource.cifar10(directory: folder.path, split: .train) }
    }

    func testAllZeroIDXImagesCannotBeNormalized() throws {
        let zeros = folder.write("zeros", idxImages(count: 6, rows: 3, cols: 2) { _ in 0 })
        let dataset = try Dataset.load(.idx(images: zeros, labels: labels, name: "zeros"), cacheDirectory: nil)
        XCTAssertEqual(dataset.pixelStatistics(), Normalization(mean: 0, std: 0))
        assertDataError(zeros, "all 36 pixels of the 6 samples are 0: std 0, the data cannot be normalized") {
            _ = try dataset.normalization()
        }
    }

    func testEqualCIFARPixelsCannotBeNormalized() throws {
        let record = [UInt8(3)] + [UInt8](repeating: 200, count: 3 * 32 * 32)
        let batch = folder.write("batch.bin", record + record)
        let dataset = try Dataset.load(.cifar10(batches: [batch], name: "flat"), cacheDirectory: nil)
        assertDataError(batch, "all 6144 pixels of the 2 samples are 200: std 0") { _ = try dataset.normalization() }
    }

    func testNormalizationOfVaryingPixels() throws {
        let dataset = try Dataset.load(.idx(images: images, labels: labels, name: "tiny"), cacheDirectory: nil)
        XCTAssertEqual(try dataset.normalization(), dataset.pixelStatistics())
        XCTAssertGreaterThan(dataset.pixelStatistics().std, 0)
    }
}
