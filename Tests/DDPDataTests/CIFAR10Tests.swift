import DDPData
import Foundation
import XCTest

/// CIFAR-10 binary batches in the real layout, 5 records per file.
final class CIFAR10Tests: XCTestCase {
    /// Set per test and dropped in tearDown: XCTest keeps test objects alive to the end.
    var folder: TemporaryDirectory!

    override func setUp() { folder = TemporaryDirectory() }
    override func tearDown() { folder = nil }

    func pixel(file: Int, record: Int, _ j: Int) -> UInt8 { UInt8((file * 31 + record * 7 + j) & 0xff) }
    func label(file: Int, record: Int) -> UInt8 { UInt8((file + 3 * record) % 10) }

    /// data_batch_1..5.bin (files 0..4) and test_batch.bin (file 5) under cifar-10-batches-bin.
    func writeBatches(records: Int = 5) {
        let names = (1...5).map { "data_batch_\($0).bin" } + ["test_batch.bin"]
        for (file, name) in names.enumerated() {
            var bytes: [UInt8] = []
            for record in 0..<records {
                bytes.append(label(file: file, record: record))
                bytes += (0..<3072).map { pixel(file: file, record: record, $0) }
            }
            folder.write("cifar-10-batches-bin/" + name, bytes)
        }
    }

    func testReadsTrainAndTestSplits() throws {
        writeBatches()
        let train = try Dataset.load(DataSource.cifar10(directory: folder.path, split: .train), cacheDirectory: nil)
        XCTAssertEqual(train.name, "cifar-10-train")
        XCTAssertEqual(train.count, 25)
        XCTAssertEqual(train.shape(batch: 1).sampleDims, [3, 32, 32])
        XCTAssertEqual(train.classes, 10)
        for sample in 0..<25 {
            let (file, record) = (sample / 5, sample % 5)
            XCTAssertEqual(train.labels[sample], Int32(label(file: file, record: record)))
            XCTAssertTrue((0..<3072).allSatisfy { train.pixels[sample * 3072 + $0] == pixel(file: file, record: record, $0) })
        }
        let test = try Dataset.load(DataSource.cifar10(directory: folder.path + "/cifar-10-batches-bin", split: .test),
                                    cacheDirectory: nil)
        XCTAssertEqual(test.count, 5)
        XCTAssertEqual(test.labels[4], Int32(label(file: 5, record: 4)))
        XCTAssertEqual(test.pixels[4 * 3072 + 1024], pixel(file: 5, record: 4, 1024))
    }

    func testSizeNotAMultipleOfTheRecord() throws {
        let path = folder.write("bad.bin", [UInt8](repeating: 1, count: 2 * 3073 + 5))
        assertDataError(path, "size 6151 bytes is not a multiple of the 3073-byte CIFAR-10 record") {
            _ = try Dataset.load(.cifar10(batches: [path], name: "bad"), cacheDirectory: nil)
        }
    }

    func testLabelOutOfRange() throws {
        var bytes = [UInt8](repeating: 0, count: 3 * 3073)
        bytes[3073] = 10
        let path = folder.write("bad.bin", bytes)
        assertDataError(path, "label 10 at record 1 is out of range 0..9") {
            _ = try Dataset.load(.cifar10(batches: [path], name: "bad"), cacheDirectory: nil)
        }
    }

    func testMissingBatch() throws {
        writeBatches()
        try FileManager.default.removeItem(atPath: folder.path + "/cifar-10-batches-bin/data_batch_3.bin")
        assertDataError(folder.path + "/cifar-10-batches-bin/data_batch_3.bin", "file not found") {
            _ = try DataSource.cifar10(directory: folder.path, split: .train)
        }
    }
}
