import DDPData
import Foundation
import Synchronization
import XCTest

final class CacheTests: XCTestCase {
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
        let again = try load(cacheDirectory: cache)
        guard case .built = again.cacheStatus else { return XCTFail("damaged cache was used: \(again.cacheStatus)") }
        XCTAssertTrue(sameData(again, try load(cacheDirectory: nil)))
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
