import CZlib
import DDPData
import DDPKernels
import DDPNet
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The model the checkpoint seeds are saved from and the checkpoint target loads into:
/// small enough that a whole checkpoint is a few hundred bytes, with a weight, a bias, batch
/// norm's buffers and counter, and SGD momentum state.
enum SeedModel {
    static let spec = ModelSpec(name: "fuzz-seed", layers: [
        LayerSpec(.flatten), LayerSpec(.linear, out: 3, bias: false), LayerSpec(.batchnorm), LayerSpec(.relu),
        LayerSpec(.linear, out: 2),
    ])

    static func make() throws -> (Model, Optimizer) {
        let model = try spec.build(inputShape: Shape(n: 1, c: 1, h: 2, w: 2), maxBatch: 1)
        return (model, try makeOptimizer(OptimizerConfig(kind: .sgd, momentum: 0.9), for: model))
    }
}

/// Tiny IDX files: `count` images of rows x cols and their labels.
enum IDXBytes {
    static func images(count: Int, rows: Int, cols: Int) -> [UInt8] {
        header(magic: 0x0803, dims: [count, rows, cols]) + (0..<(count * rows * cols)).map { UInt8($0 * 37 % 256) }
    }

    static func labels(_ labels: [UInt8]) -> [UInt8] {
        header(magic: 0x0801, dims: [labels.count]) + labels
    }

    private static func header(magic: UInt32, dims: [Int]) -> [UInt8] {
        ([magic] + dims.map(UInt32.init)).flatMap { field in withUnsafeBytes(of: field.bigEndian) { [UInt8]($0) } }
    }
}

/// A cache built from tiny IDX files at a fixed place, so that the cache's key (the sources'
/// real paths, sizes and modification times) is the same in every process and a cache file
/// from the seed corpus is accepted, not just rebuilt. Each process has its own cache folder.
struct CacheFixture: Sendable {
    let source: DataSource
    let directory: String
    let cacheFile: String

    static let shared: CacheFixture = {
        do { return try CacheFixture() } catch { fatalError("fuzz harness: cannot set up the cache fixture: \(error)") }
    }()

    private init() throws {
        let sourceDirectory = ScratchFiles.temporaryDirectory + "/ddptrain-fuzz-cache-source"
        mkdir(sourceDirectory, 0o755)
        let images = sourceDirectory + "/images-idx3-ubyte", labels = sourceDirectory + "/labels-idx1-ubyte"
        try Self.place(IDXBytes.images(count: 3, rows: 2, cols: 2), at: images)
        try Self.place(IDXBytes.labels([0, 7, 9]), at: labels)
        source = DataSource.idx(images: images, labels: labels, name: "fuzz-cache", classes: 10)
        directory = ScratchFiles.directory + "/cache"
        _ = try Dataset.load(source, cacheDirectory: directory)
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        guard names.count == 1 else { throw FixtureError("expected one cache file in \(directory), found \(names)") }
        cacheFile = directory + "/" + names[0]
    }

    static var modificationTime: timespec { timespec(tv_sec: 1_000_000_000, tv_nsec: 0) }

    /// Leaves `path` alone if it already holds `bytes` with the fixed modification time (another
    /// fuzzer process may be using it); otherwise writes it by rename and sets the time.
    private static func place(_ bytes: [UInt8], at path: String) throws {
        var info = stat()
        if stat(path, &info) == 0, info.st_mtim.tv_sec == modificationTime.tv_sec, info.st_mtim.tv_nsec == 0,
           FileManager.default.contents(atPath: path) == Data(bytes) {
            return
        }
        let temporary = "\(path).\(getpid())"
        bytes.withUnsafeBytes { ScratchFiles.store($0, atPath: temporary) }
        var times = [modificationTime, modificationTime]
        guard utimensat(AT_FDCWD, temporary, &times, 0) == 0, rename(temporary, path) == 0 else {
            throw FixtureError("cannot place \(path): \(String(cString: strerror(errno)))")
        }
    }
}

struct FixtureError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `bytes` gzip-compressed, as `gzip` would write them (zlib's gz* functions, mtime 0).
func gzipped(_ bytes: [UInt8]) throws -> [UInt8] {
    let path = ScratchFiles.directory + "/gzip-\(UUID().uuidString).gz"
    defer { unlink(path) }
    guard let file = gzopen(path, "wb9") else { throw FixtureError("gzopen(\(path)) failed") }
    let written = bytes.withUnsafeBytes { gzwrite(file, $0.baseAddress, UInt32($0.count)) }
    guard gzclose(file) == Z_OK, Int(written) == bytes.count, let data = FileManager.default.contents(atPath: path) else {
        throw FixtureError("gzip of \(bytes.count) bytes failed")
    }
    return [UInt8](data)
}
