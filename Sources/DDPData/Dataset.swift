import DDPKernels
import DDPSystem
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum Split: String, Sendable {
    case train, test
}

/// Which files a dataset is read from, in which format.
public struct DataSource: Equatable, Sendable {
    public enum Format: String, Sendable {
        /// IDX image and label files (MNIST, Fashion-MNIST), gzip or plain: files = [images, labels].
        case idx
        /// CIFAR-10 binary batches, concatenated in the order given.
        case cifar10
    }

    public var format: Format
    public var files: [String]
    /// Names the dataset and its cache file, e.g. "fashion-mnist-train".
    public var name: String
    public var classes: Int

    public static func idx(images: String, labels: String, name: String, classes: Int = 10) -> DataSource {
        DataSource(format: .idx, files: [images, labels], name: name, classes: classes)
    }

    public static func cifar10(batches: [String], name: String) -> DataSource {
        DataSource(format: .cifar10, files: batches, name: name, classes: CIFAR10.classes)
    }

    /// The standard files of a split in `directory`: `train-images-idx3-ubyte.gz` and
    /// `train-labels-idx1-ubyte.gz` (`t10k-` for test; with or without `.gz`). Named after
    /// the directory, e.g. "fashion-mnist-train".
    public static func idx(directory: String, split: Split, classes: Int = 10) throws -> DataSource {
        let prefix = split == .train ? "train" : "t10k"
        return idx(images: try existing(directory, "\(prefix)-images-idx3-ubyte"),
                   labels: try existing(directory, "\(prefix)-labels-idx1-ubyte"),
                   name: "\(baseName(directory))-\(split.rawValue)", classes: classes)
    }

    /// `data_batch_1.bin` ... `data_batch_5.bin` for train, `test_batch.bin` for test, in
    /// `directory` or in its `cifar-10-batches-bin` subfolder (how the archive unpacks).
    public static func cifar10(directory: String, split: Split) throws -> DataSource {
        let names = split == .train ? (1...5).map { "data_batch_\($0).bin" } : ["test_batch.bin"]
        let nested = directory + "/cifar-10-batches-bin"
        // Whatever is there (a directory, a FIFO) is then reported, not "file not found" above it.
        let folder = access(nested + "/" + names[0], F_OK) == 0 ? nested : directory
        let batches = names.map { folder + "/" + $0 }
        for batch in batches { if let problem = notARegularFile(batch) { throw DataError(batch, problem) } }
        return cifar10(batches: batches, name: "cifar-10-\(split.rawValue)")
    }

    private static func existing(_ directory: String, _ name: String) throws -> String {
        let path = directory + "/" + name
        if isFile(path + ".gz") { return path + ".gz" }
        if isFile(path) { return path }
        // Something else under either name (a directory, a FIFO) is not a missing file.
        for candidate in [path + ".gz", path] {
            if let problem = notARegularFile(candidate), !problem.hasPrefix("file not found") { throw DataError(candidate, problem) }
        }
        throw DataError(path + ".gz", "file not found (nor without .gz)")
    }

    private static func baseName(_ path: String) -> String {
        String(path.split(separator: "/").last ?? "data")
    }
}

/// Mean and standard deviation of pixel values scaled to [0, 1]; a batch is gathered as
/// x = (p / 255 - mean) / std, as torchvision's ToTensor and Normalize do.
public struct Normalization: Equatable, Sendable {
    public var mean: Double
    public var std: Double

    public init(mean: Double, std: Double) {
        self.mean = mean
        self.std = std
    }

    /// x = p / 255.
    public static let none = Normalization(mean: 0, std: 1)
}

/// How a dataset came to be in memory.
public enum CacheStatus: Equatable, Sendable {
    /// Decoded into memory without a cache (none asked for, or a synthetic dataset).
    case disabled
    /// An existing cache, built from the same files, was memory-mapped.
    case mapped(path: String)
    /// The sources were decoded, written to this cache, and the cache was mapped.
    case built(path: String)
    /// The cache was damaged (the reason: checksum, header field, label out of range, ...);
    /// it was rebuilt from the sources, like `built`. Callers warn about it.
    case rebuilt(path: String, reason: String)
    /// The cache could not be written (the reason); the decoded data stays in memory.
    case unavailable(reason: String)
}

/// N samples of UInt8 pixels (CHW, sample-major) with Int32 labels, read-only. The bytes
/// are usually a shared read-only map of the cache file, so every rank on a node shares one
/// copy in the page cache and touches only the samples it gathers.
public final class Dataset: @unchecked Sendable {  // immutable after init
    public let name: String
    public let count: Int
    public let channels: Int
    public let height: Int
    public let width: Int
    public let classes: Int
    /// count x samplePixels bytes; like `labels`, valid while the dataset lives.
    public let pixels: UnsafePointer<UInt8>
    public let labels: UnsafePointer<Int32>
    public let cacheStatus: CacheStatus
    private let storage: Storage
    /// The files the pixels were read from (none for a dataset made in memory): errors about
    /// the pixels name them.
    private let pixelFiles: [String]

    public var samplePixels: Int { channels * height * width }
    public var loadedFromCache: Bool {
        if case .mapped = cacheStatus { return true }
        return false
    }

    /// The NCHW shape of a batch of `n` samples.
    public func shape(batch n: Int) -> Shape { Shape(n: n, c: channels, h: height, w: width) }

    init(storage: Storage, name: String, firstN: Int?, cacheStatus: CacheStatus, pixelFiles: [String] = []) {
        let layout = storage.layout
        self.storage = storage
        self.name = name
        self.pixelFiles = pixelFiles
        count = min(firstN ?? layout.count, layout.count)
        channels = layout.channels
        height = layout.height
        width = layout.width
        classes = layout.classes
        pixels = UnsafePointer((storage.base + layout.pixelsOffset).assumingMemoryBound(to: UInt8.self))
        labels = UnsafePointer((storage.base + layout.labelsOffset).assumingMemoryBound(to: Int32.self))
        self.cacheStatus = cacheStatus
    }

    /// A dataset held in memory, e.g. built by a test.
    public convenience init(name: String, channels: Int, height: Int, width: Int, classes: Int, pixels: [UInt8], labels: [Int32]) throws {
        let layout = Layout(count: labels.count, channels: channels, height: height, width: width, classes: classes, key: [])
        if let problem = layout.problem { throw DataError(name, problem) }
        guard pixels.count == labels.count * layout.samplePixels else {
            throw DataError(name, "\(pixels.count) pixels do not make \(labels.count) samples of \(layout.shapeText)")
        }
        if let i = labels.firstIndex(where: { $0 < 0 || Int($0) >= classes }) {
            throw DataError(name, "label \(labels[i]) at index \(i) is out of range 0..\(classes - 1)")
        }
        let storage = try Storage(allocating: layout, path: name, what: "\(labels.count) samples of \(layout.shapeText)")
        labels.withUnsafeBytes { (storage.base + storage.layout.labelsOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        pixels.withUnsafeBytes { (storage.base + storage.layout.pixelsOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        self.init(storage: storage, name: name, firstN: nil, cacheStatus: .disabled)
    }

    /// `$XDG_CACHE_HOME/ddptrain`, else `~/.cache/ddptrain`.
    public static var defaultCacheDirectory: String {
        if let xdg = getenv("XDG_CACHE_HOME"), xdg.pointee != 0 { return String(cString: xdg) + "/ddptrain" }
        if let home = getenv("HOME"), home.pointee != 0 { return String(cString: home) + "/.cache/ddptrain" }
        return "/tmp/ddptrain-cache"
    }

    /// Reads `source`, through the cache in `cacheDirectory` (nil: no cache). A fresh cache
    /// (built from files of the same paths, sizes and mtimes) is mapped once its header,
    /// checksum and labels check out; otherwise the files are decoded and validated, the
    /// cache is written atomically and mapped. A damaged cache is rebuilt the same way, and
    /// the status says why (`rebuilt`). If the cache cannot be written the data stays in
    /// memory: that costs memory, not correctness.
    /// `firstN` keeps only the first N samples; asking for more than there are is an error.
    public static func load(_ source: DataSource, firstN: Int? = nil,
                            cacheDirectory: String? = Dataset.defaultCacheDirectory) throws -> Dataset {
        let key = try cacheKey(source)
        let storage: Storage, status: CacheStatus
        if let directory = cacheDirectory {
            let path = directory + "/" + cacheFileName(source)
            let damage: String?
            switch Storage.map(path, key: key) {
            case .mapped(let mapped):
                return try Dataset(storage: mapped, source: source, firstN: firstN, cacheStatus: .mapped(path: path))
            case .missing, .unusable(.stale): damage = nil
            case .unusable(.damaged(let reason)): damage = reason
            }
            let decoded = try decode(source, key: key)
            do {
                try decoded.save(to: path)
                // Map what was written so that this process, too, shares the page cache.
                if case .mapped(let mapped) = Storage.map(path, key: key) { storage = mapped } else { storage = decoded }
                status = damage.map { .rebuilt(path: path, reason: $0) } ?? .built(path: path)
            } catch {
                storage = decoded
                status = .unavailable(reason: damage.map { "\(path): damaged (\($0)), and \(error)" } ?? "\(error)")
            }
        } else {
            storage = try decode(source, key: key)
            status = .disabled
        }
        return try Dataset(storage: storage, source: source, firstN: firstN, cacheStatus: status)
    }

    /// A loaded dataset, once `firstN` is known to fit.
    private convenience init(storage: Storage, source: DataSource, firstN: Int?, cacheStatus: CacheStatus) throws {
        if let n = firstN, n < 1 || n > storage.layout.count {
            throw DataError(source.files[0], "asked for the first \(n) samples but the file holds \(storage.layout.count)")
        }
        // IDX pixels are in the images file; CIFAR-10's in every batch.
        let pixelFiles = source.format == .idx ? Array(source.files.prefix(1)) : source.files
        self.init(storage: storage, name: source.name, firstN: firstN, cacheStatus: cacheStatus, pixelFiles: pixelFiles)
    }

    private static func decode(_ source: DataSource, key: [UInt8]) throws -> Storage {
        switch source.format {
        case .idx:
            guard source.files.count == 2 else {
                throw DataError(source.name, "an IDX source is [images, labels], got \(source.files.count) files")
            }
            return try IDX.decode(images: source.files[0], labels: source.files[1], classes: source.classes, key: key)
        case .cifar10:
            guard !source.files.isEmpty else { throw DataError(source.name, "a CIFAR-10 source needs at least one batch file") }
            return try CIFAR10.decode(batches: source.files, key: key)
        }
    }

    /// What a cache must have been built from to be fresh: the format, the classes, and
    /// each source file's real path, size and modification time.
    private static func cacheKey(_ source: DataSource) throws -> [UInt8] {
        var key = "\(source.format.rawValue) classes=\(source.classes)\n"
        for path in source.files {
            var info = stat()
            guard stat(path, &info) == 0 else { throw DataError.systemCall("stat", path: path, doing: "cannot stat") }
            key += "\(realPath(path)) size=\(info.st_size) mtime=\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)\n"
        }
        return Array(key.utf8)
    }

    /// The dataset's name and a hash of its real source paths: a stale cache is replaced
    /// under the same name, and equally named datasets from different folders do not collide.
    private static func cacheFileName(_ source: DataSource) -> String {
        var hash = FNV1a()
        hash.add(source.format.rawValue + "\n" + source.files.map(realPath).joined(separator: "\n"))
        let safeName = String(source.name.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "_" })
        return "\(safeName)-\(String(hash.value, radix: 16)).ddpcache"
    }

    private static func realPath(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Mean and standard deviation of all pixels of this dataset, in [0, 1] units. The sums
    /// are exact integers, so the result does not depend on the order of the samples.
    public func pixelStatistics() -> Normalization {
        var sum: UInt64 = 0, sumOfSquares: UInt64 = 0
        let n = count * samplePixels
        for p in UnsafeBufferPointer(start: pixels, count: n) {
            sum &+= UInt64(p)
            sumOfSquares &+= UInt64(p) * UInt64(p)
        }
        let mean = Double(sum) / Double(n)
        // Rounding can leave a tiny negative variance where the true one is 0.
        let variance = max(Double(sumOfSquares) / Double(n) - mean * mean, 0)
        return Normalization(mean: mean / 255, std: variance.squareRoot() / 255)
    }

    /// `pixelStatistics()`, for normalizing batches: an error if the standard deviation is
    /// 0 (every pixel has the same value), since normalization divides by it.
    public func normalization() throws -> Normalization {
        let statistics = pixelStatistics()
        guard statistics.std.isFinite, statistics.std > 0 else {
            let path = pixelFiles.isEmpty ? name : pixelFiles.joined(separator: ", ")
            let value = count > 0 ? "\(pixels[0])" : "absent"
            throw DataError(path, "all \(count * samplePixels) pixels of the \(count) samples are \(value): "
                + "std 0, the data cannot be normalized")
        }
        return statistics
    }

    /// Copies the samples `indices` into `x` (indices.count x samplePixels floats, normalized)
    /// and their labels into `labels`. Allocates nothing.
    public func gather(indices: UnsafeBufferPointer<Int32>, normalization: Normalization,
                       into x: UnsafeMutablePointer<Float>, labels labelsOut: UnsafeMutablePointer<Int32>) {
        // Every pixel value maps to one float; a table computed in Float32 the way torchvision
        // does it gives the same numbers as PyTorch, and costs a lookup per pixel.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 256) { table in
            let mean = Float(normalization.mean), std = Float(normalization.std)
            for p in 0..<256 { table[p] = (Float(p) / 255 - mean) / std }
            let n = samplePixels
            for (row, index) in indices.enumerated() {
                let i = Int(index)
                precondition(i >= 0 && i < count, "sample \(i) is outside 0..<\(count)")
                let source = pixels + i * n, destination = x + row * n
                for j in 0..<n { destination[j] = table[Int(source[j])] }
                labelsOut[row] = labels[i]
            }
        }
    }

    /// `gather` for a slice of an epoch order, e.g. `order[sampler.localSlice(ofBatch: k, shardSize: m)]`.
    public func gather(indices: ArraySlice<Int32>, normalization: Normalization,
                       into x: UnsafeMutablePointer<Float>, labels labelsOut: UnsafeMutablePointer<Int32>) {
        indices.withUnsafeBufferPointer { gather(indices: $0, normalization: normalization, into: x, labels: labelsOut) }
    }
}

private func isFile(_ path: String) -> Bool { notARegularFile(path) == nil }

/// Why `path` (followed if a link) cannot be a data file; nil if it is a regular file.
func notARegularFile(_ path: String) -> String? {
    var info = stat()
    guard stat(path, &info) == 0 else {
        let code = errno
        return code == ENOENT ? "file not found" : "cannot stat: \(describe(SystemCallFailure("stat", code: code)))"
    }
    return info.st_mode & S_IFMT == S_IFREG ? nil : notARegularFileProblem(info.st_mode)
}
