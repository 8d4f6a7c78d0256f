import DDPData
import Foundation
import XCTest

/// Files whose sizes lie: sparse giants, gzip bombs, headers that claim more than a machine
/// or a type holds. Each must end in a DataError naming the file and the numbers, without
/// reading (or inflating) more than the header announces.
final class HostileInputTests: XCTestCase {
    /// Set per test and dropped in tearDown: XCTest keeps test objects alive to the end.
    var folder: TemporaryDirectory!
    let tebibyte: Int64 = 1 << 40

    override func setUp() { folder = TemporaryDirectory() }
    override func tearDown() { folder = nil }

    func loadIDX(_ images: String, _ labels: String) throws -> Dataset {
        try Dataset.load(.idx(images: images, labels: labels, name: "hostile"), cacheDirectory: nil)
    }

    /// Extends the file at `path` to `size` bytes without writing them (a sparse file).
    func makeSparse(_ path: String, size: Int64) throws {
        let fd = open(path, O_WRONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        XCTAssertEqual(ftruncate(fd, off_t(size)), 0, String(cString: strerror(errno)))
    }

    /// A gzip file of `prefix` then `zeros` zero bytes, compressed as it is produced (never
    /// whole in memory): ~200 MB of zeros make ~200 KB.
    func gzipFile(_ name: String, prefix: [UInt8], zeros: Int) throws -> String {
        let plain = folder.path + "/" + name + ".source"
        XCTAssertTrue(FileManager.default.createFile(atPath: plain, contents: Data(prefix)))
        try makeSparse(plain, size: Int64(prefix.count + zeros))
        let output = folder.path + "/" + name
        try gzip(["-1", "-c", plain], output: output)
        try FileManager.default.removeItem(atPath: plain)
        return output
    }

    /// The sparse-file test would allocate a tebibyte if the reader did not check first.
    func testSparseTebibyteIDXIsRefusedFromItsSize() throws {
        let images = folder.write("images", idxImages(count: 10, rows: 4, cols: 4) { _ in 7 })
        let labels = folder.write("labels", idxLabels([1, 2, 3, 4, 5, 6, 7, 8, 9, 0]))
        try makeSparse(images, size: tebibyte)
        assertDataError(images, "\(tebibyte - 176) bytes of trailing data after the 10 images of 4x4 the header announces") {
            _ = try loadIDX(images, labels)
        }
        try makeSparse(labels, size: tebibyte)
        let goodImages = folder.write("good-images", idxImages(count: 10, rows: 4, cols: 4) { _ in 7 })
        assertDataError(labels, "trailing data after the 10 labels the header announces") { _ = try loadIDX(goodImages, labels) }
    }

    /// A header that announces exactly what a sparse file holds, more than memory can take.
    func testHeaderLargerThanMemoryIsRefusedBeforeAllocating() throws {
        // 65536 images of 4096x4096: 2^40 bytes, and the file holds exactly that.
        let images = folder.write("images", bigEndian(0x803) + bigEndian(65536) + bigEndian(4096) + bigEndian(4096))
        try makeSparse(images, size: 16 + tebibyte)
        let labels = folder.write("labels", bigEndian(0x801) + bigEndian(65536))
        try makeSparse(labels, size: 8 + 65536)
        assertDataError(images, "65536 images of 4096x4096 need ") { _ = try loadIDX(images, labels) }
    }

    func testImageSizeOverflowIsRefused() throws {
        let images = folder.write("images", bigEndian(0x803) + bigEndian(0xffff_ffff) + bigEndian(0xffff_ffff) + bigEndian(0xffff_ffff))
        let labels = folder.write("labels", idxLabels([1]))
        assertDataError(images, "header says 4294967295 images of 4294967295x4294967295, too large") { _ = try loadIDX(images, labels) }
    }

    /// 200 MB of zeros after a header announcing 10 images of 4x4: the reader inflates the
    /// 160 bytes it expects and one more, and stops.
    func testGzipBombStopsAtTheHeadersSize() throws {
        let header = idxImages(count: 10, rows: 4, cols: 4) { _ in 0 }.prefix(16)
        let bomb = try gzipFile("images.gz", prefix: Array(header), zeros: 200_000_000)
        let labels = folder.write("labels", idxLabels([1, 2, 3, 4, 5, 6, 7, 8, 9, 0]))
        XCTAssertLessThan(try FileManager.default.attributesOfItem(atPath: bomb)[.size] as! Int, 2_000_000)
        assertDataError(bomb, "trailing data after the 10 images of 4x4 the header announces: the gzip stream inflates to more than 176 bytes") {
            _ = try loadIDX(bomb, labels)
        }
        let labelBomb = try gzipFile("labels.gz", prefix: Array(idxLabels([1, 2, 3, 4, 5, 6, 7, 8, 9, 0])), zeros: 200_000_000)
        let images = folder.write("images", idxImages(count: 10, rows: 4, cols: 4) { _ in 7 })
        assertDataError(labelBomb, "the gzip stream inflates to more than 18 bytes") { _ = try loadIDX(images, labelBomb) }
    }

    /// A small gzip file whose header announces more than any deflate stream of its size can hold.
    func testGzipTooSmallForItsHeader() throws {
        let source = folder.write("images", bigEndian(0x803) + bigEndian(60000) + bigEndian(28) + bigEndian(28) + [1, 2, 3])
        try gzip(["-c", source], output: source + ".gz")
        let labels = folder.write("labels", idxLabels([UInt8](repeating: 1, count: 60000)))
        assertDataError(source + ".gz", "truncated: header says 60000 images of 28x28 (47040016 bytes with the header) but a gzip file of ") {
            _ = try loadIDX(source + ".gz", labels)
        }
    }

    /// A gzip stream that ends early (complete, but short): the numbers are those inflated.
    func testShortGzipStream() throws {
        let source = folder.write("images", Array(idxImages(count: 10, rows: 4, cols: 4) { _ in 7 }.dropLast(60)))
        try gzip(["-c", source], output: source + ".gz")
        let labels = folder.write("labels", idxLabels([1, 2, 3, 4, 5, 6, 7, 8, 9, 0]))
        assertDataError(source + ".gz", "truncated: header says 10 images of 4x4 (176 bytes with the header) but the file holds 116 bytes") {
            _ = try loadIDX(source + ".gz", labels)
        }
    }

    func testSparseTebibyteCIFARIsRefusedBeforeReading() throws {
        let path = folder.write("data_batch_1.bin", [3])
        let records = tebibyte / 3073
        try makeSparse(path, size: records * 3073)
        assertDataError(path, "\(records) samples of 3x32x32 need ") { _ = try Dataset.load(.cifar10(batches: [path], name: "hostile"), cacheDirectory: nil) }
    }

    /// The last gzip member's trailer says one record; members before it inflate to 200 MB.
    func testCIFARGzipBombStopsAtTheTrailersSize() throws {
        let bomb = try gzipFile("bomb.bin", prefix: [1], zeros: 200_000_000)
        let record = folder.write("record", [2] + [UInt8](repeating: 9, count: 3072))
        let tail = folder.path + "/tail.gz"
        try gzip(["-c", record], output: tail)
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: bomb))
        handle.seekToEndOfFile()
        handle.write(try Data(contentsOf: URL(fileURLWithPath: tail)))
        try handle.close()
        assertDataError(bomb, "the gzip stream inflates to more than 3073 bytes") {
            _ = try Dataset.load(.cifar10(batches: [bomb], name: "hostile"), cacheDirectory: nil)
        }
    }

    func testCIFARGzipIsRead() throws {
        var bytes: [UInt8] = []
        for record in 0..<3 { bytes += [UInt8(record)] + [UInt8](repeating: UInt8(record * 10), count: 3072) }
        let plain = folder.write("batch.bin", bytes)
        try gzip(["-c", plain], output: plain + ".gz")
        let fromGzip = try Dataset.load(.cifar10(batches: [plain + ".gz"], name: "g"), cacheDirectory: nil)
        XCTAssertTrue(sameData(fromGzip, try Dataset.load(.cifar10(batches: [plain], name: "p"), cacheDirectory: nil)))
        XCTAssertEqual(fromGzip.labels[2], 2)
    }

    /// A path that names something other than a readable regular file.
    func testUnreadableFilesAreErrorsNamingTheFile() throws {
        let labels = folder.write("labels", idxLabels([1]))
        let directory = folder.path + "/a-directory"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        assertDataError(directory, "not a regular file") { _ = try loadIDX(directory, labels) }
        assertDataError(directory, "not a regular file") {
            _ = try Dataset.load(.cifar10(batches: [directory], name: "hostile"), cacheDirectory: nil)
        }
        let underAFile = labels + "/images"
        assertDataError(underAFile, "stat() failed: Not a directory (errno \(ENOTDIR))") { _ = try loadIDX(underAFile, labels) }
    }

    /// No samples: nothing to train on, and statistics would divide by zero.
    func testEmptyIDXIsRefused() throws {
        let images = folder.write("images", idxImages(count: 0, rows: 28, cols: 28) { _ in 0 })
        let labels = folder.write("labels", idxLabels([]))
        assertDataError(images, "header says 0 images: the dataset is empty") { _ = try loadIDX(images, labels) }
    }

    func testClassesOutOfRangeAreRefused() throws {
        let images = folder.write("images", idxImages(count: 1, rows: 1, cols: 1) { _ in 0 })
        let labels = folder.write("labels", idxLabels([0]))
        assertDataError(labels, "classes 0 is not between 1 and 2147483647") {
            _ = try Dataset.load(.idx(images: images, labels: labels, name: "hostile", classes: 0), cacheDirectory: nil)
        }
    }
}

/// Sizes asked of the synthetic generator are checked before anything is allocated.
final class SyntheticSizeTests: XCTestCase {
    func testMoreThanMemoryIsRefused() {
        // 2e9 samples of 784 bytes, labels 4 bytes each, a 64-byte header.
        assertDataError("synthetic-train", "2000000000 samples of 1x28x28 need 1576000000064 bytes of memory, more than the ") {
            _ = try Dataset.synthetic(count: 2_000_000_000, channels: 1, height: 28, width: 28, classes: 10, seed: 1)
        }
    }

    func testCountsAndSizesBeyondTheTypesAreRefused() {
        assertDataError("synthetic-train", "1000000000000 samples is more than 2147483647 samples") {
            _ = try Dataset.synthetic(count: 1_000_000_000_000, channels: 1, height: 28, width: 28, classes: 10, seed: 1)
        }
        assertDataError("synthetic-train", "9223372036854775807 samples is more than 2147483647 samples") {
            _ = try Dataset.synthetic(count: Int.max, channels: 1, height: 28, width: 28, classes: 10, seed: 1)
        }
        assertDataError("synthetic-test", "too large") {
            _ = try Dataset.synthetic(count: 1, channels: Int.max, height: 2, width: 1, classes: 10, seed: 1, split: .test)
        }
    }

    func testEmptyShapesAndBadClassesAreRefused() {
        assertDataError("synthetic-train", "sample shape 1x0x28 is empty") {
            _ = try Dataset.synthetic(count: 10, channels: 1, height: 0, width: 28, classes: 10, seed: 1)
        }
        assertDataError("synthetic-train", "at least 1 sample") {
            _ = try Dataset.synthetic(count: -1, channels: 1, height: 28, width: 28, classes: 10, seed: 1)
        }
        assertDataError("synthetic-train", "classes 0 is not between 1 and") {
            _ = try Dataset.synthetic(count: 10, channels: 1, height: 28, width: 28, classes: 0, seed: 1)
        }
        // The class prototypes (classes x sample bytes) are checked too.
        assertDataError("synthetic-train", "prototypes") {
            _ = try Dataset.synthetic(count: 1, channels: 1, height: 1 << 20, width: 1 << 10, classes: 1 << 20, seed: 1)
        }
    }
}
