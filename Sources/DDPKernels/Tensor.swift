/// The shape of an NCHW tensor. A 2-D tensor [n, c] has h = w = 1 and rank 2.
/// A plain struct (no arrays) so that passing shapes around allocates nothing.
public struct Shape: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var n: Int
    public var c: Int
    public var h: Int
    public var w: Int
    public var rank: Int

    public init(n: Int, c: Int, h: Int, w: Int) {
        self.n = n; self.c = c; self.h = h; self.w = w; self.rank = 4
    }
    public init(n: Int, features: Int) {
        self.n = n; self.c = features; self.h = 1; self.w = 1; self.rank = 2
    }

    /// Elements per sample.
    public var perSample: Int { c * h * w }
    public var count: Int { n * c * h * w }
    /// Spatial size of one channel (1 for 2-D tensors).
    public var spatial: Int { h * w }

    /// The same per-sample shape with another batch size.
    public func withBatch(_ n: Int) -> Shape { var s = self; s.n = n; return s }

    /// PyTorch-style dimensions, batch first.
    public var dims: [Int] { rank == 2 ? [n, c] : [n, c, h, w] }
    /// Dimensions without the batch.
    public var sampleDims: [Int] { rank == 2 ? [c] : [c, h, w] }

    public var description: String { "[" + dims.map(String.init).joined(separator: ", ") + "]" }
}

/// A view of contiguous Float32 storage with a shape. It owns nothing: layers own their
/// buffers (sized once for the largest batch) and hand out views of them.
public struct Tensor {
    public var data: UnsafeMutablePointer<Float>
    public var shape: Shape

    public init(_ data: UnsafeMutablePointer<Float>, _ shape: Shape) {
        self.data = data
        self.shape = shape
    }

    public var count: Int { shape.count }
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }
    public subscript(i: Int) -> Float {
        get { data[i] }
        nonmutating set { data[i] = newValue }
    }
}

/// An owned, zero-initialized, 64-byte aligned Float32 buffer of fixed capacity.
///
/// Large buffers (64 KiB and up) are anonymous memory maps: the kernel hands out zero pages
/// on first touch, so a buffer sized for the largest batch costs resident memory only for
/// the part a step actually uses (a layer sized for evaluation batches of 256 that trains on
/// 64 keeps three quarters of its pages untouched until an evaluation runs).
public final class FloatBuffer {
    public let pointer: UnsafeMutablePointer<Float>
    public let capacity: Int
    private let mappedBytes: Int

    private static let mapThreshold = 64 << 10

    public init(capacity: Int) {
        self.capacity = capacity
        let bytes = max(capacity, 1) * 4
        if bytes >= FloatBuffer.mapThreshold {
            guard let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED else {
                OutOfMemory.fail(bytes: bytes, call: "mmap", code: errno)
            }
            // Page-aligned and already zero.
            mappedBytes = bytes
            pointer = raw.bindMemory(to: Float.self, capacity: max(capacity, 1))
        } else {
            mappedBytes = 0
            pointer = OutOfMemory.allocate(bytes: bytes).bindMemory(to: Float.self, capacity: max(capacity, 1))
            pointer.initialize(repeating: 0, count: max(capacity, 1))
        }
    }

    deinit {
        if mappedBytes > 0 {
            munmap(UnsafeMutableRawPointer(pointer), mappedBytes)
        } else {
            free(pointer)
        }
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: capacity) }
    public func tensor(_ shape: Shape) -> Tensor {
        precondition(shape.count <= capacity, "tensor \(shape) does not fit a buffer of \(capacity)")
        return Tensor(pointer, shape)
    }
    public func zero() { pointer.update(repeating: 0, count: capacity) }
}

/// A buffer the kernel would not give: beyond what the checks before allocation foresee
/// (ModelSpec.checkMemory, the datasets' budget), a limit such as `ulimit -v` can still be
/// met by a layer's scratch. Swift's own allocator would end the process with a crash
/// report; this ends it with a message and exit 65, through `handler`, which the command
/// line sets to name the rank and end the whole MPI job.
public enum OutOfMemory {
    nonisolated(unsafe) public static var handler: (String) -> Never = { message in
        let line = Array("ddptrain: \(message)\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        _exit(65)
    }

    public static func fail(bytes: Int, call: String, code: Int32) -> Never {
        handler("out of memory: \(call) of \(bytes) bytes failed: \(String(cString: strerror(code))) (errno \(code)); the model, "
                + "its batch or the data need more memory than this process may have (the machine's, or limits such as ulimit -v)")
    }

    /// `bytes` (at least 1) aligned to 64, from posix_memalign; released with free().
    public static func allocate(bytes: Int) -> UnsafeMutableRawPointer {
        var raw: UnsafeMutableRawPointer?
        let code = posix_memalign(&raw, 64, max(bytes, 1))
        guard code == 0, let raw else { fail(bytes: bytes, call: "posix_memalign", code: code) }
        return raw
    }
}

/// An owned, zero-initialized Float64 buffer of fixed capacity.
public final class DoubleBuffer {
    public let pointer: UnsafeMutablePointer<Double>
    public let capacity: Int

    public init(capacity: Int) {
        self.capacity = capacity
        pointer = UnsafeMutablePointer<Double>.allocate(capacity: max(capacity, 1))
        pointer.initialize(repeating: 0, count: max(capacity, 1))
    }

    deinit { pointer.deallocate() }
    public func zero() { pointer.update(repeating: 0, count: capacity) }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
