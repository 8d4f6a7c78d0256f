import DDPData
import Foundation
import Synchronization
import XCTest

/// Six 3x2 IDX images with labels 0...5 in a fresh folder per test, and a cache folder in it.
class SmallIDXTestCase: XCTestCase {
    /// Set per test and dropped in tearDown: XCTest keeps test objects alive to the end.
    var folder: TemporaryDirectory!
    var images = "", labels = ""
    var cache: String { folder.path + "/cache" }

    override func setUp() {
        folder = TemporaryDirectory()
        images = folder.write("images", idxImages(count: 6, rows: 3, cols: 2) { UInt8($0 * 5 % 256) })
        labels = folder.write("labels", idxLabels([0, 1, 2, 3, 4, 5]))
    }

    override func tearDown() { folder = nil }
}

final class CacheTests: SmallIDXTestCase {

    func load(cacheDirectory: String?) throws -> Dataset {
        try Dataset.load(.idx(images: images, labels: labels, name: "tiny"), cacheDirectory: cacheDirectory)
    }

    func testBuildThenMap() throws {
        let built = try load(cacheDirectory: cache)
        guard case .built(let path) = built.cacheStatus else { return XCTFail("\(built.cacheStatus)") }
        XCTAssertFalse(built.loadedFromCache)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: cache), [(path as NSString).lastPathComponent],
                       "no temporary file is left behind")
        let mapped = try load(cacheDirectory: cache)
        XCTAssertTrue(mapped.loadedFromCache)
        XCTAssertEqual(mapped.cacheStatus, .mapped(path: path))
        XCTAssertTrue(sameData(built, mapped))
        XCTAssertTrue(sameData(mapped, try load(cacheDirectory: nil)))
    }

    /// Like ranks on one node starting together: every loader builds and renames its own
    /// copy; all see the same data and one cache file remains.
    func testConcurrentBuildsAgree() throws {
        let source = DataSource.idx(images: images, labels: labels, name: "tiny"), cache = cache
        let loaded = Mutex<[Dataset]>([])
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            let d = try! Dataset.load(source, cacheDirectory: cache)
            loaded.withLock { $0.append(d) }
        }
        let reference = try load(cacheDirectory: nil)
        loaded.withLock { all in
            XCTAssertEqual(all.count, 4)
            for d in all { XCTAssertTrue(sameData(d, reference)) }
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: cache).count, 1)
    }

    func testStaleCacheIsRebuilt() throws {
        let old = try load(cacheDirectory: cache)
        XCTAssertEqual(old.labels[5], 5)
        // Same size, new content and a later modification time.
        folder.write("labels", idxLabels([0, 1, 2, 3, 4, 9]))
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(10)], ofItemAtPath: labels)
        let new = try load(cacheDirectory: cache)
        guard case .built = new.cacheStatus else { return XCTFail("stale cache was used: \(new.cacheStatus)") }
        XCTAssertEqual(new.labels[5], 9)
        XCTAssertEqual(old.labels[5], 5, "a dataset mapped earlier keeps its data")
        XCTAssertTrue(try load(cacheDirectory: cache).loadedFromCache)
    }

    func testDamagedCacheIsRebuilt() throws {
        guard case .built(let path) = try load(cacheDirectory: cache).cacheStatus else { return XCTFail() }
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: path))
        try handle.truncate(atOffset: 100)
        try handle.close()
        try assertRebuilt(because: "header")
    }

    /// The built cache's bytes, and the offset of its labels (found by their values 0...5).
    func builtCache() throws -> (path: String, bytes: [UInt8], labelsOffset: Int) {
        try? FileManager.default.removeItem(atPath: cache)
        let status = try load(cacheDirectory: cache).cacheStatus
        guard case .built(let path) = status else {
            XCTFail("the cache was not built: \(status)")
            throw CacheNotBuilt()
        }
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let labels: [UInt8] = (0..<6).flatMap { (i: Int) -> [UInt8] in [UInt8(i), 0, 0, 0] }
        let offset = try XCTUnwrap((0...(bytes.count - labels.count)).first { (i: Int) -> Bool in
            bytes[i..<(i + labels.count)].elementsEqual(labels)
        })
        return (path, bytes, offset)
    }

    /// Loads again and expects the cache to have been rebuilt because of `damage`.
    func assertRebuilt(because damage: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let again = try load(cacheDirectory: cache)
        guard case .rebuilt(_, let reason) = again.cacheStatus else {
            return XCTFail("damaged cache: \(again.cacheStatus)", file: file, line: line)
        }
        XCTAssertTrue(reason.contains(damage), reason, file: file, line: line)
        XCTAssertTrue(sameData(again, try load(cacheDirectory: nil)), file: file, line: line)
        XCTAssertTrue(try load(cacheDirectory: cache).loadedFromCache, "the rebuilt cache is mapped next time", file: file, line: line)
    }

    /// One damaged label byte once made a label index out of bounds: the checksum finds it.
    func testDamagedLabelByteIsRebuilt() throws {
        var (path, bytes, labelsOffset) = try builtCache()
        bytes[labelsOffset + 4 * 5] = 200
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        try assertRebuilt(because: "checksum")
    }

    func testDamagedPixelByteIsRebuilt() throws {
        var (path, bytes, _) = try builtCache()
        bytes[bytes.count - 1] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        try assertRebuilt(because: "checksum")
    }

    /// A cache whose checksum agrees (written so) but whose label is out of range.
    func testLabelOutOfRangeIsRebuiltEvenWithAValidChecksum() throws {
        var (path, bytes, labelsOffset) = try builtCache()
        bytes[labelsOffset + 4 * 5] = 200
        let checksum = crc32(bytes[64...], continuing: crc32(bytes[0..<56]))
        for i in 0..<8 { bytes[56 + i] = UInt8(truncatingIfNeeded: UInt64(checksum) >> (8 * UInt64(i))) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        try assertRebuilt(because: "label 200 at index 5 is out of range 0..9")
    }

    /// Header fields that claim more than the file holds, or overflow when multiplied.
    func testHeaderFieldsOutOfRangeAreRebuilt() throws {
        for (field, value) in [(0, UInt64.max), (0, UInt64(1) << 40), (1, UInt64(1) << 62), (5, UInt64(1) << 50), (4, 0)] {
            var (path, bytes, _) = try builtCache()
            for i in 0..<8 { bytes[8 + 8 * field + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            try assertRebuilt(because: "header")
        }
    }

    func testTruncatedToLessThanTheHeaderIsRebuilt() throws {
        let (path, bytes, _) = try builtCache()
        try Data(bytes.prefix(20)).write(to: URL(fileURLWithPath: path))
        try assertRebuilt(because: "20 bytes")
    }

    /// A link where the cache goes is neither read nor written through: the cache replaces it.
    func testSymlinkInPlaceOfTheCacheIsNotFollowed() throws {
        let (path, _, _) = try builtCache()
        let victim = folder.write("victim", Array("keep me".utf8))
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: victim)
        let again = try load(cacheDirectory: cache)
        guard case .rebuilt(_, let reason) = again.cacheStatus else { return XCTFail("\(again.cacheStatus)") }
        XCTAssertTrue(reason.contains("symbolic link"), reason)
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "keep me")
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: path)[.type] as? FileAttributeType, .typeRegular)
    }

    func testUnwritableCacheFallsBackToMemory() throws {
        let notAFolder = folder.write("file", [1])
        let d = try load(cacheDirectory: notAFolder + "/cache")
        guard case .unavailable(let reason) = d.cacheStatus else { return XCTFail("\(d.cacheStatus)") }
        XCTAssertTrue(reason.contains(notAFolder + "/cache/"), reason)
        XCTAssertTrue(sameData(d, try load(cacheDirectory: nil)))
    }

    func testDefaultCacheDirectoryFollowsXDG() {
        let saved = getenv("XDG_CACHE_HOME").map { String(cString: $0) }
        defer { if let saved { setenv("XDG_CACHE_HOME", saved, 1) } else { unsetenv("XDG_CACHE_HOME") } }
        setenv("XDG_CACHE_HOME", "/somewhere/cache", 1)
        XCTAssertEqual(Dataset.defaultCacheDirectory, "/somewhere/cache/ddptrain")
        unsetenv("XDG_CACHE_HOME")
        XCTAssertEqual(Dataset.defaultCacheDirectory, String(cString: getenv("HOME")) + "/.cache/ddptrain")
    }
}

/// CRC-32 (zlib's polynomial), bit by bit: the cache's checksum, computed independently.
func crc32<C: Collection>(_ bytes: C, continuing previous: UInt32 = 0) -> UInt32 where C.Element == UInt8 {
    var crc = ~previous
    for byte in bytes {
        crc ^= UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xedb8_8320 : crc >> 1 }
    }
    return ~crc
}

/// A cache that should have been built was not (a failure, reported where it happened).
private struct CacheNotBuilt: Error {}
