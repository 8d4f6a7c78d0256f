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
}

/// An owned buffer of fixed capacity (max-pool argmax indices, window bounds).
final class OwnedBuffer<Element> {
    let pointer: UnsafeMutablePointer<Element>
    init(capacity: Int, repeating value: Element) {
        pointer = .allocate(capacity: max(capacity, 1))
        pointer.initialize(repeating: value, count: max(capacity, 1))
    }
    deinit { pointer.deallocate() }
}

/// The input rows and columns each pooling window covers, clipped to the input: computed
/// once in `configure` so that the window loops do no bounds arithmetic.
struct PoolWindows {
    /// Per output row: first and one-past-last input row, then the same per output column.
    private let bounds: OwnedBuffer<Int>
    private let outHeight: Int

    init(_ g: ConvGeometry) {
        outHeight = g.outHeight
        bounds = OwnedBuffer(capacity: 2 * (g.outHeight + g.outWidth), repeating: 0)
        for (offset, count, size, stride, pad, kernel) in [(0, g.outHeight, g.height, g.strideH, g.padH, g.kernelH),
                                                          (2 * g.outHeight, g.outWidth, g.width, g.strideW, g.padW, g.kernelW)] {
            for o in 0..<count {
                let start = o * stride - pad
                bounds.pointer[offset + 2 * o] = max(start, 0)
                bounds.pointer[offset + 2 * o + 1] = min(start + kernel, size)
            }
        }
    }

    @inline(__always) func rows(_ oy: Int) -> Range<Int> { bounds.pointer[2 * oy]..<bounds.pointer[2 * oy + 1] }
    @inline(__always) func columns(_ ox: Int) -> Range<Int> {
        bounds.pointer[2 * (outHeight + ox)]..<bounds.pointer[2 * (outHeight + ox) + 1]
    }
}
