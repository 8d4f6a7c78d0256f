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
        if bytes >= FloatBuffer.mapThreshold,
           let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED {
            // Page-aligned and already zero.
            mappedBytes = bytes
            pointer = raw.bindMemory(to: Float.self, capacity: max(capacity, 1))
        } else {
            mappedBytes = 0
            let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            pointer = raw.bindMemory(to: Float.self, capacity: max(capacity, 1))
            pointer.initialize(repeating: 0, count: max(capacity, 1))
        }
    }

    deinit {
        if mappedBytes > 0 {
            munmap(UnsafeMutableRawPointer(pointer), mappedBytes)
        } else {
            UnsafeMutableRawPointer(pointer).deallocate()
        }
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: capacity) }
    public func tensor(_ shape: Shape) -> Tensor {
        precondition(shape.count <= capacity, "tensor \(shape) does not fit a buffer of \(capacity)")
        return Tensor(pointer, shape)
    }
    public func zero() { pointer.update(repeating: 0, count: capacity) }
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
