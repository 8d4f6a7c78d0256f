/// Winograd's F(2x2, 3x3) for 3x3, padding-1, stride-1 convolutions: each 2x2 block of
/// outputs (a tile) from the 4x4 block of padded input around it, with 16 multiplies per
/// input channel where the direct kernel does 36 (Lavin and Gray, "Fast Algorithms for
/// Convolutional Neural Networks", 2015):
///
///     Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
///
/// The input transform V = Bᵀ d B and the weight transform U = G g Gᵀ give 16 frequencies;
/// for each, M[f] [OC, tiles] = U[f] [OC, C] x V[f] [C, tiles] (`winogradProducts`, vector
/// lanes over tiles); the output transform Aᵀ M A gives the 2x2 outputs. The weight
/// gradient is Gᵀ (Σ_tiles (A dY Aᵀ) ⊙ V) G, with V transformed again in backward.
///
/// Tiles are laid out row by row, each tile row padded to a whole number of 8-lane vectors
/// (`rowTiles`), or two rows of 4 tiles a vector on narrow planes. Every lane is one tile
/// and every output is a fixed sequence of additions and one FMA chain over the input
/// channels, whatever the batch: a sample's outputs depend on that sample alone, bit for
/// bit. Lanes past the image read whatever follows in the channel's prepared plane (which
/// is `reach` long for that) and are thrown away, or zeroed before the weight gradient sums
/// them; no real output reads them: output column 0 of a tile uses input columns 0 to 2
/// only, column 1 columns 1 to 3 (rows likewise), and those are inside the padded image for
/// every tile that has a real output.

/// Where the transforms read and write, for an H x W plane (output the same size).
///
/// A vector holds 8 tiles of one tile row (`wide`), or, on planes up to 8 pixels wide,
/// the 4 tiles of two consecutive tile rows: a 7x7 plane is 4 x 4 tiles, and one row a
/// vector would leave half the lanes empty.
public struct WinogradLayout: Equatable, Sendable {
    public let height: Int
    public let width: Int
    /// Tile rows and tiles per row with a real output: ceil(H / 2), ceil(W / 2).
    public let tileRows: Int
    public let tileColumns: Int
    /// Tiles per tile row as laid out: `tileColumns` rounded up to whole vectors of 8, or 4.
    public let rowTiles: Int
    public let isWide: Bool
    /// Vectors down a channel (a tile row each, or two) and across it.
    public let vectorRows: Int
    public let vectorsPerRow: Int
    /// Tiles per channel as laid out (a multiple of 8).
    public let tiles: Int
    /// The prepared input's row stride (`DirectConvLayout`'s, stride 1: W + 2).
    public let rowStride: Int
    /// Floats from a vector's low lanes' source to its high lanes' (the next 8 columns, or
    /// the next tile row), and from one vector row's source to the next.
    public let highOffset: Int
    public let vectorRowStride: Int
    /// Floats the transforms read from the start of a prepared channel: a prepared plane
    /// this long keeps every read inside its channel.
    public let reach: Int

    public init(height: Int, width: Int) {
        self.height = height; self.width = width
        tileRows = (height + 1) / 2
        tileColumns = (width + 1) / 2
        rowStride = width + 2
        isWide = tileColumns > 4
        if isWide {
            rowTiles = (tileColumns + 7) / 8 * 8
            vectorRows = tileRows; vectorsPerRow = rowTiles / 8
            highOffset = 8; vectorRowStride = 2 * rowStride
        } else {
            rowTiles = 4
            vectorRows = (tileRows + 1) / 2; vectorsPerRow = 1
            highOffset = 2 * rowStride; vectorRowStride = 4 * rowStride
        }
        tiles = vectorRows * vectorsPerRow * 8
        // The last (padded) tile row reads padded rows up to 2·rows + 1; the last vector's
        // second loads read 8 floats from column 2·rowTiles - 6.
        let paddedTileRows = isWide ? tileRows : 2 * vectorRows
        reach = (2 * paddedTileRows + 1) * rowStride + 2 * rowTiles + 2
    }

    /// Samples per `winogradConv3x3` call: their tiles side by side make one row of lanes.
    /// Three at 14x14 make 3 x 56 = 7 blocks of 24 lanes for the products, where one sample
    /// leaves a tail of 8 that runs at a third of the rate. More did not pay at 7x7 (12
    /// samples, 192 lanes: the weight gradient adds up fewer lane sums, but forward's
    /// products and transforms no longer stay in cache; 15.7 to 17.0 ms against 13.4 to
    /// 16.2 ms forward and backward in alternating runs). Lanes are independent: the
    /// grouping changes no output bit.
    public var group: Int { 3 }

    /// Floats of the transformed input or of the products per frequency and channel: 16 x tiles.
    public var floatsPerChannel: Int { 16 * tiles }
}

/// 8 floats at p and 8 at p + high: one vector row's 16 columns (8 tiles), or 8 columns
/// of two tile rows (4 tiles each).
@inline(__always)
private func loadPair(_ p: UnsafePointer<Float>, _ high: Int) -> SIMD16<Float> {
    SIMD16(lowHalf: load8(p), highHalf: load8(p + high))
}

/// V [16, C, rowLength] = Bᵀ d B of every tile of every channel of one sample, from its
/// prepared input (`prepareConvInput`, stride 1: padded, row stride W + 2), channel ci at
/// input + ci * channelStride; the sample's tiles fill the first `tiles` of each row.
public func winogradInputTransform(_ input: UnsafePointer<Float>, channels c: Int, channelStride: Int,
                                   _ l: WinogradLayout, rowLength: Int, into v: UnsafeMutablePointer<Float>) {
    #if DDPTRAIN_AVX512
    winogradInputTransformPaired(input, channels: c, channelStride: channelStride, l, rowLength: rowLength, into: v)
    #else
    // Pointers stepped and offsets added, not index products: the checked multiplies
    // cost more than the arithmetic here.
    let rs = l.rowStride, frequency = c &* rowLength
    let h = l.highOffset
    var channel = input, channelOut = v
    for _ in 0..<c {
        var rowStart = channel, out = channelOut
        for _ in 0..<l.vectorRows {
            var p = rowStart
            for _ in 0..<l.vectorsPerRow {
                // Bᵀ on whole rows first (rows 0 - 2, 1 + 2, 2 - 1, 1 - 3), then each combined
                // row's d B, stored at once: few vectors live at a time, nothing spilled.
                let r0 = p, r1 = p + rs, r2 = p + 2 &* rs, r3 = p + 3 &* rs
                var q = out
                @inline(__always) func put(_ a: SIMD16<Float>, _ b: SIMD16<Float>) {
                    let p0 = a.evenHalf, p1 = a.oddHalf, p2 = b.evenHalf, p3 = b.oddHalf
                    store8(p0 - p2, q); q += frequency
                    store8(p1 + p2, q); q += frequency
                    store8(p2 - p1, q); q += frequency
                    store8(p1 - p3, q); q += frequency
                }
                put(loadPair(r0, h) - loadPair(r2, h), loadPair(r0 + 2, h) - loadPair(r2 + 2, h))
                put(loadPair(r1, h) + loadPair(r2, h), loadPair(r1 + 2, h) + loadPair(r2 + 2, h))
                put(loadPair(r2, h) - loadPair(r1, h), loadPair(r2 + 2, h) - loadPair(r1 + 2, h))
                put(loadPair(r1, h) - loadPair(r3, h), loadPair(r1 + 2, h) - loadPair(r3 + 2, h))
                p += 16; out += 8
            }
            rowStart += l.vectorRowStride
        }
        channel += channelStride; channelOut += rowLength
    }
    #endif
}

#if DDPTRAIN_AVX512
/// `winogradInputTransform` two vectors of tiles at a time: the tiles' columns d0 to d3
/// (even and odd lanes of a combined row and of the row two columns on) for 16 tiles, and
/// each frequency's 16 lanes (consecutive in `v`) with one store, where one vector at a
/// time took two 8-lane stores and twice the arithmetic. (swiftc makes each 16-tile
/// permute two one-source permutes and an insert, not one two-source permute; still 0.80x
/// the time of the one-vector kernel.) The same additions on the same values: the same bits.
@inline(__always)
private func winogradInputTransformPaired(_ input: UnsafePointer<Float>, channels c: Int, channelStride: Int,
                                          _ l: WinogradLayout, rowLength: Int, into v: UnsafeMutablePointer<Float>) {
    let rs = l.rowStride, frequency = c &* rowLength, h = l.highOffset, wide = l.isWide
    let perRow = l.vectorsPerRow, vectors = l.vectorRows &* perRow
    // Bᵀ d of the vector of tiles whose first column is at p: rows 0 - 2, 1 + 2, 2 - 1,
    // 1 - 3, 16 columns each (8 tiles of one tile row, or 8 columns of two tile rows).
    @inline(__always) func rows(_ p: UnsafePointer<Float>) -> (SIMD16<Float>, SIMD16<Float>, SIMD16<Float>, SIMD16<Float>) {
        @inline(__always) func row(_ q: UnsafePointer<Float>) -> SIMD16<Float> { wide ? load16(q) : loadPair(q, h) }
        let r0 = row(p), r1 = row(p + rs), r2 = row(p + 2 &* rs), r3 = row(p + 3 &* rs)
        return (r0 - r2, r1 + r2, r2 - r1, r1 - r3)
    }
    @inline(__always) func source(_ channel: UnsafePointer<Float>, _ k: Int) -> UnsafePointer<Float> {
        channel + (k / perRow) &* l.vectorRowStride + (k % perRow) &* 16
    }
    var channel = input, channelOut = v
    for _ in 0..<c {
        var k = 0
        while k &+ 2 <= vectors {
            let p = source(channel, k), q = source(channel, k &+ 1)
            let a = rows(p), a2 = rows(p + 2), b = rows(q), b2 = rows(q + 2)
            var out = channelOut + k &* 8
            // One combined row of both vectors (x, y) and the same two columns on (x2, y2).
            @inline(__always) func put(_ x: SIMD16<Float>, _ y: SIMD16<Float>, _ x2: SIMD16<Float>, _ y2: SIMD16<Float>) {
                let near = SIMD32(lowHalf: x, highHalf: y), far = SIMD32(lowHalf: x2, highHalf: y2)
                let d0 = near.evenHalf, d1 = near.oddHalf, d2 = far.evenHalf, d3 = far.oddHalf
                store16(d0 - d2, out); out += frequency
                store16(d1 + d2, out); out += frequency
                store16(d2 - d1, out); out += frequency
                store16(d1 - d3, out); out += frequency
            }
            put(a.0, b.0, a2.0, b2.0); put(a.1, b.1, a2.1, b2.1)
            put(a.2, b.2, a2.2, b2.2); put(a.3, b.3, a2.3, b2.3)
            k &+= 2
        }
        if k < vectors {
            let p = source(channel, k)
            let a = rows(p), a2 = rows(p + 2)
            var out = channelOut + k &* 8
            @inline(__always) func put(_ x: SIMD16<Float>, _ x2: SIMD16<Float>) {
                let d0 = x.evenHalf, d1 = x.oddHalf, d2 = x2.evenHalf, d3 = x2.oddHalf
                store8(d0 - d2, out); out += frequency
                store8(d1 + d2, out); out += frequency
                store8(d2 - d1, out); out += frequency
                store8(d1 - d3, out); out += frequency
            }
            put(a.0, a2.0); put(a.1, a2.1); put(a.2, a2.2); put(a.3, a2.3)
        }
        channel += channelStride; channelOut += rowLength
    }
}
#endif

/// U [16, C, OC] = G g Gᵀ of every kernel g = weight[o, c] ([OC, C, 3, 3], PyTorch's
/// layout), the weights of `winogradProducts` per frequency. With `transposed`, the kernels
/// of the input gradient instead: flipped, channels swapped, U [16, OC, C] (the input
/// gradient of a stride-1 convolution is the padded output gradient convolved with them).
/// Computed in Float64, rounded once.
public func winogradWeightTransform(_ weight: UnsafePointer<Float>, outChannels oc: Int, inChannels c: Int, transposed: Bool,
                                    into u: UnsafeMutablePointer<Float>) {
    let (rows, columns) = transposed ? (oc, c) : (c, oc)
    let next = rows * columns
    // The kernel at (row, column) of U: weight[column, row] (or, transposed, weight[row, column]).
    @inline(__always) func kernel(_ row: Int, _ column: Int) -> UnsafePointer<Float> {
        transposed ? weight + (row * c + column) * 9 : weight + (column * c + row) * 9
    }
    // Tap t of the kernel (flipped for the input gradient).
    @inline(__always) func tap(_ w: UnsafePointer<Float>, _ t: Int) -> Double { Double(w[transposed ? 8 - t : t]) }
    for row in 0..<rows {
        // 8 kernels of a row of U at a time, one per lane (their 16 values of each frequency
        // are consecutive in U); each lane does the scalar loop's arithmetic below.
        var column = 0
        while column + 8 <= columns {
            @inline(__always) func taps(_ t: Int) -> SIMD8<Double> {
                var v = SIMD8<Double>()
                for k in 0..<8 { v[k] = tap(kernel(row, column + k), t) }
                return v
            }
            let t00 = taps(0), t01 = taps(1), t02 = taps(2)
            let t10 = taps(3), t11 = taps(4), t12 = taps(5)
            let t20 = taps(6), t21 = taps(7), t22 = taps(8)
            @inline(__always) func emit(_ r: Int, _ a: SIMD8<Double>, _ b: SIMD8<Double>, _ d: SIMD8<Double>) {
                let first = u + (4 * r * rows + row) * columns + column
                store8(rounded(a), first); store8(rounded((a + b + d) / 2), first + next)
                store8(rounded((a - b + d) / 2), first + 2 * next); store8(rounded(d), first + 3 * next)
            }
            emit(0, t00, t01, t02)
            emit(1, (t00 + t10 + t20) / 2, (t01 + t11 + t21) / 2, (t02 + t12 + t22) / 2)
            emit(2, (t00 - t10 + t20) / 2, (t01 - t11 + t21) / 2, (t02 - t12 + t22) / 2)
            emit(3, t20, t21, t22)
            column += 8
        }
        while column < columns {
            let w = kernel(row, column)
            // Kernel row i (lane 3 unused).
            @inline(__always) func kernelRow(_ i: Int) -> SIMD4<Double> {
                SIMD4(tap(w, 3 * i), tap(w, 3 * i + 1), tap(w, 3 * i + 2), 0)
            }
            let g0 = kernelRow(0), g1 = kernelRow(1), g2 = kernelRow(2)
            // (G g) Gᵀ: G g has rows g0, (g0 + g1 + g2)/2, (g0 - g1 + g2)/2, g2; then the same on each row.
            @inline(__always) func emit(_ r: Int, _ v: SIMD4<Double>) {
                let a = v[0], b = v[1], d = v[2]
                let first = u + (4 * r * rows + row) * columns + column
                first[0] = Float(a); first[next] = Float((a + b + d) / 2)
                first[2 * next] = Float((a - b + d) / 2); first[3 * next] = Float(d)
            }
            emit(0, g0); emit(1, (g0 + g1 + g2) / 2); emit(2, (g0 - g1 + g2) / 2); emit(3, g2)
            column += 1
        }
    }
}

/// Float64 to Float32 lane by lane, rounding to nearest (as Float(x) does).
@inline(__always)
private func rounded(_ v: SIMD8<Double>) -> SIMD8<Float> {
    SIMD8<Float>(lowHalf: SIMD4<Float>(v.lowHalf), highHalf: SIMD4<Float>(v.highHalf))
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
    let frequency = oc &* rowLength, h = l.height, w = l.width
    var plane = y, channel = m
    for o in 0..<oc {
        let b = SIMD8<Float>(repeating: bias?[o] ?? 0)
        var p = channel
        for vr in 0..<l.vectorRows {
            var top = plane + 2 &* vr &* w, lower = scratch
            for _ in 0..<l.vectorsPerRow {
                var q = p
                @inline(__always) func next() -> SIMD8<Float> { let x = load8(q); q += frequency; return x }
                let m00 = next(), m01 = next(), m02 = next(), m03 = next()
                let m10 = next(), m11 = next(), m12 = next(), m13 = next()
                let m20 = next(), m21 = next(), m22 = next(), m23 = next()
                let m30 = next(), m31 = next(), m32 = next(), m33 = next()
                // Rows: Aᵀ = [1 1 1 0; 0 1 -1 -1] on the 4 rows of M, column by column.
                let s0 = m00 + m10 + m20, t0 = m10 - m20 - m30
                let s1 = m01 + m11 + m21, t1 = m11 - m21 - m31
                let s2 = m02 + m12 + m22, t2 = m12 - m22 - m32
                let s3 = m03 + m13 + m23, t3 = m13 - m23 - m33
                // Columns, then the two output rows of the 8 tiles, even and odd columns interleaved.
                var upper = SIMD16<Float>(), bottom = SIMD16<Float>()
                upper.evenHalf = s0 + s1 + s2 + b; upper.oddHalf = s1 - s2 - s3 + b
                bottom.evenHalf = t0 + t1 + t2 + b; bottom.oddHalf = t1 - t2 - t3 + b
                if l.isWide {
                    UnsafeMutableRawPointer(top).storeBytes(of: upper, as: SIMD16<Float>.self)
                    UnsafeMutableRawPointer(lower).storeBytes(of: bottom, as: SIMD16<Float>.self)
                } else {
                    // Rows 4vr to 4vr + 3, each at most 8 wide: copied exactly, in any order.
                    @inline(__always) func copy(_ half: SIMD8<Float>, toRow r: Int) {
                        guard r < h else { return }
                        store8(half, scratch)
                        let row = plane + r &* w
                        for i in 0..<w { row[i] = scratch[i] }
                    }
                    let first = 4 &* vr
                    copy(upper.lowHalf, toRow: first); copy(bottom.lowHalf, toRow: first &+ 1)
                    copy(upper.highHalf, toRow: first &+ 2); copy(bottom.highHalf, toRow: first &+ 3)
                }
                p += 8; top += 16; lower += 16
            }
            if l.isWide && 2 &* vr &+ 1 < h {
                // Inline: a memmove call per 7 to 28 floats costs more than the copy.
                let row = plane + (2 &* vr &+ 1) &* w
                var k = 0
                while k &+ 8 <= w { store8(load8(scratch + k), row + k); k &+= 8 }
                while k < w { row[k] = scratch[k]; k &+= 1 }
            }
        }
        plane += h &* w; channel += rowLength
    }
}

/// Floats `winogradOutputTransform` may write past the end of its output.
public let winogradOutputSlack = 16

/// One frequency's products: out [OC, rowLength] = U [C, OC]ᵀ x V [C, rowLength], i.e.
/// out[o, j] = Σ_c u[c, o] · v[c, j], one FMA chain over c per element (`convFlat` with a
/// single tap, without its tap loop: with one tap its loop bookkeeping cost a third of the
/// time). Blocks of 4 output channels x 24 lanes keep 12 accumulators in registers; the
/// tail runs 4 x 8 in the same order. rowLength must be a multiple of 8, OC of 4.
///
/// With AVX-512, blocks of 4 x 48 lanes (zmm); with OC a multiple of 8, the lanes after the
/// last whole 48 go 8 channels at a time (`productsTail`): as 4 x 24 ymm lanes they ran at
/// half rate, a group of three 14x14 planes being 3 x 48 + 24 lanes.
@inline(__always)
private func winogradProducts(_ v: UnsafePointer<Float>, channels c: Int, rowLength: Int, _ u: UnsafePointer<Float>,
                              outChannels oc: Int, into out: UnsafeMutablePointer<Float>) {
    #if DDPTRAIN_AVX512
    let wideLanes = rowLength / 48 * 48
    let tailByEights = oc % 8 == 0 && wideLanes < rowLength
    if tailByEights { productsTail(v, channels: c, rowLength: rowLength, from: wideLanes, u, outChannels: oc, into: out) }
    #endif
    for o0 in Swift.stride(from: 0, to: oc, by: 4) {
        var j = 0
        #if DDPTRAIN_AVX512
        while j + 48 <= rowLength {
            var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a02 = SIMD16<Float>()
            var a10 = SIMD16<Float>(), a11 = SIMD16<Float>(), a12 = SIMD16<Float>()
            var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a22 = SIMD16<Float>()
            var a30 = SIMD16<Float>(), a31 = SIMD16<Float>(), a32 = SIMD16<Float>()
            var src = v + j, w = u + o0
            for _ in 0..<c {
                let v0 = load16(src), v1 = load16(src + 16), v2 = load16(src + 32)
                let w0 = SIMD16<Float>(repeating: w[0])
                a00.addProduct(v0, w0); a01.addProduct(v1, w0); a02.addProduct(v2, w0)
                let w1 = SIMD16<Float>(repeating: w[1])
                a10.addProduct(v0, w1); a11.addProduct(v1, w1); a12.addProduct(v2, w1)
                let w2 = SIMD16<Float>(repeating: w[2])
                a20.addProduct(v0, w2); a21.addProduct(v1, w2); a22.addProduct(v2, w2)
                let w3 = SIMD16<Float>(repeating: w[3])
                a30.addProduct(v0, w3); a31.addProduct(v1, w3); a32.addProduct(v2, w3)
                src += rowLength; w += oc
            }
            let d = out + o0 * rowLength + j, r = rowLength
            store16(a00, d); store16(a01, d + 16); store16(a02, d + 32)
            store16(a10, d + r); store16(a11, d + r + 16); store16(a12, d + r + 32)
            store16(a20, d + 2 * r); store16(a21, d + 2 * r + 16); store16(a22, d + 2 * r + 32)
            store16(a30, d + 3 * r); store16(a31, d + 3 * r + 16); store16(a32, d + 3 * r + 32)
            j += 48
        }
        if tailByEights { continue }
        #endif
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

#if DDPTRAIN_AVX512
/// `winogradProducts`' lanes from `start` (a multiple of 8) to rowLength, 8 output channels at
/// a time: 16 lanes (8 zmm accumulators), then 8 (8 ymm), each element the same FMA chain
/// over c. OC must be a multiple of 8.
@inline(__always)
private func productsTail(_ v: UnsafePointer<Float>, channels c: Int, rowLength: Int, from start: Int, _ u: UnsafePointer<Float>,
                          outChannels oc: Int, into out: UnsafeMutablePointer<Float>) {
    for o0 in Swift.stride(from: 0, to: oc, by: 8) {
        var j = start
        while j + 16 <= rowLength {
            var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
            var a4 = SIMD16<Float>(), a5 = SIMD16<Float>(), a6 = SIMD16<Float>(), a7 = SIMD16<Float>()
            var src = v + j, w = u + o0
            for _ in 0..<c {
                let x = load16(src)
                a0.addProduct(x, SIMD16(repeating: w[0])); a1.addProduct(x, SIMD16(repeating: w[1]))
                a2.addProduct(x, SIMD16(repeating: w[2])); a3.addProduct(x, SIMD16(repeating: w[3]))
                a4.addProduct(x, SIMD16(repeating: w[4])); a5.addProduct(x, SIMD16(repeating: w[5]))
                a6.addProduct(x, SIMD16(repeating: w[6])); a7.addProduct(x, SIMD16(repeating: w[7]))
                src += rowLength; w += oc
            }
            let d = out + o0 * rowLength + j, r = rowLength
            store16(a0, d); store16(a1, d + r); store16(a2, d + 2 * r); store16(a3, d + 3 * r)
            store16(a4, d + 4 * r); store16(a5, d + 5 * r); store16(a6, d + 6 * r); store16(a7, d + 7 * r)
            j += 16
        }
        if j < rowLength {
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            var a4 = SIMD8<Float>(), a5 = SIMD8<Float>(), a6 = SIMD8<Float>(), a7 = SIMD8<Float>()
            var src = v + j, w = u + o0
            for _ in 0..<c {
                let x = load8(src)
                a0.addProduct(x, SIMD8(repeating: w[0])); a1.addProduct(x, SIMD8(repeating: w[1]))
                a2.addProduct(x, SIMD8(repeating: w[2])); a3.addProduct(x, SIMD8(repeating: w[3]))
                a4.addProduct(x, SIMD8(repeating: w[4])); a5.addProduct(x, SIMD8(repeating: w[5]))
                a6.addProduct(x, SIMD8(repeating: w[6])); a7.addProduct(x, SIMD8(repeating: w[7]))
                src += rowLength; w += oc
            }
            let d = out + o0 * rowLength + j, r = rowLength
            store8(a0, d); store8(a1, d + r); store8(a2, d + 2 * r); store8(a3, d + 3 * r)
            store8(a4, d + 4 * r); store8(a5, d + 5 * r); store8(a6, d + 6 * r); store8(a7, d + 7 * r)
        }
    }
}
#endif

/// The stride-1 3x3 convolution by F(2x2, 3x3) of `samples` consecutive samples (at most
/// the layout's `group`): y [samples, OC, H, W] from their prepared inputs (`prepareConvInput`,
/// sample s at input + s * sampleStride, its channels `channelStride` apart) and the
/// transformed weights U [16, C, OC] (`winogradWeightTransform`). The transformed input goes
/// to `v` [16, C, samples x tiles]; `m` [16, OC, samples x
/// tiles] and `scratch` [2 x rowTiles] are scratch. OC must be a multiple of 4; y needs
/// `winogradOutputSlack` floats past its end.
public func winogradConv3x3(_ input: UnsafePointer<Float>, channels c: Int, channelStride: Int, sampleStride: Int, samples: Int,
                            _ u: UnsafePointer<Float>, outChannels oc: Int, _ l: WinogradLayout, bias: UnsafePointer<Float>?,
                            v: UnsafeMutablePointer<Float>, m: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                            into y: UnsafeMutablePointer<Float>) {
    precondition(samples >= 1 && samples <= l.group, "winogradConv3x3 takes 1 to \(l.group) samples, got \(samples)")
    let row = samples * l.tiles
    for s in 0..<samples {
        winogradInputTransform(input + s * sampleStride, channels: c, channelStride: channelStride, l, rowLength: row,
                               into: v + s * l.tiles)
    }
    for f in 0..<16 {
        winogradProducts(v + f * c * row, channels: c, rowLength: row, u + f * c * oc, outChannels: oc, into: m + f * oc * row)
    }
    for s in 0..<samples {
        winogradOutputTransform(m + s * l.tiles, channels: oc, l, rowLength: row, bias: bias, scratch: scratch,
                                into: y + s * oc * l.height * l.width)
    }
}

// MARK: The weight gradient
//
// With U = G g Gᵀ and each tile's output Aᵀ (U ⊙ V) A, the gradient of U is
// Σ_tiles (A dY Aᵀ) ⊙ V, and that of g is Gᵀ dU G: per frequency, dU[f] [OC, C] is a sum
// over the tiles of products of the transformed output gradient and the transformed input
// (transformed again in backward), 16 multiplies per tile and channel pair where the direct weight
// gradient does 36.

/// T = A dY Aᵀ of every 2x2 tile of one sample's output gradient, read from its padded copy
/// (stride 1: laid out like a prepared input, zeros around the image, channel o at dy + o *
/// channelStride), into rows of `rowLength` lanes of which the sample's tiles fill the
/// first `tiles` (the sample's tiles start at t + 2 x its first lane). Output channels go
/// in pairs, a pair's rows interleaved 8 lanes at a time, [16, OC / 2, rowLength / 8, 2, 8]:
/// the weight products load both channels' lanes as one 16-float vector. OC must be even.
/// Lanes past the last tile of a tile row are zero, so that sums over all lanes are sums
/// over the real tiles.
public func winogradGradientTransform(_ dy: UnsafePointer<Float>, channels oc: Int, channelStride: Int, _ l: WinogradLayout,
                                      rowLength: Int, into t: UnsafeMutablePointer<Float>) {
    precondition(oc % 2 == 0, "winogradGradientTransform needs an even number of channels, got \(oc)")
    // A channel pair at a time: the pair's 8 + 8 lanes of a vector of tiles are consecutive
    // in t, so each row goes with one 16-lane store and 16-lane arithmetic (a channel at a
    // time took two 8-lane halves: 0.52 -> 0.41 of the weight products with AVX-512, 0.27 ->
    // 0.22 with AVX2).
    let rs = l.rowStride, frequency = oc &* rowLength, h = l.highOffset
    let lane = SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7)
    for o in Swift.stride(from: 0, to: oc, by: 2) {
        var out = t + (o / 2) &* 2 &* rowLength
        for vr in 0..<l.vectorRows {
            // Output rows 2ty, 2ty + 1 are padded rows 2ty + 1, 2ty + 2; columns likewise.
            var p = dy + o &* channelStride + (2 &* vr &* (l.isWide ? 1 : 2) &+ 1) &* rs + 1
            for chunk in 0..<l.vectorsPerRow {
                let q = p + channelStride
                let upper = SIMD32(lowHalf: loadPair(p, h), highHalf: loadPair(q, h))
                let bottom = SIMD32(lowHalf: loadPair(p + rs, h), highHalf: loadPair(q + rs, h))
                // Lanes of a tile past the last column (or, two rows a vector, past the last row).
                let real = l.isWide
                    ? lane .< SIMD16<Int32>(repeating: Int32(l.tileColumns - 8 * chunk))
                    : ((lane & 3) .< SIMD16<Int32>(repeating: Int32(l.tileColumns)))
                        .& ((lane &>> 2) .< SIMD16<Int32>(repeating: Int32(l.tileRows - 2 * vr)))
                let y00 = upper.evenHalf.replacing(with: 0, where: .!real), y01 = upper.oddHalf.replacing(with: 0, where: .!real)
                let y10 = bottom.evenHalf.replacing(with: 0, where: .!real), y11 = bottom.oddHalf.replacing(with: 0, where: .!real)
                // Rows of A dY: y0, y0 + y1, y0 - y1, -y1 (y0, y1 the tile's rows); then the same on columns.
                var dst = out
                @inline(__always) func row(_ a: SIMD16<Float>, _ b: SIMD16<Float>) {
                    store16(a, dst); dst += frequency
                    store16(a + b, dst); dst += frequency
                    store16(a - b, dst); dst += frequency
                    store16(-b, dst); dst += frequency
                }
                row(y00, y01)
                row(y00 + y10, y01 + y11)
                row(y00 - y10, y01 - y11)
                row(-y10, -y11)
                p += 16; out += 16
            }
        }
    }
}

/// dU's 8 lane sums [16, OC / 2, C, 2, 8] (output channels in pairs, a pair's two sums side by
/// side: the paired kernel adds a whole accumulator with one 64-byte load and store; see
/// `laneSums`) += T[f, o, lanes] · V[f, c, lanes] over one row of lanes (a
/// group of samples' tiles), lane l of the 8 collecting the row's lanes l, l + 8, ...: T
/// from `winogradGradientTransform` (channel pairs interleaved), V [16, C, rowLength] from
/// `winogradInputTransform`. Blocks of 4 output x 3 input channels keep 12 vector
/// accumulators over the row, then add them to the lane sums (a sum over several groups
/// is added in the order of the calls; `winogradWeightGradient` sums the lanes). Summing lanes once, not per group,
/// took 12 horizontal sums per 4 x 3 block and group off the kernel (on a 7x7 plane a group
/// is only 6 vectors long).
public func winogradWeightProducts(_ t: UnsafePointer<Float>, outChannels oc: Int, _ v: UnsafePointer<Float>, channels c: Int,
                                   rowLength: Int, addingInto lanes: UnsafeMutablePointer<Float>) {
    #if DDPTRAIN_AVX512
    if oc % 8 == 0 {
        winogradWeightProductsPaired(t, outChannels: oc, v, channels: c, rowLength: rowLength, addingInto: lanes)
        return
    }
    #endif
    for f in 0..<16 {
        let tf = t + f * oc * rowLength, vf = v + f * c * rowLength, df = lanes + f * oc * c * 8
        for o0 in Swift.stride(from: 0, to: oc, by: 4) {
            // Channel o's lanes j..<j + 8 at 2j (its pair's row) + 8 (odd o).
            let t0 = tf + o0 * rowLength, t1 = t0 + 8, t2 = t0 + 2 * rowLength, t3 = t2 + 8
            // The lane sums of channels o0, o0 + 1 (one pair) and o0 + 2, o0 + 3 (the next),
            // input channel c0 + k at 16k.
            let p0 = df + (o0 / 2) * c * 16, p1 = p0 + 16 * c
            var c0 = 0
            while c0 + 3 <= c {
                let x0 = vf + c0 * rowLength, x1 = x0 + rowLength, x2 = x1 + rowLength
                var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a02 = SIMD8<Float>()
                var a10 = SIMD8<Float>(), a11 = SIMD8<Float>(), a12 = SIMD8<Float>()
                var a20 = SIMD8<Float>(), a21 = SIMD8<Float>(), a22 = SIMD8<Float>()
                var a30 = SIMD8<Float>(), a31 = SIMD8<Float>(), a32 = SIMD8<Float>()
                var j = 0
                while j < rowLength {
                    let v0 = load8(x0 + j), v1 = load8(x1 + j), v2 = load8(x2 + j)
                    let g0 = load8(t0 + 2 * j)
                    a00.addProduct(g0, v0); a01.addProduct(g0, v1); a02.addProduct(g0, v2)
                    let g1 = load8(t1 + 2 * j)
                    a10.addProduct(g1, v0); a11.addProduct(g1, v1); a12.addProduct(g1, v2)
                    let g2 = load8(t2 + 2 * j)
                    a20.addProduct(g2, v0); a21.addProduct(g2, v1); a22.addProduct(g2, v2)
                    let g3 = load8(t3 + 2 * j)
                    a30.addProduct(g3, v0); a31.addProduct(g3, v1); a32.addProduct(g3, v2)
                    j += 8
                }
                let d0 = p0 + 16 * c0, d1 = p1 + 16 * c0
                accumulate(a00, d0); accumulate(a01, d0 + 16); accumulate(a02, d0 + 32)
                accumulate(a10, d0 + 8); accumulate(a11, d0 + 24); accumulate(a12, d0 + 40)
                accumulate(a20, d1); accumulate(a21, d1 + 16); accumulate(a22, d1 + 32)
                accumulate(a30, d1 + 8); accumulate(a31, d1 + 24); accumulate(a32, d1 + 40)
                c0 += 3
            }
            while c0 < c {
                let x0 = vf + c0 * rowLength
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                var j = 0
                while j < rowLength {
                    let v0 = load8(x0 + j)
                    a0.addProduct(load8(t0 + 2 * j), v0); a1.addProduct(load8(t1 + 2 * j), v0)
                    a2.addProduct(load8(t2 + 2 * j), v0); a3.addProduct(load8(t3 + 2 * j), v0)
                    j += 8
                }
                let d0 = p0 + 16 * c0, d1 = p1 + 16 * c0
                accumulate(a0, d0); accumulate(a1, d0 + 8); accumulate(a2, d1); accumulate(a3, d1 + 8)
                c0 += 1
            }
        }
    }
}

#if DDPTRAIN_AVX512
/// `winogradWeightProducts` 16 lanes wide, with its bits: each SIMD16 accumulator holds two
/// output channels' 8-lane accumulators side by side (T of channel o in the low half, o + 1
/// in the high half: one load of the interleaved pair; the same V in both), so each half is
/// the 8-wide kernel's accumulator.
/// Blocks of 8 output x 3 input channels: 12 accumulators; two channels left over go as a
/// block of 8 accumulators (4 alone wait on the FMA latency at half rate: 32 channels leave 2).
private func winogradWeightProductsPaired(_ t: UnsafePointer<Float>, outChannels oc: Int, _ v: UnsafePointer<Float>, channels c: Int,
                                          rowLength: Int, addingInto lanes: UnsafeMutablePointer<Float>) {
    for f in 0..<16 {
        let tf = t + f * oc * rowLength, vf = v + f * c * rowLength, df = lanes + f * oc * c * 8
        for o0 in Swift.stride(from: 0, to: oc, by: 8) {
            let t0 = tf + o0 * rowLength, t2 = t0 + 2 * rowLength, t4 = t0 + 4 * rowLength, t6 = t0 + 6 * rowLength
            // Pair `pair` of the block (channels o0 + 2 pair, + 1), input channel c0 + k at d + 16k.
            @inline(__always) func add(_ d: UnsafeMutablePointer<Float>, _ pair: Int, _ a: SIMD16<Float>) {
                let at = d + 16 * pair * c
                store16(load16(at) + a, at)
            }
            var c0 = 0
            while c0 + 3 <= c {
                let x0 = vf + c0 * rowLength, x1 = x0 + rowLength, x2 = x1 + rowLength
                var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a02 = SIMD16<Float>()
                var a10 = SIMD16<Float>(), a11 = SIMD16<Float>(), a12 = SIMD16<Float>()
                var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a22 = SIMD16<Float>()
                var a30 = SIMD16<Float>(), a31 = SIMD16<Float>(), a32 = SIMD16<Float>()
                var j = 0
                while j < rowLength {
                    let v0 = twice(x0 + j), v1 = twice(x1 + j), v2 = twice(x2 + j)
                    let g0 = load16(t0 + 2 * j)
                    a00.addProduct(g0, v0); a01.addProduct(g0, v1); a02.addProduct(g0, v2)
                    let g1 = load16(t2 + 2 * j)
                    a10.addProduct(g1, v0); a11.addProduct(g1, v1); a12.addProduct(g1, v2)
                    let g2 = load16(t4 + 2 * j)
                    a20.addProduct(g2, v0); a21.addProduct(g2, v1); a22.addProduct(g2, v2)
                    let g3 = load16(t6 + 2 * j)
                    a30.addProduct(g3, v0); a31.addProduct(g3, v1); a32.addProduct(g3, v2)
                    j += 8
                }
                let d = df + ((o0 / 2) * c + c0) * 16
                add(d, 0, a00); add(d + 16, 0, a01); add(d + 32, 0, a02)
                add(d, 1, a10); add(d + 16, 1, a11); add(d + 32, 1, a12)
                add(d, 2, a20); add(d + 16, 2, a21); add(d + 32, 2, a22)
                add(d, 3, a30); add(d + 16, 3, a31); add(d + 32, 3, a32)
                c0 += 3
            }
            if c0 + 2 <= c {
                let x0 = vf + c0 * rowLength, x1 = x0 + rowLength
                var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a10 = SIMD16<Float>(), a11 = SIMD16<Float>()
                var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a30 = SIMD16<Float>(), a31 = SIMD16<Float>()
                var j = 0
                while j < rowLength {
                    let v0 = twice(x0 + j), v1 = twice(x1 + j)
                    let g0 = load16(t0 + 2 * j), g1 = load16(t2 + 2 * j), g2 = load16(t4 + 2 * j), g3 = load16(t6 + 2 * j)
                    a00.addProduct(g0, v0); a01.addProduct(g0, v1); a10.addProduct(g1, v0); a11.addProduct(g1, v1)
                    a20.addProduct(g2, v0); a21.addProduct(g2, v1); a30.addProduct(g3, v0); a31.addProduct(g3, v1)
                    j += 8
                }
                let d = df + ((o0 / 2) * c + c0) * 16
                add(d, 0, a00); add(d + 16, 0, a01); add(d, 1, a10); add(d + 16, 1, a11)
                add(d, 2, a20); add(d + 16, 2, a21); add(d, 3, a30); add(d + 16, 3, a31)
                c0 += 2
            }
            while c0 < c {
                let x0 = vf + c0 * rowLength
                var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
                var j = 0
                while j < rowLength {
                    let v0 = twice(x0 + j)
                    a0.addProduct(load16(t0 + 2 * j), v0); a1.addProduct(load16(t2 + 2 * j), v0)
                    a2.addProduct(load16(t4 + 2 * j), v0); a3.addProduct(load16(t6 + 2 * j), v0)
                    j += 8
                }
                let d = df + ((o0 / 2) * c + c0) * 16
                add(d, 0, a0); add(d, 1, a1); add(d, 2, a2); add(d, 3, a3)
                c0 += 1
            }
        }
    }
}
#endif

/// Adds 8 floats at p to the vector `a` and stores the sum there.
@inline(__always)
private func accumulate(_ a: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    store8(load8(p) + a, p)
}

/// Where output channel o's and input channel c's 8 lane sums are in one frequency's
/// [OC / 2, C, 2, 8] (`winogradWeightProducts`).
@inline(__always)
private func laneSums(_ lanes: UnsafePointer<Float>, outChannel o: Int, inChannel ci: Int, inChannels c: Int) -> UnsafePointer<Float> {
    lanes + ((o / 2 * c + ci) * 2 + o % 2) * 8
}

/// The weight gradient [OC, C, 3, 3] (PyTorch's layout) = Gᵀ dU G of every dU [16, OC, C],
/// in Float64, rounded once.
public func winogradWeightGradient(_ lanes: UnsafePointer<Float>, outChannels oc: Int, inChannels c: Int,
                                   into grad: UnsafeMutablePointer<Float>) {
    let frequency = oc * c * 8
    for o in 0..<oc {
        for ci in 0..<c {
            let d = laneSums(lanes, outChannel: o, inChannel: ci, inChannels: c)
            // dU[f, o, c] is the sum of its 8 lanes.
            @inline(__always) func du(_ f: Int) -> Double { Double(load8(d + f * frequency).sum()) }
            @inline(__always) func row(_ i: Int) -> SIMD4<Double> {
                SIMD4(du(4 * i), du(4 * i + 1), du(4 * i + 2), du(4 * i + 3))
            }
            // Gᵀ = [1 ½ ½ 0; 0 ½ -½ 0; 0 ½ ½ 1], on the rows of dU, then on their columns.
            let u0 = row(0), u1 = row(1), u2 = row(2), u3 = row(3)
            let g = grad + (o * c + ci) * 9
            @inline(__always) func emit(_ i: Int, _ r: SIMD4<Double>) {
                g[3 * i] = Float(r[0] + (r[1] + r[2]) / 2)
                g[3 * i + 1] = Float((r[1] - r[2]) / 2)
                g[3 * i + 2] = Float((r[1] + r[2]) / 2 + r[3])
            }
            emit(0, u0 + (u1 + u2) / 2); emit(1, (u1 - u2) / 2); emit(2, (u1 + u2) / 2 + u3)
        }
    }
}
