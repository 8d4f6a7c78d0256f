import DDPData
import Foundation
import XCTest

/// The real Fashion-MNIST from Debian's dataset-fashion-mnist. Expected values were read
/// with Python's gzip module from the same files.
final class FashionMNISTTests: XCTestCase {
    static let directory = "/usr/share/datasets/fashion-mnist"
    /// One cache for the whole class, so the 26 MB of gzip are decoded once.
    nonisolated(unsafe) static let cache = TemporaryDirectory()

    override class func tearDown() { try? FileManager.default.removeItem(atPath: cache.path) }

    override func setUpWithError() throws {
        try XCTSkipUnless(FileManager.default.fileExists(atPath: Self.directory + "/train-images-idx3-ubyte.gz"),
                          "Fashion-MNIST is not installed (apt install dataset-fashion-mnist)")
    }

    func load(_ split: Split, firstN: Int? = nil) throws -> Dataset {
        try Dataset.load(DataSource.idx(directory: Self.directory, split: split), firstN: firstN,
                         cacheDirectory: Self.cache.path)
    }

    func firstImageSum(_ d: Dataset, _ i: Int) -> Int {
        (0..<d.samplePixels).reduce(0) { $0 + Int(d.pixels[i * d.samplePixels + $1]) }
    }

    func testTrainSet() throws {
        let train = try load(.train)
        XCTAssertEqual(train.name, "fashion-mnist-train")
        XCTAssertEqual(train.count, 60000)
        XCTAssertEqual(train.shape(batch: 5).dims, [5, 1, 28, 28])
        XCTAssertEqual(train.classes, 10)
        XCTAssertEqual((0..<20).map { train.labels[$0] }, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5, 0, 9, 5, 5, 7, 9, 1, 0, 6, 4])
        XCTAssertEqual(firstImageSum(train, 0), 76247)
        XCTAssertEqual(firstImageSum(train, 1), 84598)
    }

    func testTestSet() throws {
        let test = try load(.test)
        XCTAssertEqual(test.name, "fashion-mnist-test")
        XCTAssertEqual(test.count, 10000)
        XCTAssertEqual((0..<10).map { test.labels[$0] }, [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
        XCTAssertEqual(firstImageSum(test, 0), 33456)
    }

    func testMeanAndStdAreTheKnownValues() throws {
        let statistics = try load(.train).pixelStatistics()
        XCTAssertEqual(statistics.mean, 0.2860, accuracy: 1e-4)
        XCTAssertEqual(statistics.std, 0.3530, accuracy: 1e-4)
    }

    func testSecondLoadMapsTheCache() throws {
        let first = try load(.train)
        let second = try load(.train)
        XCTAssertTrue(second.loadedFromCache)
        guard case .mapped(let path) = second.cacheStatus else { return XCTFail("\(second.cacheStatus)") }
        XCTAssertTrue(path.hasPrefix(Self.cache.path + "/fashion-mnist-train-"))
        XCTAssertTrue(sameData(first, second))
    }

    func testFirstN() throws {
        let all = try load(.train)
        let some = try load(.train, firstN: 1000)
        XCTAssertEqual(some.count, 1000)
        XCTAssertEqual(memcmp(all.pixels, some.pixels, 1000 * 784), 0)
        assertDataError(Self.directory + "/train-images-idx3-ubyte.gz", "asked for the first 60001 samples but the file holds 60000") {
            _ = try load(.train, firstN: 60001)
        }
    }

    func testPlainAndGzipGiveTheSameData() throws {
        let plain = TemporaryDirectory()
        for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
            try gzip(["-dc", Self.directory + "/" + name + ".gz"], output: plain.path + "/" + name)
        }
        let source = try DataSource.idx(directory: plain.path, split: .test)
        XCTAssertEqual(source.files, [plain.path + "/t10k-images-idx3-ubyte", plain.path + "/t10k-labels-idx1-ubyte"])
        let fromPlain = try Dataset.load(source, cacheDirectory: nil)
        let fromGzip = try Dataset.load(DataSource.idx(directory: Self.directory, split: .test), cacheDirectory: nil)
        XCTAssertEqual(fromPlain.cacheStatus, .disabled)
        XCTAssertTrue(sameData(fromPlain, fromGzip))
    }

    func testGatherNormalizesLikeTorchvision() throws {
        let train = try load(.train)
        let normalization = Normalization(mean: 0.2860, std: 0.3530)
        let indices: [Int32] = [7, 0, 59999]
        var x = [Float](repeating: .nan, count: 3 * 784)
        var labels = [Int32](repeating: -1, count: 3)
        train.gather(indices: indices[...], normalization: normalization, into: &x, labels: &labels)
        XCTAssertEqual(labels, [2, 9, train.labels[59999]])
        for (row, i) in indices.enumerated() {
            for j in 0..<784 {
                let p = Float(train.pixels[Int(i) * 784 + j])
                XCTAssertEqual(x[row * 784 + j], (p / 255 - Float(0.2860)) / Float(0.3530))
            }
        }
    }
}
