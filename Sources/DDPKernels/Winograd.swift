/// Winograd's F(2x2, 3x3) for 3x3, padding-1, stride-1 convolutions: each 2x2 block of
/// outputs (a tile) from the 4x4 block of padded input around it, with 16 multiplies per
/// input channel where the direct kernel does 36 (Lavin and Gray, "Fast Algorithms for
/// Convolutional Neural Networks", 2015):
///
///     Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
///
/// The input transform V = Bᵀ d B and the weight transform U = G g Gᵀ give 16 frequencies;
/// for each, M[f] [OC, tiles] = U[f] [OC, C] x V[f] [C, tiles] is one `convFlat` with a
/// single tap (vector lanes over tiles); the output transform Aᵀ M A gives the 2x2 outputs.
///
/// Tiles are laid out row by row, each tile row padded to a whole number of 8-lane vectors
/// (`rowTiles`). Every lane is one tile and every output is a fixed sequence of additions
/// and one FMA chain over the input channels, whatever the batch: a sample's outputs depend
/// on that sample alone, bit for bit. Lanes past the image read whatever follows (the next
/// row or channel of the prepared input) and are thrown away; no real output reads them:
/// output column 0 of a tile uses input columns 0 to 2 only, column 1 columns 1 to 3 (rows
/// likewise), and those are inside the padded image for every tile that has a real output.

/// Where the transforms read and write, for an H x W plane (output the same size).
public struct WinogradLayout: Equatable, Sendable {
    public let height: Int
    public let width: Int
    /// Tile rows and tiles per row with a real output: ceil(H / 2), ceil(W / 2).
    public let tileRows: Int
    public let tileColumns: Int
    /// Tiles per tile row as laid out: `tileColumns` rounded up to whole vectors of 8.
    public let rowTiles: Int
    /// Tiles per channel as laid out (a multiple of 8).
    public let tiles: Int
    /// The prepared input's row stride (`DirectConvLayout`'s, stride 1: W + 2).
    public let rowStride: Int
    /// Floats the input transform reads from the start of a prepared channel: a buffer of
    /// prepared channels needs max(0, reach - channel length) more floats after its last one.
    public let reach: Int

    public init(height: Int, width: Int) {
        self.height = height; self.width = width
        tileRows = (height + 1) / 2
        tileColumns = (width + 1) / 2
        rowTiles = (tileColumns + 7) / 8 * 8
        tiles = tileRows * rowTiles
        rowStride = width + 2
        // Last tile row reads padded rows up to 2·tileRows + 1; the last vector's second
        // load reads 16 floats from column 2·(rowTiles - 8) + 2.
        reach = (2 * tileRows + 1) * rowStride + 2 * rowTiles + 2
    }

    /// Floats of the transformed input or of the products per frequency and channel: 16 x tiles.
    public var floatsPerChannel: Int { 16 * tiles }
}

@inline(__always)
private func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}

@inline(__always)
private func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always)
private func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

/// One row of a tile, for 8 tiles side by side: d B, the row part of Bᵀ d B, from the
/// padded row at `p` (the first tile's column 0): [p0 - p2, p1 + p2, p2 - p1, p1 - p3].
@inline(__always)
private func rowTransform(_ p: UnsafePointer<Float>) -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
    let a = load16(p), b = load16(p + 2)
    let p0 = a.evenHalf, p1 = a.oddHalf, p2 = b.evenHalf, p3 = b.oddHalf
    return (p0 - p2, p1 + p2, p2 - p1, p1 - p3)
}

/// V [16, C, rowLength] = Bᵀ d B of every tile of every channel of one sample, from its
/// prepared input (`prepareConvInput`, stride 1: padded, row stride W + 2), channel ci at
/// input + ci * channelStride; the sample's tiles fill the first `tiles` of each row.
public func winogradInputTransform(_ input: UnsafePointer<Float>, channels c: Int, channelStride: Int,
                                   _ l: WinogradLayout, rowLength: Int, into v: UnsafeMutablePointer<Float>) {
    let rs = l.rowStride, tiles = rowLength, frequency = c * tiles
    for ci in 0..<c {
        for ty in 0..<l.tileRows {
            for tx in Swift.stride(from: 0, to: l.rowTiles, by: 8) {
                let p = input + ci * channelStride + 2 * ty * rs + 2 * tx
                let (a0, a1, a2, a3) = rowTransform(p)
                let (b0, b1, b2, b3) = rowTransform(p + rs)
                let (c0, c1, c2, c3) = rowTransform(p + 2 * rs)
                let (d0, d1, d2, d3) = rowTransform(p + 3 * rs)
                // Columns: Bᵀ applied to the rows a, b, c, d.
                let out = v + ci * tiles + ty * l.rowTiles + tx
                store8(a0 - c0, out); store8(a1 - c1, out + frequency)
                store8(a2 - c2, out + 2 * frequency); store8(a3 - c3, out + 3 * frequency)
                store8(b0 + c0, out + 4 * frequency); store8(b1 + c1, out + 5 * frequency)
                store8(b2 + c2, out + 6 * frequency); store8(b3 + c3, out + 7 * frequency)
                store8(c0 - b0, out + 8 * frequency); store8(c1 - b1, out + 9 * frequency)
                store8(c2 - b2, out + 10 * frequency); store8(c3 - b3, out + 11 * frequency)
                store8(b0 - d0, out + 12 * frequency); store8(b1 - d1, out + 13 * frequency)
                store8(b2 - d2, out + 14 * frequency); store8(b3 - d3, out + 15 * frequency)
            }
        }
    }
}

/// U [16, C, OC] = G g Gᵀ of every kernel g = weight[o, c] ([OC, C, 3, 3], PyTorch's
/// layout), the packed weights of `convFlat` per frequency. With `transposed`, the kernels
/// of the input gradient instead: flipped, channels swapped, U [16, OC, C] (the input
/// gradient of a stride-1 convolution is the padded output gradient convolved with them).
/// Computed in Float64, rounded once.
public func winogradWeightTransform(_ weight: UnsafePointer<Float>, outChannels oc: Int, inChannels c: Int, transposed: Bool,
                                    into u: UnsafeMutablePointer<Float>) {
    var g = [Double](repeating: 0, count: 9), gg = [Double](repeating: 0, count: 12)
    for o in 0..<oc {
        for ci in 0..<c {
            let w = weight + (o * c + ci) * 9
            for t in 0..<9 { g[t] = Double(w[transposed ? 8 - t : t]) }
            // G g: rows g0, (g0 + g1 + g2)/2, (g0 - g1 + g2)/2, g2 (each a row of 3).
            for k in 0..<3 {
                gg[k] = g[k]
                gg[3 + k] = (g[k] + g[3 + k] + g[6 + k]) / 2
                gg[6 + k] = (g[k] - g[3 + k] + g[6 + k]) / 2
                gg[9 + k] = g[6 + k]
            }
            // (G g) Gᵀ: the same on each row.
            let (rows, columns) = transposed ? (oc, c) : (c, oc)
            let (row, column) = transposed ? (o, ci) : (ci, o)
            for r in 0..<4 {
                let a = gg[3 * r], b = gg[3 * r + 1], d = gg[3 * r + 2]
                let first = u + (4 * r * rows + row) * columns + column, next = rows * columns
                first[0] = Float(a); first[next] = Float((a + b + d) / 2)
                first[2 * next] = Float((a - b + d) / 2); first[3 * next] = Float(d)
            }
        }
    }
}

/// Y [OC, H, W] = Aᵀ M A of every tile, from the products M [16, OC, rowLength] (the
/// sample's tiles first in each row), adding
/// `bias[o]` to channel o if given. A vector of 8 tiles writes its upper row as 16 floats,
/// past the row's end when W is not a multiple of 16: into rows written after it (the
/// lower row, copied from `scratch` [2 * rowTiles] once the upper row is done, the next
/// tile row or channel), and after the last row into `winogradOutputSlack` floats that `y`
/// must have past its end.
public func winogradOutputTransform(_ m: UnsafePointer<Float>, channels oc: Int, _ l: WinogradLayout, rowLength: Int,
                                    bias: UnsafePointer<Float>?, scratch: UnsafeMutablePointer<Float>,
                                    into y: UnsafeMutablePointer<Float>) {
    let tiles = rowLength, frequency = oc * tiles, h = l.height, w = l.width
    for o in 0..<oc {
        let b = SIMD8<Float>(repeating: bias?[o] ?? 0)
        let plane = y + o * h * w
        for ty in 0..<l.tileRows {
            for tx in Swift.stride(from: 0, to: l.rowTiles, by: 8) {
                guard 2 * tx < w else { break }
                let p = m + o * tiles + ty * l.rowTiles + tx
                @inline(__always) func at(_ f: Int) -> SIMD8<Float> { load8(p + f * frequency) }
                // Rows: Aᵀ = [1 1 1 0; 0 1 -1 -1] on the 4 rows of M, column by column.
                let s0 = at(0) + at(4) + at(8), t0 = at(4) - at(8) - at(12)
                let s1 = at(1) + at(5) + at(9), t1 = at(5) - at(9) - at(13)
                let s2 = at(2) + at(6) + at(10), t2 = at(6) - at(10) - at(14)
                let s3 = at(3) + at(7) + at(11), t3 = at(7) - at(11) - at(15)
                // Columns, then the two output rows of the 8 tiles, even and odd columns interleaved.
                var top = SIMD16<Float>(), bottom = SIMD16<Float>()
                top.evenHalf = s0 + s1 + s2 + b; top.oddHalf = s1 - s2 - s3 + b
                bottom.evenHalf = t0 + t1 + t2 + b; bottom.oddHalf = t1 - t2 - t3 + b
                UnsafeMutableRawPointer(plane + 2 * ty * w + 2 * tx).storeBytes(of: top, as: SIMD16<Float>.self)
                UnsafeMutableRawPointer(scratch + 2 * tx).storeBytes(of: bottom, as: SIMD16<Float>.self)
            }
            if 2 * ty + 1 < h {
                // Inline: a memmove call per 7 to 28 floats costs more than the copy.
                let row = plane + (2 * ty + 1) * w
                var k = 0
                while k + 8 <= w { store8(load8(scratch + k), row + k); k += 8 }
                while k < w { row[k] = scratch[k]; k += 1 }
            }
        }
    }
}

/// Floats `winogradOutputTransform` may write past the end of its output.
public let winogradOutputSlack = 16

/// One frequency's products: out [OC, rowLength] = U [C, OC]ᵀ x V [C, rowLength], i.e.
/// out[o, j] = Σ_c u[c, o] · v[c, j], one FMA chain over c per element (`convFlat` with a
/// single tap, without its tap loop: with one tap its loop bookkeeping cost a third of the
/// time). Blocks of 4 output channels x 24 lanes keep 12 accumulators in registers; the
/// tail runs 4 x 8 in the same order. rowLength must be a multiple of 8, OC of 4.
@inline(__always)
private func winogradProducts(_ v: UnsafePointer<Float>, channels c: Int, rowLength: Int, _ u: UnsafePointer<Float>,
                              outChannels oc: Int, into out: UnsafeMutablePointer<Float>) {
    for o0 in Swift.stride(from: 0, to: oc, by: 4) {
        var j = 0
        while j + 24 <= rowLength {
            var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a02 = SIMD8<Float>()
            var a10 = SIMD8<Float>(), a11 = SIMD8<Float>(), a12 = SIMD8<Float>()
            var a20 = SIMD8<Float>(), a21 = SIMD8<Float>(), a22 = SIMD8<Float>()
            var a30 = SIMD8<Float>(), a31 = SIMD8<Float>(), a32 = SIMD8<Float>()
            var src = v + j, w = u + o0
            for _ in 0..<c {
                let v0 = load8(src), v1 = load8(src + 8), v2 = load8(src + 16)
                let w0 = SIMD8<Float>(repeating: w[0])
                a00.addProduct(v0, w0); a01.addProduct(v1, w0); a02.addProduct(v2, w0)
                let w1 = SIMD8<Float>(repeating: w[1])
                a10.addProduct(v0, w1); a11.addProduct(v1, w1); a12.addProduct(v2, w1)
                let w2 = SIMD8<Float>(repeating: w[2])
                a20.addProduct(v0, w2); a21.addProduct(v1, w2); a22.addProduct(v2, w2)
                let w3 = SIMD8<Float>(repeating: w[3])
                a30.addProduct(v0, w3); a31.addProduct(v1, w3); a32.addProduct(v2, w3)
                src += rowLength; w += oc
            }
            let d = out + o0 * rowLength + j, r = rowLength
            store8(a00, d); store8(a01, d + 8); store8(a02, d + 16)
            store8(a10, d + r); store8(a11, d + r + 8); store8(a12, d + r + 16)
            store8(a20, d + 2 * r); store8(a21, d + 2 * r + 8); store8(a22, d + 2 * r + 16)
            store8(a30, d + 3 * r); store8(a31, d + 3 * r + 8); store8(a32, d + 3 * r + 16)
            j += 24
        }
        while j < rowLength {
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            var src = v + j, w = u + o0
            for _ in 0..<c {
                let x = load8(src)
                a0.addProduct(x, SIMD8<Float>(repeating: w[0])); a1.addProduct(x, SIMD8<Float>(repeating: w[1]))
                a2.addProduct(x, SIMD8<Float>(repeating: w[2])); a3.addProduct(x, SIMD8<Float>(repeating: w[3]))
                src += rowLength; w += oc
            }
            let d = out + o0 * rowLength + j
            store8(a0, d); store8(a1, d + rowLength); store8(a2, d + 2 * rowLength); store8(a3, d + 3 * rowLength)
            j += 8
        }
    }
}

/// Samples per `winogradConv3x3` call: three samples' tiles side by side make whole
/// blocks of 24 lanes for `convFlat` on these planes (3 x 56 at 14x14, 3 x 224 at 28x28),
/// where one sample leaves a tail of 8 that runs at a third of the rate. Lanes are
/// independent, so the grouping changes no bit.
public let winogradGroup = 3

/// The stride-1 3x3 convolution by F(2x2, 3x3) of `samples` consecutive samples (at most
/// `winogradGroup`): y [samples, OC, H, W] from their prepared inputs (`prepareConvInput`,
/// sample s at input + s * sampleStride, its channels `channelStride` apart) and the
/// transformed weights U [16, C, OC] (`winogradWeightTransform`). `v` [16, C, group x tiles]
/// and `m` [16, OC, group x tiles] are scratch. OC must be a multiple of 4; y needs
/// `winogradOutputSlack` floats past its end.
public func winogradConv3x3(_ input: UnsafePointer<Float>, channels c: Int, channelStride: Int, sampleStride: Int, samples: Int,
                            _ u: UnsafePointer<Float>, outChannels oc: Int, _ l: WinogradLayout, bias: UnsafePointer<Float>?,
                            v: UnsafeMutablePointer<Float>, m: UnsafeMutablePointer<Float>, into y: UnsafeMutablePointer<Float>) {
    precondition(samples >= 1 && samples <= winogradGroup, "winogradConv3x3 takes 1 to \(winogradGroup) samples, got \(samples)")
    let row = samples * l.tiles
    for s in 0..<samples {
        winogradInputTransform(input + s * sampleStride, channels: c, channelStride: channelStride, l, rowLength: row,
                               into: v + s * l.tiles)
    }
    for f in 0..<16 {
        winogradProducts(v + f * c * row, channels: c, rowLength: row, u + f * c * oc, outChannels: oc, into: m + f * oc * row)
    }
    for s in 0..<samples {
        winogradOutputTransform(m + s * l.tiles, channels: oc, l, rowLength: row, bias: bias, scratch: v,
                                into: y + s * oc * l.height * l.width)
    }
}
