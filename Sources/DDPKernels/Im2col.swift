/// Geometry of a 2-D convolution or pooling window over one channel plane.
public struct ConvGeometry: Equatable, Sendable {
    public var channels: Int
    public var height: Int
    public var width: Int
    public var kernelH: Int
    public var kernelW: Int
    public var strideH: Int
    public var strideW: Int
    public var padH: Int
    public var padW: Int

    public init(channels: Int, height: Int, width: Int, kernelH: Int, kernelW: Int,
                strideH: Int = 1, strideW: Int = 1, padH: Int = 0, padW: Int = 0) {
        self.channels = channels; self.height = height; self.width = width
        self.kernelH = kernelH; self.kernelW = kernelW
        self.strideH = strideH; self.strideW = strideW; self.padH = padH; self.padW = padW
    }

    public var outHeight: Int { (height + 2 * padH - kernelH) / strideH + 1 }
    public var outWidth: Int { (width + 2 * padW - kernelW) / strideW + 1 }
    /// Rows of the column matrix: one per (channel, kernel row, kernel column).
    public var patchSize: Int { channels * kernelH * kernelW }
    public var outSpatial: Int { outHeight * outWidth }
}

/// Unfolds a batch of images [n, C, H, W] into columns [C*KH*KW, n*OH*OW] (row-major), so
/// that a convolution of the whole batch is one GEMM: W[OC, C*KH*KW] x columns.
public func im2col(_ input: UnsafePointer<Float>, batch n: Int, _ g: ConvGeometry, into columns: UnsafeMutablePointer<Float>) {
    let oh = g.outHeight, ow = g.outWidth
    let pixels = n * oh * ow
    let plane = g.height * g.width
    // Stride 1 with "same" width (ow == width): a column row of one sample is the image
    // shifted by whole rows and `kx - padW` elements, so the valid rows are one copy, and
    // only the elements that wrapped around a row edge need zeroing afterwards.
    let sameWidth = g.strideH == 1 && g.strideW == 1 && ow == g.width
    for c in 0..<g.channels {
        for ky in 0..<g.kernelH {
            for kx in 0..<g.kernelW {
                let row = columns + ((c * g.kernelH + ky) * g.kernelW + kx) * pixels
                for s in 0..<n {
                    let image = input + (s * g.channels + c) * plane
                    let out = row + s * oh * ow
                    if sameWidth {
                        im2colSameWidthRow(image, g, ky: ky, kx: kx, into: out)
                        continue
                    }
                    for oy in 0..<oh {
                        let iy = oy * g.strideH - g.padH + ky
                        let line = out + oy * ow
                        if iy < 0 || iy >= g.height {
                            line.update(repeating: 0, count: ow)
                            continue
                        }
                        let src = image + iy * g.width
                        if g.strideW == 1 {
                            // Contiguous interior; zero only the padded ends.
                            let shift = kx - g.padW
                            let lo = min(max(0, -shift), ow), hi = max(lo, min(ow, g.width - shift))
                            if lo > 0 { line.update(repeating: 0, count: lo) }
                            if hi > lo { (line + lo).update(from: src + lo + shift, count: hi - lo) }
                            if hi < ow { (line + hi).update(repeating: 0, count: ow - hi) }
                        } else if g.strideW == 2 {
                            // Every other element of the interior, 16 or 8 read at a time.
                            let shift = kx - g.padW, (lo, hi) = strideTwoInterior(shift: shift, width: g.width, outWidth: ow)
                            if lo > 0 { line.update(repeating: 0, count: lo) }
                            let from = src + shift
                            var ox = lo
                            while ox + 8 <= hi && 2 * ox + shift + 16 <= g.width { store8(load16(from + 2 * ox).evenHalf, line + ox); ox += 8 }
                            while ox + 4 <= hi && 2 * ox + shift + 8 <= g.width { store4(load8(from + 2 * ox).evenHalf, line + ox); ox += 4 }
                            while ox < hi { line[ox] = from[2 * ox]; ox += 1 }
                            if hi < ow { (line + hi).update(repeating: 0, count: ow - hi) }
                        } else {
                            for ox in 0..<ow {
                                let ix = ox * g.strideW - g.padW + kx
                                line[ox] = (ix >= 0 && ix < g.width) ? src[ix] : 0
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Stride 2: the outputs ox whose input column 2 ox + shift lies in 0..<width.
@inline(__always)
private func strideTwoInterior(shift: Int, width: Int, outWidth ow: Int) -> (Int, Int) {
    let lo = min(max(0, -shift + 1) / 2, ow)
    return (lo, max(lo, min(ow, (width - shift + 1) / 2)))
}

/// One sample's column row (ky, kx) for stride 1 and ow == width: element (oy, ox) is
/// image[(oy - padH + ky) * width + ox + kx - padW], or 0 outside the image.
@inline(__always)
private func im2colSameWidthRow(_ image: UnsafePointer<Float>, _ g: ConvGeometry, ky: Int, kx: Int,
                                into out: UnsafeMutablePointer<Float>) {
    let w = g.width, oh = g.outHeight
    let shift = kx - g.padW
    // Output rows whose input row exists.
    let first = min(max(0, g.padH - ky), oh), last = max(first, min(oh, g.height + g.padH - ky))
    if first > 0 { out.update(repeating: 0, count: first * w) }
    if last < oh { (out + last * w).update(repeating: 0, count: (oh - last) * w) }
    guard last > first, abs(shift) < w else {
        (out + first * w).update(repeating: 0, count: (last - first) * w)
        return
    }
    let dst = out + first * w
    let src = image + (first - g.padH + ky) * w + shift
    let count = (last - first) * w
    // Copy the block, leaving out what would be read before the image's first or after its
    // last element; those positions are among the wrapped ones zeroed below.
    let lo = max(0, -shift), hi = count - max(0, shift)
    (dst + lo).update(from: src + lo, count: hi - lo)
    for r in 0..<(last - first) {
        let line = dst + r * w
        if shift < 0 {
            for ox in 0..<(-shift) { line[ox] = 0 }
        } else if shift > 0 {
            for ox in (w - shift)..<w { line[ox] = 0 }
        }
    }
}

/// The adjoint of `im2col`: adds columns [C*KH*KW, n*OH*OW] back into images [n, C, H, W].
/// `output` must be zeroed by the caller (it accumulates).
public func col2im(_ columns: UnsafePointer<Float>, batch n: Int, _ g: ConvGeometry, into output: UnsafeMutablePointer<Float>) {
    col2im(columns, batch: n, g, addingZeros: false, into: output)
}

/// `col2im`; with `addingZeros`, a column stride of 2 adds each row's interior 8 columns at a
/// time into 16 pixels, +0 into every other one.
private func col2im(_ columns: UnsafePointer<Float>, batch n: Int, _ g: ConvGeometry, addingZeros: Bool,
                    into output: UnsafeMutablePointer<Float>) {
    let oh = g.outHeight, ow = g.outWidth
    let pixels = n * oh * ow
    let plane = g.height * g.width
    for c in 0..<g.channels {
        for ky in 0..<g.kernelH {
            for kx in 0..<g.kernelW {
                let row = columns + ((c * g.kernelH + ky) * g.kernelW + kx) * pixels
                for s in 0..<n {
                    let image = output + (s * g.channels + c) * plane
                    let col = row + s * oh * ow
                    for oy in 0..<oh {
                        let iy = oy * g.strideH - g.padH + ky
                        if iy < 0 || iy >= g.height { continue }
                        let dst = image + iy * g.width
                        let line = col + oy * ow
                        if g.strideW == 1 {
                            let shift = kx - g.padW
                            let lo = min(max(0, -shift), ow), hi = max(lo, min(ow, g.width - shift))
                            var ox = lo
                            while ox < hi { dst[ox + shift] += line[ox]; ox += 1 }
                        } else if addingZeros && g.strideW == 2 {
                            let shift = kx - g.padW, (lo, hi) = strideTwoInterior(shift: shift, width: g.width, outWidth: ow)
                            let from = dst + shift
                            var ox = lo
                            while ox + 8 <= hi && 2 * ox + shift + 16 <= g.width {
                                let d = from + 2 * ox
                                store16(load16(d) + interleave(load8(line + ox), SIMD8()), d)
                                ox += 8
                            }
                            while ox < hi { from[2 * ox] += line[ox]; ox += 1 }
                        } else {
                            for ox in 0..<ow {
                                let ix = ox * g.strideW - g.padW + kx
                                if ix >= 0 && ix < g.width { dst[ix] += line[ox] }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The input gradient of a 1x1, stride-2, unpadded convolution (a ResNet downsample) for one
/// sample: its columns [C, OH * OW] into the image [C, H, W], every pixel written once, 0 +
/// its column where a column lands (even rows and columns), 0 elsewhere: the bits of zeroing
/// the image and adding the columns (`col2im`), without the pass that zeroed it first or
/// reading it back.
public func strideTwoPointwiseInputGradient(_ columns: UnsafePointer<Float>, _ g: ConvGeometry,
                                            into output: UnsafeMutablePointer<Float>) {
    precondition(g.kernelH == 1 && g.kernelW == 1 && g.strideH == 2 && g.strideW == 2 && g.padH == 0 && g.padW == 0,
                 "strideTwoPointwiseInputGradient takes a 1x1, stride-2, unpadded convolution")
    let oh = g.outHeight, ow = g.outWidth, w = g.width
    for c in 0..<g.channels {
        let col = columns + c * oh * ow, image = output + c * g.height * w
        for iy in 0..<g.height {
            let dst = image + iy * w
            guard iy % 2 == 0 else { dst.update(repeating: 0, count: w); continue }
            let line = col + (iy / 2) * ow
            var ox = 0
            while ox + 8 <= ow && 2 * ox + 16 <= w {
                store16(interleave(SIMD8<Float>() + load8(line + ox), SIMD8()), dst + 2 * ox)
                ox += 8
            }
            while ox < ow {
                dst[2 * ox] = 0 + line[ox]
                if 2 * ox + 1 < w { dst[2 * ox + 1] = 0 }
                ox += 1
            }
        }
    }
}

/// `col2im` for a caller that no longer needs the columns: it may overwrite them. For stride
/// 1 and ow == width it zeroes the elements that stand for padding (they wrap around a row
/// edge) and then adds each column row's valid rows as one contiguous block, where `col2im`
/// adds row by row. For stride 2 it adds 8 columns at a time into 16 pixels, +0 into every
/// other one. Every pixel receives the same additions in the same order, plus some
/// additions of +0, which change no value (a -0 sum becomes +0).
public func col2imOverwriting(_ columns: UnsafeMutablePointer<Float>, batch n: Int, _ g: ConvGeometry, into output: UnsafeMutablePointer<Float>) {
    let oh = g.outHeight, ow = g.outWidth, w = g.width
    if g.strideW == 2 {
        col2im(columns, batch: n, g, addingZeros: true, into: output)
        return
    }
    guard g.strideH == 1 && g.strideW == 1 && ow == w else {
        col2im(columns, batch: n, g, into: output)
        return
    }
    let pixels = n * oh * ow
    let plane = g.height * w
    for c in 0..<g.channels {
        for ky in 0..<g.kernelH {
            for kx in 0..<g.kernelW {
                let row = columns + ((c * g.kernelH + ky) * g.kernelW + kx) * pixels
                let shift = kx - g.padW
                let first = min(max(0, g.padH - ky), oh), last = max(first, min(oh, g.height + g.padH - ky))
                guard last > first, abs(shift) < w else { continue }
                for s in 0..<n {
                    let col = row + s * oh * ow + first * w
                    let dst = output + (s * g.channels + c) * plane + (first - g.padH + ky) * w + shift
                    for r in 0..<(last - first) {
                        let line = col + r * w
                        if shift < 0 {
                            for ox in 0..<(-shift) { line[ox] = 0 }
                        } else if shift > 0 {
                            for ox in (w - shift)..<w { line[ox] = 0 }
                        }
                    }
                    let count = (last - first) * w
                    let lo = max(0, -shift), hi = count - max(0, shift)
                    var j = lo
                    while j < hi { dst[j] += col[j]; j += 1 }
                }
            }
        }
    }
}
