import DDPKernels

/// Window geometry shared by the pooling layers: PyTorch's floor mode, with padding at most
/// half the kernel so that every window holds at least one input element and never reaches
/// past the padded input (hence count_include_pad divides by k*k everywhere).
func poolGeometry(_ name: String, kernel: Int, stride: Int, padding: Int, input: Shape) throws -> ConvGeometry {
    guard kernel >= 1, stride >= 1, padding >= 0 else {
        throw LayerError("\(name) needs kernel >= 1, stride >= 1 and padding >= 0, got \(kernel), \(stride), \(padding)")
    }
    guard padding <= kernel / 2 else {
        throw LayerError("\(name): pad should be at most half of kernel size, got padding \(padding) for kernel \(kernel)")
    }
    guard input.rank == 4 else { throw LayerError("\(name) expects input [n, c, h, w], got \(input.sampleDims)") }
    guard input.h + 2 * padding >= kernel, input.w + 2 * padding >= kernel else {
        throw LayerError("\(name) kernel \(kernel) is larger than the padded input \(input.sampleDims)")
    }
    return ConvGeometry(channels: input.c, height: input.h, width: input.w, kernelH: kernel, kernelW: kernel,
                        strideH: stride, strideW: stride, padH: padding, padW: padding)
}

extension ConvGeometry {
    func outputShape(batch n: Int) -> Shape { Shape(n: n, c: channels, h: outHeight, w: outWidth) }
    /// The input rows (or columns) a window starting at `start` covers: clipped to [0, size).
    @inline(__always)
    func clipped(_ start: Int, size: Int, kernel: Int) -> Range<Int> { max(start, 0)..<min(start + kernel, size) }
}

/// An owned Int32 buffer of fixed capacity (max-pool argmax indices).
final class IndexBuffer {
    let pointer: UnsafeMutablePointer<Int32>
    init(capacity: Int) {
        pointer = .allocate(capacity: max(capacity, 1))
        pointer.initialize(repeating: 0, count: max(capacity, 1))
    }
    deinit { pointer.deallocate() }
}
