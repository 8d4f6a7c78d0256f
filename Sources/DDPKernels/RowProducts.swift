/// y [rows, n] = x [rows, k] · b [k, n], every element one FMA chain over k in order,
/// whatever the number of rows, the block it falls in or the vector width: a row's result
/// depends on that row alone, bit for bit. Linear's forward runs on it, so that a sample's
/// outputs do not depend on the samples beside it. OpenBLAS does not promise that: which
/// kernel it runs, and so each element's rounding, depends on the matrix sizes (its
/// SkylakeX and Prescott kernels give a sample alone other bits than in a batch of 4).
///
/// Blocks of 4 rows x 24 columns (x 48 with AVX-512, 16 lanes wide) keep 12 vector
/// accumulators; b's rows are read as vectors, x's elements broadcast. With AVX-512, 32
/// columns left (Linear's 128 outputs are 2 x 48 + 32) go as 4 x 32 (8 accumulators), where
/// 4 x 24 and 4 x 8 ymm blocks ran at half and a quarter of the rate; and rows go 8 at a
/// time first (`rowBlockOfEight`). Columns past the last multiple of 8 run one scalar FMA
/// chain each, in the same order.
public func rowProducts(_ x: UnsafePointer<Float>, rows: Int, inner k: Int, _ b: UnsafePointer<Float>, columns n: Int,
                        into y: UnsafeMutablePointer<Float>) {
    var r = 0
    #if DDPTRAIN_AVX512
    while r + 8 <= rows {
        let done = rowBlockOfEight(x + r * k, inner: k, b, columns: n, into: y + r * n)
        // The columns the block of 8 leaves (fewer than 32) as two blocks of 4.
        rowBlock(x + r * k, rowCount: 4, inner: k, b, columns: n, from: done, into: y + r * n)
        rowBlock(x + (r + 4) * k, rowCount: 4, inner: k, b, columns: n, from: done, into: y + (r + 4) * n)
        r += 8
    }
    #endif
    while r + 4 <= rows {
        rowBlock(x + r * k, rowCount: 4, inner: k, b, columns: n, into: y + r * n)
        r += 4
    }
    while r < rows {
        rowBlock(x + r * k, rowCount: 1, inner: k, b, columns: n, into: y + r * n)
        r += 1
    }
}

#if DDPTRAIN_AVX512
/// 8 rows of x times b's columns in blocks of 48 (24 zmm accumulators), then one of 32 (16):
/// each of b's lines read from L2 feeds 8 rows, where blocks of 4 rows read b twice as often
/// (Linear's Wᵀ, 3136 x 128, is 1.6 MB). Returns the columns done.
@inline(__always)
private func rowBlockOfEight(_ x: UnsafePointer<Float>, inner k: Int, _ b: UnsafePointer<Float>, columns n: Int,
                             into y: UnsafeMutablePointer<Float>) -> Int {
    let x0 = x, x1 = x + k, x2 = x + 2 * k, x3 = x + 3 * k, x4 = x + 4 * k, x5 = x + 5 * k, x6 = x + 6 * k, x7 = x + 7 * k
    var j = 0
    while j + 48 <= n {
        var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a02 = SIMD16<Float>()
        var a10 = SIMD16<Float>(), a11 = SIMD16<Float>(), a12 = SIMD16<Float>()
        var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a22 = SIMD16<Float>()
        var a30 = SIMD16<Float>(), a31 = SIMD16<Float>(), a32 = SIMD16<Float>()
        var a40 = SIMD16<Float>(), a41 = SIMD16<Float>(), a42 = SIMD16<Float>()
        var a50 = SIMD16<Float>(), a51 = SIMD16<Float>(), a52 = SIMD16<Float>()
        var a60 = SIMD16<Float>(), a61 = SIMD16<Float>(), a62 = SIMD16<Float>()
        var a70 = SIMD16<Float>(), a71 = SIMD16<Float>(), a72 = SIMD16<Float>()
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
            src += n
        }
        var d = y + j
        @inline(__always) func put(_ p: SIMD16<Float>, _ q: SIMD16<Float>, _ r: SIMD16<Float>) {
            store16(p, d); store16(q, d + 16); store16(r, d + 32); d += n
        }
        put(a00, a01, a02); put(a10, a11, a12); put(a20, a21, a22); put(a30, a31, a32)
        put(a40, a41, a42); put(a50, a51, a52); put(a60, a61, a62); put(a70, a71, a72)
        j += 48
    }
    if j + 32 <= n {
        var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a10 = SIMD16<Float>(), a11 = SIMD16<Float>()
        var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a30 = SIMD16<Float>(), a31 = SIMD16<Float>()
        var a40 = SIMD16<Float>(), a41 = SIMD16<Float>(), a50 = SIMD16<Float>(), a51 = SIMD16<Float>()
        var a60 = SIMD16<Float>(), a61 = SIMD16<Float>(), a70 = SIMD16<Float>(), a71 = SIMD16<Float>()
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
            src += n
        }
        var d = y + j
        @inline(__always) func put(_ p: SIMD16<Float>, _ q: SIMD16<Float>) { store16(p, d); store16(q, d + 16); d += n }
        put(a00, a01); put(a10, a11); put(a20, a21); put(a30, a31); put(a40, a41); put(a50, a51); put(a60, a61); put(a70, a71)
        j += 32
    }
    return j
}
#endif

/// `rowCount` (4 or 1) rows of x times b's columns from `start`.
@inline(__always)
private func rowBlock(_ x: UnsafePointer<Float>, rowCount: Int, inner k: Int, _ b: UnsafePointer<Float>, columns n: Int,
                      from start: Int = 0, into y: UnsafeMutablePointer<Float>) {
    // A single row reads its x four times over, as row 0 of a block of 4: one kernel.
    let x0 = x, x1 = rowCount == 4 ? x + k : x, x2 = rowCount == 4 ? x + 2 * k : x, x3 = rowCount == 4 ? x + 3 * k : x
    var j = start
    #if DDPTRAIN_AVX512
    while j + 48 <= n {
        var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a02 = SIMD16<Float>()
        var a10 = SIMD16<Float>(), a11 = SIMD16<Float>(), a12 = SIMD16<Float>()
        var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a22 = SIMD16<Float>()
        var a30 = SIMD16<Float>(), a31 = SIMD16<Float>(), a32 = SIMD16<Float>()
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
            src += n
        }
        let d = y + j
        store16(a00, d); store16(a01, d + 16); store16(a02, d + 32)
        if rowCount == 4 {
            store16(a10, d + n); store16(a11, d + n + 16); store16(a12, d + n + 32)
            store16(a20, d + 2 * n); store16(a21, d + 2 * n + 16); store16(a22, d + 2 * n + 32)
            store16(a30, d + 3 * n); store16(a31, d + 3 * n + 16); store16(a32, d + 3 * n + 32)
        }
        j += 48
    }
    if j + 32 <= n {
        var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a10 = SIMD16<Float>(), a11 = SIMD16<Float>()
        var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a30 = SIMD16<Float>(), a31 = SIMD16<Float>()
        var src = b + j
        for i in 0..<k {
            let v0 = load16(src), v1 = load16(src + 16)
            let w0 = SIMD16<Float>(repeating: x0[i]), w1 = SIMD16<Float>(repeating: x1[i])
            a00.addProduct(v0, w0); a01.addProduct(v1, w0); a10.addProduct(v0, w1); a11.addProduct(v1, w1)
            let w2 = SIMD16<Float>(repeating: x2[i]), w3 = SIMD16<Float>(repeating: x3[i])
            a20.addProduct(v0, w2); a21.addProduct(v1, w2); a30.addProduct(v0, w3); a31.addProduct(v1, w3)
            src += n
        }
        let d = y + j
        store16(a00, d); store16(a01, d + 16)
        if rowCount == 4 {
            store16(a10, d + n); store16(a11, d + n + 16)
            store16(a20, d + 2 * n); store16(a21, d + 2 * n + 16)
            store16(a30, d + 3 * n); store16(a31, d + 3 * n + 16)
        }
        j += 32
    }
    #endif
    while j + 24 <= n {
        var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a02 = SIMD8<Float>()
        var a10 = SIMD8<Float>(), a11 = SIMD8<Float>(), a12 = SIMD8<Float>()
        var a20 = SIMD8<Float>(), a21 = SIMD8<Float>(), a22 = SIMD8<Float>()
        var a30 = SIMD8<Float>(), a31 = SIMD8<Float>(), a32 = SIMD8<Float>()
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
            src += n
        }
        let d = y + j
        store8(a00, d); store8(a01, d + 8); store8(a02, d + 16)
        if rowCount == 4 {
            store8(a10, d + n); store8(a11, d + n + 8); store8(a12, d + n + 16)
            store8(a20, d + 2 * n); store8(a21, d + 2 * n + 8); store8(a22, d + 2 * n + 16)
            store8(a30, d + 3 * n); store8(a31, d + 3 * n + 8); store8(a32, d + 3 * n + 16)
        }
        j += 24
    }
    while j + 8 <= n {
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var src = b + j
        for i in 0..<k {
            let v = load8(src)
            a0.addProduct(v, SIMD8<Float>(repeating: x0[i])); a1.addProduct(v, SIMD8<Float>(repeating: x1[i]))
            a2.addProduct(v, SIMD8<Float>(repeating: x2[i])); a3.addProduct(v, SIMD8<Float>(repeating: x3[i]))
            src += n
        }
        store8(a0, y + j)
        if rowCount == 4 { store8(a1, y + n + j); store8(a2, y + 2 * n + j); store8(a3, y + 3 * n + j) }
        j += 8
    }
    while j < n {
        for row in 0..<rowCount {
            let xr = x + row * k
            var acc: Float = 0
            for i in 0..<k { acc = acc.addingProduct(xr[i], b[i * n + j]) }
            y[row * n + j] = acc
        }
        j += 1
    }
}

/// b [columns, rows] = aᵀ for a [rows, columns]: 8 x 8 blocks in registers where whole
/// blocks fit, 16 x 16 tiles of single floats along the edges (a row-at-a-time loop writes
/// each float to another line). A copy: every float keeps its bits. Blocks go down a's
/// columns, so that b is written row after row and a's lines are read again from L1 (across
/// a's rows first, b's rows took 25% longer: 8 half-written lines of b a block).
public func transpose(_ a: UnsafePointer<Float>, rows: Int, columns: Int, into b: UnsafeMutablePointer<Float>) {
    let fullRows = rows / 8 * 8, fullColumns = columns / 8 * 8
    for c0 in stride(from: 0, to: fullColumns, by: 8) {
        for r0 in stride(from: 0, to: fullRows, by: 8) {
            transpose8x8(a + r0 * columns + c0, stride: columns, into: b + c0 * rows + r0, stride: rows)
        }
    }
    transposeTiles(a, rows: rows, columns: columns, rowRange: 0..<fullRows, columnRange: fullColumns..<columns, into: b)
    transposeTiles(a, rows: rows, columns: columns, rowRange: fullRows..<rows, columnRange: 0..<columns, into: b)
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
private func transposeTiles(_ a: UnsafePointer<Float>, rows: Int, columns: Int, rowRange: Range<Int>, columnRange: Range<Int>,
                            into b: UnsafeMutablePointer<Float>) {
    let tile = 16
    for r0 in stride(from: rowRange.lowerBound, to: rowRange.upperBound, by: tile) {
        let r1 = min(r0 + tile, rowRange.upperBound)
        for c0 in stride(from: columnRange.lowerBound, to: columnRange.upperBound, by: tile) {
            let c1 = min(c0 + tile, columnRange.upperBound)
            for r in r0..<r1 {
                let src = a + r * columns
                for c in c0..<c1 { b[c * rows + r] = src[c] }
            }
        }
    }
}
