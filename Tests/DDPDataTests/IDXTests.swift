import DDPData
import Foundation
import XCTest

/// IDX reading and every way an IDX file can be wrong, on small files written here.
final class IDXTests: XCTestCase {
    /// Set per test and dropped in tearDown: XCTest keeps test objects alive to the end.
    var folder: TemporaryDirectory!
    let labels10: [UInt8] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]

    override func setUp() { folder = TemporaryDirectory() }
    override func tearDown() { folder = nil }

    func load(_ images: String, _ labels: String) throws -> Dataset {
        try Dataset.load(.idx(images: images, labels: labels, name: "tiny"), cacheDirectory: nil)
    }

    func testReadsPixelsAndLabels() throws {
        let images = folder.write("images", idxImages(count: 10, rows: 4, cols: 3) { UInt8($0 % 251) })
        let labels = folder.write("labels", idxLabels(labels10))
        let d = try load(images, labels)
        XCTAssertEqual(d.count, 10)
        XCTAssertEqual(d.shape(batch: 10).dims, [10, 1, 4, 3])
        XCTAssertEqual(d.classes, 10)
        XCTAssertEqual((0..<10).map { d.labels[$0] }, labels10.map(Int32.init))
        XCTAssertEqual((0..<120).map { d.pixels[$0] }, (0..<120).map { UInt8($0 % 251) })
    }

    func testWrongMagic() throws {
        let images = folder.write("images", idxImages(count: 10, rows: 4, cols: 4, magic: 0x802) { _ in 0 })
        let goodImages = folder.write("good-images", idxImages(count: 10, rows: 4, cols: 4) { _ in 0 })
        let labels = folder.write("labels", idxLabels(labels10, magic: 0x803))
        let goodLabels = folder.write("good-labels", idxLabels(labels10))
        assertDataError(images, "wrong magic number 0x00000802, expected 0x00000803 (IDX unsigned-byte images)") {
            _ = try load(images, goodLabels)
        }
        assertDataError(labels, "wrong magic number 0x00000803, expected 0x00000801 (IDX unsigned-byte labels)") {
            _ = try load(goodImages, labels)
        }
    }

    func testNotAnIDXFile() throws {
        let text = folder.write("images", Array("hello, world\n".utf8))
        let empty = folder.write("empty", [])
        let labels = folder.write("labels", idxLabels(labels10))
        assertDataError(text, "not a gzip or IDX file") { _ = try load(text, labels) }
        assertDataError(empty, "empty file") { _ = try load(empty, labels) }
    }

    func testGzipAndPlainAreBothRead() throws {
        let images = folder.write("images", idxImages(count: 10, rows: 4, cols: 3) { UInt8($0 % 13) })
        let labels = folder.write("labels", idxLabels(labels10))
        try gzip(["-c", images], output: images + ".gz")
        XCTAssertTrue(sameData(try load(images + ".gz", labels), try load(images, labels)))
    }

    func testCorruptGzip() throws {
        let images = folder.write("images", idxImages(count: 100, rows: 8, cols: 8) { UInt8($0 * 7 % 256) })
        let labels = folder.write("labels", idxLabels([UInt8](repeating: 1, count: 100)))
        try gzip(["-c", images], output: images + ".gz")
        var bytes = [UInt8](FileManager.default.contents(atPath: images + ".gz")!)
        for i in 20..<40 { bytes[i] ^= 0x5a }
        let damaged = folder.write("damaged.gz", bytes)
        assertDataError(damaged, "cannot read: ") { _ = try load(damaged, labels) }
        let cut = folder.write("cut.gz", Array(bytes.prefix(30)))
        assertDataError(cut, "cannot read: ") { _ = try load(cut, labels) }
    }

    func testTruncated() throws {
        let images = folder.write("images", Array(idxImages(count: 10, rows: 4, cols: 4) { _ in 7 }.dropLast(60)))
        let labels = folder.write("labels", idxLabels(labels10))
        assertDataError(images, "truncated: header says 10 images of 4x4 (176 bytes with the header) but the file holds 116 bytes") {
            _ = try load(images, labels)
        }
        let shortHeader = folder.write("short", [0, 0, 8, 3, 0, 0])
        assertDataError(shortHeader, "truncated: 6 bytes is shorter than the 16-byte IDX header") { _ = try load(shortHeader, labels) }
    }

    func testTrailingBytes() throws {
        let images = folder.write("images", idxImages(count: 10, rows: 4, cols: 4) { _ in 7 } + [1, 2, 3])
        let labels = folder.write("labels", idxLabels(labels10) + [0])
        let goodImages = folder.write("good-images", idxImages(count: 10, rows: 4, cols: 4) { _ in 7 })
        assertDataError(images, "3 bytes of trailing data after the 10 images of 4x4 the header announces") {
            _ = try load(images, labels)
        }
        assertDataError(labels, "1 bytes of trailing data after the 10 labels the header announces") {
            _ = try load(goodImages, labels)
        }
    }

    func testLabelOutOfRange() throws {
        var bad = labels10
        bad[7] = 12
        let images = folder.write("images", idxImages(count: 10, rows: 2, cols: 2) { _ in 0 })
        let labels = folder.write("labels", idxLabels(bad))
        assertDataError(labels, "label 12 at index 7 is out of range 0..9") { _ = try load(images, labels) }
    }

    func testMissingFile() throws {
        let labels = folder.write("labels", idxLabels(labels10))
        let missing = folder.path + "/no-such-images"
        assertDataError(missing, "file not found") { _ = try load(missing, labels) }
        assertDataError(folder.path + "/train-images-idx3-ubyte.gz", "file not found") {
            _ = try DataSource.idx(directory: folder.path, split: .train)
        }
    }

    func testCountMismatchNamesBothFiles() throws {
        let images = folder.write("images", idxImages(count: 10, rows: 2, cols: 2) { _ in 0 })
        let labels = folder.write("labels", idxLabels(Array(labels10.prefix(9))))
        assertDataError(images, "holds 10 images but \(labels) holds 9 labels") { _ = try load(images, labels) }
    }
}
