import DDPKernels
import XCTest

/// im2col (with its stride-1 "same width" and stride-2 fast paths) against the definition.
final class Im2colTests: XCTestCase {
    func testMatchesDefinition() {
        let cases: [(c: Int, h: Int, w: Int, k: Int, stride: Int, pad: Int)] = [
            (2, 7, 6, 3, 1, 1), (1, 5, 5, 5, 1, 2), (3, 6, 5, 3, 1, 0), (2, 7, 7, 3, 2, 1), (1, 4, 4, 1, 1, 0),
            (2, 3, 3, 7, 1, 3), (1, 6, 4, 3, 1, 1),
        ] + strideTwoCases
        for t in cases {
            let n = 3
            let g = ConvGeometry(channels: t.c, height: t.h, width: t.w, kernelH: t.k, kernelW: t.k,
                                 strideH: t.stride, strideW: t.stride, padH: t.pad, padW: t.pad)
            let input = (0..<(n * t.c * t.h * t.w)).map { Float($0 % 97) + 1 }
            let pixels = n * g.outSpatial
            var columns = [Float](repeating: -1, count: g.patchSize * pixels)
            input.withUnsafeBufferPointer { x in
                columns.withUnsafeMutableBufferPointer { im2col(x.baseAddress!, batch: n, g, into: $0.baseAddress!) }
            }
            for c in 0..<t.c { for ky in 0..<t.k { for kx in 0..<t.k { for s in 0..<n {
                for oy in 0..<g.outHeight { for ox in 0..<g.outWidth {
                    let iy = oy * t.stride - t.pad + ky, ix = ox * t.stride - t.pad + kx
                    let expected: Float = (iy >= 0 && iy < t.h && ix >= 0 && ix < t.w) ? input[((s * t.c + c) * t.h + iy) * t.w + ix] : 0
                    let row = (c * t.k + ky) * t.k + kx
                    XCTAssertEqual(columns[row * pixels + s * g.outSpatial + oy * g.outWidth + ox], expected,
                                   "case \(t) c \(c) ky \(ky) kx \(kx) s \(s) oy \(oy) ox \(ox)")
                }}
            }}}}
        }
    }
}

extension Im2colTests {
    /// Stride 2 at widths whose rows take 16- and 8-float blocks and scalar ends, with
    /// padding shifting the first column left (-1) and kernels reaching right (+2).
    var strideTwoCases: [(c: Int, h: Int, w: Int, k: Int, stride: Int, pad: Int)] {
        [(2, 6, 28, 1, 2, 0), (1, 5, 40, 3, 2, 1), (2, 4, 17, 1, 2, 0), (1, 6, 33, 3, 2, 0), (1, 3, 9, 3, 2, 1), (1, 2, 2, 1, 2, 0)]
    }

    /// The block-wise col2im that may overwrite its columns adds exactly what col2im adds.
    func testCol2imOverwritingMatchesCol2im() {
        let cases: [(c: Int, h: Int, w: Int, k: Int, stride: Int, pad: Int)] = [
            (2, 7, 6, 3, 1, 1), (1, 5, 5, 5, 1, 2), (3, 6, 5, 3, 1, 0), (2, 7, 7, 3, 2, 1), (2, 3, 3, 7, 1, 3), (1, 6, 4, 3, 1, 1),
        ] + strideTwoCases
        for t in cases {
            let n = 2
            let g = ConvGeometry(channels: t.c, height: t.h, width: t.w, kernelH: t.k, kernelW: t.k,
                                 strideH: t.stride, strideW: t.stride, padH: t.pad, padW: t.pad)
            let count = g.patchSize * n * g.outSpatial
            let columns = (0..<count).map { Float(($0 * 37) % 101) * 0.25 - 12 }
            var expected = [Float](repeating: 0, count: n * t.c * t.h * t.w)
            var actual = expected
            columns.withUnsafeBufferPointer { cols in
                expected.withUnsafeMutableBufferPointer { col2im(cols.baseAddress!, batch: n, g, into: $0.baseAddress!) }
            }
            var scratch = columns
            scratch.withUnsafeMutableBufferPointer { cols in
                actual.withUnsafeMutableBufferPointer { col2imOverwriting(cols.baseAddress!, batch: n, g, into: $0.baseAddress!) }
            }
            XCTAssertEqual(actual.map(\.bitPattern), expected.map(\.bitPattern), "case \(t)")
        }
    }

    /// A 1x1 stride-2 downsample's input gradient written whole (every pixel once, over
    /// garbage) has the bits of col2im adding its columns into zeros: +0 where no column lands,
    /// 0 + the column where one does (a -0 column gives +0), NaN carried; even and odd sizes,
    /// rows of 16 pixels and more (the vector path) and fewer.
    func testStrideTwoPointwiseInputGradientIsCol2imIntoZeros() {
        for (c, h, w) in [(3, 28, 28), (2, 14, 14), (2, 7, 7), (1, 9, 8), (2, 8, 9), (1, 33, 35), (1, 1, 1), (1, 2, 3)] {
            let g = ConvGeometry(channels: c, height: h, width: w, kernelH: 1, kernelW: 1, strideH: 2, strideW: 2)
            var columns = (0..<(c * g.outSpatial)).map { Float(($0 * 37) % 101) * 0.25 - 12 }
            columns[0] = -0.0
            if columns.count > 5 { columns[5] = .nan }
            var expected = [Float](repeating: 0, count: c * h * w)
            var actual = [Float](repeating: .infinity, count: c * h * w)
            columns.withUnsafeBufferPointer { cols in
                expected.withUnsafeMutableBufferPointer { col2im(cols.baseAddress!, batch: 1, g, into: $0.baseAddress!) }
                actual.withUnsafeMutableBufferPointer { strideTwoPointwiseInputGradient(cols.baseAddress!, g, into: $0.baseAddress!) }
            }
            XCTAssertEqual(actual.map(\.bitPattern), expected.map(\.bitPattern), "\(c) x \(h) x \(w)")
        }
    }
}
