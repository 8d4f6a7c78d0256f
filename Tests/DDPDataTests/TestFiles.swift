import DDPData
import Foundation
import XCTest

/// A fresh directory under the system temp folder, removed when the test object goes away.
final class TemporaryDirectory {
    let path: String

    init() {
        path = NSTemporaryDirectory() + "ddpdata-tests-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    @discardableResult
    func write(_ name: String, _ bytes: [UInt8]) -> String {
        let file = path + "/" + name
        let folder = (file as NSString).deletingLastPathComponent
        try! FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data(bytes)))
        return file
    }
}

/// Runs /bin/gzip with `arguments`, its standard output going to the file `output`.
func gzip(_ arguments: [String], output: String) throws {
    XCTAssertTrue(FileManager.default.createFile(atPath: output, contents: nil))
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/gzip")
    process.arguments = arguments
    process.standardOutput = FileHandle(forWritingAtPath: output)
    try process.run()
    process.waitUntilExit()
    XCTAssertEqual(process.terminationStatus, 0)
}

func bigEndian(_ x: UInt32) -> [UInt8] { [UInt8(x >> 24), UInt8(x >> 16 & 0xff), UInt8(x >> 8 & 0xff), UInt8(x & 0xff)] }

/// An IDX image file: magic 0x803, dimensions, pixels.
func idxImages(count: Int, rows: Int, cols: Int, magic: UInt32 = 0x803, pixel: (Int) -> UInt8) -> [UInt8] {
    bigEndian(magic) + bigEndian(UInt32(count)) + bigEndian(UInt32(rows)) + bigEndian(UInt32(cols))
        + (0..<count * rows * cols).map(pixel)
}

/// An IDX label file: magic 0x801, count, labels.
func idxLabels(_ labels: [UInt8], magic: UInt32 = 0x801) -> [UInt8] {
    bigEndian(magic) + bigEndian(UInt32(labels.count)) + labels
}

/// Asserts that `body` throws a DataError about `path` whose message contains `text`.
func assertDataError(_ path: String, _ text: String, file: StaticString = #filePath, line: UInt = #line,
                     _ body: () throws -> Void) {
    do {
        try body()
        XCTFail("expected an error about \(path): \(text)", file: file, line: line)
    } catch let error as DataError {
        XCTAssertEqual(error.path, path, file: file, line: line)
        XCTAssertTrue(error.description.hasPrefix(path + ": "), error.description, file: file, line: line)
        XCTAssertTrue(error.description.contains(text), "\(error.description) does not contain \(text)", file: file, line: line)
    } catch {
        XCTFail("unexpected error \(error)", file: file, line: line)
    }
}

/// True if both datasets hold the same shape, labels and pixels.
func sameData(_ a: Dataset, _ b: Dataset) -> Bool {
    a.count == b.count && a.channels == b.channels && a.height == b.height && a.width == b.width
        && a.classes == b.classes
        && memcmp(a.labels, b.labels, 4 * a.count) == 0
        && memcmp(a.pixels, b.pixels, a.count * a.samplePixels) == 0
}
