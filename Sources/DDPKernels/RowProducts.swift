/// y [rows, n] = x [rows, k] · b [k, n], every element one FMA chain over k in order,
/// whatever the number of rows, the block it falls in or the vector width: a row's result
/// depends on that row alone, bit for bit. Linear's forward runs on it, so that a sample's
/// outputs do not depend on the samples beside it (and its gradients, shard by shard). OpenBLAS does not promise that: which
/// kernel it runs, and so each element's rounding, depends on the matrix sizes (its
/// SkylakeX and Prescott kernels give a sample alone other bits than in a batch of 4).
///
/// Blocks of 4 rows x 24 columns (x 48 with AVX-512, 16 lanes wide) keep 12 vector
/// accumulators; b's rows are read as vectors, x's elements broadcast. With AVX-512, 32
/// columns left (Linear's 128 outputs are 2 x 48 + 32) go as 4 x 32 (8 accumulators), where
/// 4 x 24 and 4 x 8 ymm blocks ran at half and a quarter of the rate; and rows go 8 at a
/// time first (`rowBlockOfEight`). Columns past the last multiple of 8 run one scalar FMA
/// chain each, in the same order.
///
/// b is taken `panelColumns` columns and `innerChunk` of its rows at a time (at most 384 KB),
/// which every block of rows then reads from L2, where whole rows of b read for each block of
/// rows came from memory (Linear's gradient products: b is 64 or 128 x 3136, 0.8 or 1.6 MB).
/// A chunk after the first starts from the sums the chunks before it left in y: the same
/// chain, stored and loaded back, the same bits.
public func rowProducts(_ x: UnsafePointer<Float>, rows: Int, inner k: Int, _ b: UnsafePointer<Float>, columns n: Int,
                        into y: UnsafeMutablePointer<Float>) {
    guard k > 0 else { y.update(repeating: 0, count: rows * n); return }
    for j in stride(from: 0, to: n, by: panelColumns) {
        for i in stride(from: 0, to: k, by: innerChunk) {
            rowProductBlocks(x + i, rows: rows, inner: min(innerChunk, k - i), b + i * n + j, columns: min(panelColumns, n - j),
                             into: y + j, RowStrides(x: k, b: n, y: n), adding: i > 0)
        }
    }
}

/// y [rows, n] = x [rows, k] · wᵀ for w [n, k] (Linear's weight, PyTorch's layout), as
/// `rowProducts` of x and wᵀ gives it, bit for bit: wᵀ goes `innerChunk` rows at a time
/// through `scratch` (innerChunk x n floats, `transposeScratchCount`), where the whole of wᵀ
/// (1.6 MB for 3136 x 128) went to memory and every block of rows read it back from there.
public func rowProductsTransposing(_ x: UnsafePointer<Float>, rows: Int, inner k: Int, _ w: UnsafePointer<Float>, columns n: Int,
                                   scratch: UnsafeMutablePointer<Float>, into y: UnsafeMutablePointer<Float>) {
    guard k > 0 else { y.update(repeating: 0, count: rows * n); return }
    for i in stride(from: 0, to: k, by: innerChunk) {
        let chunk = min(innerChunk, k - i)
        transpose(w + i, rows: n, columns: chunk, rowStride: k, into: scratch)
        rowProductBlocks(x + i, rows: rows, inner: chunk, scratch, columns: n, into: y, RowStrides(x: k, b: n, y: n), adding: i > 0)
    }
}

/// Floats of `rowProductsTransposing`'s scratch for an inner dimension k and n columns.
public func transposeScratchCount(inner k: Int, columns n: Int) -> Int { min(k, innerChunk) * n }

/// b's columns and rows `rowProducts` takes at a time. Linear's products at batch 64, 1
/// thread (`ddptrain microbench --only 3136`, runs alternating on a busy machine): forward
/// 0.91 to 0.97 ms with Wᵀ whole, 0.56 to 0.66 in chunks of 256 rows, 0.50 to 0.72 of 512,
/// 0.50 to 0.55 of 1024; backward (panels; its inner dimension is 64 or 128) 0.80 to 1.10 ms in panels
/// of 192 columns, 0.94 to 1.19 of 96, 1.13 to 1.46 by sgemm.
private let panelColumns = 192
private let innerChunk = 512

/// How far apart the rows of x, b and y are (in floats).
struct RowStrides {
    let x: Int, b: Int, y: Int
}

/// y = x · b (or y += x · b, `adding`) over rows x columns, k inner, row blocks as above.
@inline(__always)
private func rowProductBlocks(_ x: UnsafePointer<Float>, rows: Int, inner k: Int, _ b: UnsafePointer<Float>, columns n: Int,
                              into y: UnsafeMutablePointer<Float>, _ s: RowStrides, adding: Bool) {
    var r = 0
    #if DDPTRAIN_AVX512
    while r + 8 <= rows {
        let done = rowBlockOfEight(x + r * s.x, inner: k, b, columns: n, into: y + r * s.y, s, adding: adding)
        // The columns the block of 8 leaves (fewer than 32) as two blocks of 4.
        rowBlock(x + r * s.x, rowCount: 4, inner: k, b, columns: n, from: done, into: y + r * s.y, s, adding: adding)
        rowBlock(x + (r + 4) * s.x, rowCount: 4, inner: k, b, columns: n, from: done, into: y + (r + 4) * s.y, s, adding: adding)
        r += 8
    }
    #endif
    while r + 4 <= rows {
        rowBlock(x + r * s.x, rowCount: 4, inner: k, b, columns: n, into: y + r * s.y, s, adding: adding)
        r += 4
    }
    while r < rows {
        rowBlock(x + r * s.x, rowCount: 1, inner: k, b, columns: n, into: y + r * s.y, s, adding: adding)
        r += 1
    }
}

#if DDPTRAIN_AVX512
/// 8 rows of x times b's columns in blocks of 48 (24 zmm accumulators), then one of 32 (16):
/// each of b's lines read from L2 feeds 8 rows, where blocks of 4 rows read b twice as often.
/// Returns the columns done.
@inline(__always)
private func rowBlockOfEight(_ x: UnsafePointer<Float>, inner k: Int, _ b: UnsafePointer<Float>, columns n: Int,
                             into y: UnsafeMutablePointer<Float>, _ s: RowStrides, adding: Bool) -> Int {
    let x0 = x, x1 = x + s.x, x2 = x + 2 * s.x, x3 = x + 3 * s.x, x4 = x + 4 * s.x, x5 = x + 5 * s.x, x6 = x + 6 * s.x, x7 = x + 7 * s.x
    // The sums so far (`adding`) or none.
    @inline(__always) func start(_ p: UnsafeMutablePointer<Float>) -> SIMD16<Float> { adding ? load16(p) : SIMD16<Float>() }
    var j = 0
    while j + 48 <= n {
        let y0 = y + j, y1 = y0 + s.y, y2 = y1 + s.y, y3 = y2 + s.y, y4 = y3 + s.y, y5 = y4 + s.y, y6 = y5 + s.y, y7 = y6 + s.y
        var a00 = start(y0), a01 = start(y0 + 16), a02 = start(y0 + 32)
        var a10 = start(y1), a11 = start(y1 + 16), a12 = start(y1 + 32)
        var a20 = start(y2), a21 = start(y2 + 16), a22 = start(y2 + 32)
        var a30 = start(y3), a31 = start(y3 + 16), a32 = start(y3 + 32)
        var a40 = start(y4), a41 = start(y4 + 16), a42 = start(y4 + 32)
        var a50 = start(y5), a51 = start(y5 + 16), a52 = start(y5 + 32)
        var a60 = start(y6), a61 = start(y6 + 16), a62 = start(y6 + 32)
        var a70 = start(y7), a71 = start(y7 + 16), a72 = start(y7 + 32)
        var src = b + j
        for i in 0..<k {
            let v0 = load16(src), v1 = load16(src + 16), v2 = load16(src + 32)
            let w0 = SIMD16<Float>(repeating: x0[i])
            a00.addProduct(v0, w0); a01.addProduct(v1, w0); a02.addProduct(v2, w0)
            let w1 = SIMD16<Float>(repeating: x1[i])
            a10.addProduct(v0, w1); a11.addProduct(v1, w1); a12.addProduct(v2, w1)
            let w2 = SIMD16<Float>(repeating: x2[i])
            a20.addProduct(v0, w2); a21.addProduct(v1, w2); a22.addProduct(v2, w2)
            let w3 = SIMD16<Float>(repeating: x3[i])
            a30.addProduct(v0, w3); a31.addProduct(v1, w3); a32.addProduct(v2, w3)
            let w4 = SIMD16<Float>(repeating: x4[i])
            a40.addProduct(v0, w4); a41.addProduct(v1, w4); a42.addProduct(v2, w4)
            let w5 = SIMD16<Float>(repeating: x5[i])
            a50.addProduct(v0, w5); a51.addProduct(v1, w5); a52.addProduct(v2, w5)
            let w6 = SIMD16<Float>(repeating: x6[i])
            a60.addProduct(v0, w6); a61.addProduct(v1, w6); a62.addProduct(v2, w6)
            let w7 = SIMD16<Float>(repeating: x7[i])
            a70.addProduct(v0, w7); a71.addProduct(v1, w7); a72.addProduct(v2, w7)
            src += s.b
        }
        var d = y0
        @inline(__always) func put(_ p: SIMD16<Float>, _ q: SIMD16<Float>, _ r: SIMD16<Float>) {
            store16(p, d); store16(q, d + 16); store16(r, d + 32); d += s.y
        }
        put(a00, a01, a02); put(a10, a11, a12); put(a20, a21, a22); put(a30, a31, a32)
        put(a40, a41, a42); put(a50, a51, a52); put(a60, a61, a62); put(a70, a71, a72)
        j += 48
    }
    if j + 32 <= n {
        let y0 = y + j, y1 = y0 + s.y, y2 = y1 + s.y, y3 = y2 + s.y, y4 = y3 + s.y, y5 = y4 + s.y, y6 = y5 + s.y, y7 = y6 + s.y
        var a00 = start(y0), a01 = start(y0 + 16), a10 = start(y1), a11 = start(y1 + 16)
        var a20 = start(y2), a21 = start(y2 + 16), a30 = start(y3), a31 = start(y3 + 16)
        var a40 = start(y4), a41 = start(y4 + 16), a50 = start(y5), a51 = start(y5 + 16)
        var a60 = start(y6), a61 = start(y6 + 16), a70 = start(y7), a71 = start(y7 + 16)
        var src = b + j
        for i in 0..<k {
            let v0 = load16(src), v1 = load16(src + 16)
            let w0 = SIMD16<Float>(repeating: x0[i]), w1 = SIMD16<Float>(repeating: x1[i])
            a00.addProduct(v0, w0); a01.addProduct(v1, w0); a10.addProduct(v0, w1); a11.addProduct(v1, w1)
            let w2 = SIMD16<Float>(repeating: x2[i]), w3 = SIMD16<Float>(repeating: x3[i])
            a20.addProduct(v0, w2); a21.addProduct(v1, w2); a30.addProduct(v0, w3); a31.addProduct(v1, w3)
            let w4 = SIMD16<Float>(repeating: x4[i]), w5 = SIMD16<Float>(repeating: x5[i])
            a40.addProduct(v0, w4); a41.addProduct(v1, w4); a50.addProduct(v0, w5); a51.addProduct(v1, w5)
            let w6 = SIMD16<Float>(repeating: x6[i]), w7 = SIMD16<Float>(repeating: x7[i])
            a60.addProduct(v0, w6); a61.addProduct(v1, w6); a70.addProduct(v0, w7); a71.addProduct(v1, w7)
            src += s.b
        }
        var d = y0
        @inline(__always) func put(_ p: SIMD16<Float>, _ q: SIMD16<Float>) { store16(p, d); store16(q, d + 16); d += s.y }
        put(a00, a01); put(a10, a11); put(a20, a21); put(a30, a31); put(a40, a41); put(a50, a51); put(a60, a61); put(a70, a71)
        j += 32
    }
    return j
}
#endif

/// `rowCount` (4 or 1) rows of x times b's columns from `start`.
@inline(__always)
private func rowBlock(_ x: UnsafePointer<Float>, rowCount: Int, inner k: Int, _ b: UnsafePointer<Float>, columns n: Int,
                      from start: Int = 0, into y: UnsafeMutablePointer<Float>, _ s: RowStrides, adding: Bool) {
    // A single row reads its x four times over, as row 0 of a block of 4: one kernel.
    let four = rowCount == 4
    let x0 = x, x1 = four ? x + s.x : x, x2 = four ? x + 2 * s.x : x, x3 = four ? x + 3 * s.x : x
    let y0 = y, y1 = y + s.y, y2 = y + 2 * s.y, y3 = y + 3 * s.y
    // Row r's sums so far (`adding`) or none; rows past `rowCount` are never stored.
    @inline(__always) func start16(_ p: UnsafeMutablePointer<Float>, _ row: Int) -> SIMD16<Float> {
        adding && row < rowCount ? load16(p) : SIMD16<Float>()
    }
    @inline(__always) func start8(_ p: UnsafeMutablePointer<Float>, _ row: Int) -> SIMD8<Float> {
        adding && row < rowCount ? load8(p) : SIMD8<Float>()
    }
    var j = start
    #if DDPTRAIN_AVX512
    while j + 48 <= n {
        var a00 = start16(y0 + j, 0), a01 = start16(y0 + j + 16, 0), a02 = start16(y0 + j + 32, 0)
        var a10 = start16(y1 + j, 1), a11 = start16(y1 + j + 16, 1), a12 = start16(y1 + j + 32, 1)
        var a20 = start16(y2 + j, 2), a21 = start16(y2 + j + 16, 2), a22 = start16(y2 + j + 32, 2)
        var a30 = start16(y3 + j, 3), a31 = start16(y3 + j + 16, 3), a32 = start16(y3 + j + 32, 3)
        var src = b + j
        for i in 0..<k {
            let v0 = load16(src), v1 = load16(src + 16), v2 = load16(src + 32)
            let w0 = SIMD16<Float>(repeating: x0[i])
            a00.addProduct(v0, w0); a01.addProduct(v1, w0); a02.addProduct(v2, w0)
            let w1 = SIMD16<Float>(repeating: x1[i])
            a10.addProduct(v0, w1); a11.addProduct(v1, w1); a12.addProduct(v2, w1)
            let w2 = SIMD16<Float>(repeating: x2[i])
            a20.addProduct(v0, w2); a21.addProduct(v1, w2); a22.addProduct(v2, w2)
            let w3 = SIMD16<Float>(repeating: x3[i])
            a30.addProduct(v0, w3); a31.addProduct(v1, w3); a32.addProduct(v2, w3)
            src += s.b
        }
        store16(a00, y0 + j); store16(a01, y0 + j + 16); store16(a02, y0 + j + 32)
        if four {
            store16(a10, y1 + j); store16(a11, y1 + j + 16); store16(a12, y1 + j + 32)
            store16(a20, y2 + j); store16(a21, y2 + j + 16); store16(a22, y2 + j + 32)
            store16(a30, y3 + j); store16(a31, y3 + j + 16); store16(a32, y3 + j + 32)
        }
        j += 48
    }
    if j + 32 <= n {
        var a00 = start16(y0 + j, 0), a01 = start16(y0 + j + 16, 0), a10 = start16(y1 + j, 1), a11 = start16(y1 + j + 16, 1)
        var a20 = start16(y2 + j, 2), a21 = start16(y2 + j + 16, 2), a30 = start16(y3 + j, 3), a31 = start16(y3 + j + 16, 3)
        var src = b + j
        for i in 0..<k {
            let v0 = load16(src), v1 = load16(src + 16)
            let w0 = SIMD16<Float>(repeating: x0[i]), w1 = SIMD16<Float>(repeating: x1[i])
            a00.addProduct(v0, w0); a01.addProduct(v1, w0); a10.addProduct(v0, w1); a11.addProduct(v1, w1)
            let w2 = SIMD16<Float>(repeating: x2[i]), w3 = SIMD16<Float>(repeating: x3[i])
            a20.addProduct(v0, w2); a21.addProduct(v1, w2); a30.addProduct(v0, w3); a31.addProduct(v1, w3)
            src += s.b
        }
        store16(a00, y0 + j); store16(a01, y0 + j + 16)
        if four {
            store16(a10, y1 + j); store16(a11, y1 + j + 16)
            store16(a20, y2 + j); store16(a21, y2 + j + 16)
            store16(a30, y3 + j); store16(a31, y3 + j + 16)
        }
        j += 32
    }
    #endif
    while j + 24 <= n {
        var a00 = start8(y0 + j, 0), a01 = start8(y0 + j + 8, 0), a02 = start8(y0 + j + 16, 0)
        var a10 = start8(y1 + j, 1), a11 = start8(y1 + j + 8, 1), a12 = start8(y1 + j + 16, 1)
        var a20 = start8(y2 + j, 2), a21 = start8(y2 + j + 8, 2), a22 = start8(y2 + j + 16, 2)
        var a30 = start8(y3 + j, 3), a31 = start8(y3 + j + 8, 3), a32 = start8(y3 + j + 16, 3)
        var src = b + j
        for i in 0..<k {
            let v0 = load8(src), v1 = load8(src + 8), v2 = load8(src + 16)
            let w0 = SIMD8<Float>(repeating: x0[i])
            a00.addProduct(v0, w0); a01.addProduct(v1, w0); a02.addProduct(v2, w0)
            let w1 = SIMD8<Float>(repeating: x1[i])
            a10.addProduct(v0, w1); a11.addProduct(v1, w1); a12.addProduct(v2, w1)
            let w2 = SIMD8<Float>(repeating: x2[i])
            a20.addProduct(v0, w2); a21.addProduct(v1, w2); a22.addProduct(v2, w2)
            let w3 = SIMD8<Float>(repeating: x3[i])
            a30.addProduct(v0, w3); a31.addProduct(v1, w3); a32.addProduct(v2, w3)
            src += s.b
        }
        store8(a00, y0 + j); store8(a01, y0 + j + 8); store8(a02, y0 + j + 16)
        if four {
            store8(a10, y1 + j); store8(a11, y1 + j + 8); store8(a12, y1 + j + 16)
            store8(a20, y2 + j); store8(a21, y2 + j + 8); store8(a22, y2 + j + 16)
            store8(a30, y3 + j); store8(a31, y3 + j + 8); store8(a32, y3 + j + 16)
        }
        j += 24
    }
    while j + 8 <= n {
        var a0 = start8(y0 + j, 0), a1 = start8(y1 + j, 1), a2 = start8(y2 + j, 2), a3 = start8(y3 + j, 3)
        var src = b + j
        for i in 0..<k {
            let v = load8(src)
            a0.addProduct(v, SIMD8<Float>(repeating: x0[i])); a1.addProduct(v, SIMD8<Float>(repeating: x1[i]))
            a2.addProduct(v, SIMD8<Float>(repeating: x2[i])); a3.addProduct(v, SIMD8<Float>(repeating: x3[i]))
            src += s.b
        }
        store8(a0, y0 + j)
        if four { store8(a1, y1 + j); store8(a2, y2 + j); store8(a3, y3 + j) }
        j += 8
    }
    while j < n {
        for row in 0..<rowCount {
            let xr = x + row * s.x, out = y + row * s.y + j
            var acc: Float = adding ? out.pointee : 0
            for i in 0..<k { acc = acc.addingProduct(xr[i], b[i * s.b + j]) }
            out.pointee = acc
        }
        j += 1
    }
}

/// b [columns, rows] = aᵀ for a [rows, columns]: 8 x 8 blocks in registers where whole
/// blocks fit, 16 x 16 tiles of single floats along the edges (a row-at-a-time loop writes
/// each float to another line). A copy: every float keeps its bits. Blocks go down a's
/// columns, so that b is written row after row and a's lines are read again from L1 (across
/// a's rows first, b's rows took 25% longer: 8 half-written lines of b a block).
/// a's rows are `rowStride` floats apart (`columns` if nil); b's are `rows` apart.
public func transpose(_ a: UnsafePointer<Float>, rows: Int, columns: Int, rowStride: Int? = nil, into b: UnsafeMutablePointer<Float>) {
    let fullRows = rows / 8 * 8, fullColumns = columns / 8 * 8, sa = rowStride ?? columns
    for r0 in stride(from: 0, to: fullRows, by: 8) {
        for c0 in stride(from: 0, to: fullColumns, by: 8) {
            transpose8x8(a + r0 * sa + c0, stride: sa, into: b + c0 * rows + r0, stride: rows)
        }
    }
    transposeTiles(a, rows: rows, rowStride: sa, rowRange: 0..<fullRows, columnRange: fullColumns..<columns, into: b)
    transposeTiles(a, rows: rows, rowStride: sa, rowRange: fullRows..<rows, columnRange: 0..<columns, into: b)
}

/// One 8 x 8 block: three perfect unshuffles of its 64 floats (evens of each pair of
/// vectors, then odds) move float 8r + c to 8c + r, the transpose.
@inline(__always)
private func transpose8x8(_ a: UnsafePointer<Float>, stride sa: Int, into b: UnsafeMutablePointer<Float>, stride sb: Int) {
    var v = (load8(a), load8(a + sa), load8(a + 2 * sa), load8(a + 3 * sa),
             load8(a + 4 * sa), load8(a + 5 * sa), load8(a + 6 * sa), load8(a + 7 * sa))
    @inline(__always) func unshuffle(_ v: inout (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>,
                                                 SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)) {
        let p0 = SIMD16(lowHalf: v.0, highHalf: v.1), p1 = SIMD16(lowHalf: v.2, highHalf: v.3)
        let p2 = SIMD16(lowHalf: v.4, highHalf: v.5), p3 = SIMD16(lowHalf: v.6, highHalf: v.7)
        v = (p0.evenHalf, p1.evenHalf, p2.evenHalf, p3.evenHalf, p0.oddHalf, p1.oddHalf, p2.oddHalf, p3.oddHalf)
    }
    unshuffle(&v); unshuffle(&v); unshuffle(&v)
    store8(v.0, b); store8(v.1, b + sb); store8(v.2, b + 2 * sb); store8(v.3, b + 3 * sb)
    store8(v.4, b + 4 * sb); store8(v.5, b + 5 * sb); store8(v.6, b + 6 * sb); store8(v.7, b + 7 * sb)
}

/// The transpose of a's part rowRange x columnRange, in 16 x 16 tiles.
private func transposeTiles(_ a: UnsafePointer<Float>, rows: Int, rowStride: Int, rowRange: Range<Int>, columnRange: Range<Int>,
                            into b: UnsafeMutablePointer<Float>) {
    let tile = 16
    for r0 in stride(from: rowRange.lowerBound, to: rowRange.upperBound, by: tile) {
        let r1 = min(r0 + tile, rowRange.upperBound)
        for c0 in stride(from: columnRange.lowerBound, to: columnRange.upperBound, by: tile) {
            let c1 = min(c0 + tile, columnRange.upperBound)
            for r in r0..<r1 {
                let src = a + r * rowStride
                for c in c0..<c1 { b[c * rows + r] = src[c] }
            }
        }
    }
}
