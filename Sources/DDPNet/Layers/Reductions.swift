import CPrefetch
import DDPKernels

// Sums over contiguous Float32 runs. A plain `sum += x[i]` loop is one long dependency
// chain the compiler may not reorder (floating-point addition is not associative), so it
// runs at one add per FP-latency; independent vector accumulators run several times faster.

/// Σ over `rows` rows, `stride` floats apart, of each row's Σ x[i] (accumulated in Float64),
/// added in row order.
@inline(__always)
func rowSums(_ x: UnsafePointer<Float>, rows: Int, stride: Int, count: Int) -> Double {
    rowTotals(x, rows: rows, stride: stride, count: count, RowSum())
}

/// Σ over `rows` rows, `stride` floats apart, of each row's Σ (x[i] - mean)² (accumulated in
/// Float64), added in row order.
@inline(__always)
func rowSumsOfSquaredDeviations(_ x: UnsafePointer<Float>, rows: Int, stride: Int, count: Int, mean: Double) -> Double {
    rowTotals(x, rows: rows, stride: stride, count: count, RowSquaredDeviations(mean: mean))
}

/// One row's running sum, 8 elements a step: element i goes to lane i mod 8 of two
/// SIMD4<Double> accumulators; `total` adds the lanes, then the tail in order.
private protocol RowAccumulator {
    mutating func add8(_ x: UnsafePointer<Float>)
    func total(_ x: UnsafePointer<Float>, from start: Int, count: Int) -> Double
}

/// Each accumulator lane is a chain of dependent adds, so one row at a time runs at the add
/// latency; four rows side by side are independent chains. Each row takes the same steps as
/// it would alone, and the rows' totals are added in row order: the same bits.
@inline(__always)
private func rowTotals<A: RowAccumulator>(_ x: UnsafePointer<Float>, rows: Int, stride: Int, count: Int, _ start: A) -> Double {
    var total = 0.0, r = 0
    while r + 4 <= rows {
        let x0 = x + r * stride, x1 = x0 + stride, x2 = x1 + stride, x3 = x2 + stride
        var a0 = start, a1 = start, a2 = start, a3 = start
        var i = 0
        while i + 8 <= count {
            // 512 bytes ahead on each row (CPrefetch): four short rows at once.
            ddptrain_prefetch(x0 + i + 128); ddptrain_prefetch(x1 + i + 128)
            ddptrain_prefetch(x2 + i + 128); ddptrain_prefetch(x3 + i + 128)
            a0.add8(x0 + i); a1.add8(x1 + i); a2.add8(x2 + i); a3.add8(x3 + i)
            i += 8
        }
        total += a0.total(x0, from: i, count: count)
        total += a1.total(x1, from: i, count: count)
        total += a2.total(x2, from: i, count: count)
        total += a3.total(x3, from: i, count: count)
        r += 4
    }
    while r < rows {
        let x0 = x + r * stride
        var a0 = start, i = 0
        while i + 8 <= count { a0.add8(x0 + i); i += 8 }
        total += a0.total(x0, from: i, count: count)
        r += 1
    }
    return total
}

@inline(__always)
private func load8(_ x: UnsafePointer<Float>) -> SIMD8<Float> { UnsafeRawPointer(x).loadUnaligned(as: SIMD8<Float>.self) }

/// Σ x[i].
private struct RowSum: RowAccumulator {
    var a = SIMD4<Double>(), b = SIMD4<Double>()

    @inline(__always) mutating func add8(_ x: UnsafePointer<Float>) {
        let v = load8(x)
        a += SIMD4<Double>(v.lowHalf)
        b += SIMD4<Double>(v.highHalf)
    }

    @inline(__always) func total(_ x: UnsafePointer<Float>, from start: Int, count: Int) -> Double {
        var t = (a + b).sum()
        for i in start..<count { t += Double(x[i]) }
        return t
    }
}

/// Σ (x[i] - mean)².
private struct RowSquaredDeviations: RowAccumulator {
    var a = SIMD4<Double>(), b = SIMD4<Double>()
    let mean: Double

    init(mean: Double) { self.mean = mean }

    @inline(__always) mutating func add8(_ x: UnsafePointer<Float>) {
        let v = load8(x), m = SIMD4<Double>(repeating: mean)
        let u = SIMD4<Double>(v.lowHalf) - m, w = SIMD4<Double>(v.highHalf) - m
        a += u * u
        b += w * w
    }

    @inline(__always) func total(_ x: UnsafePointer<Float>, from start: Int, count: Int) -> Double {
        var t = (a + b).sum()
        for i in start..<count { let d = Double(x[i]) - mean; t += d * d }
        return t
    }
}

/// Per row r of `rows` rows of `count` floats, `stride` apart in g and x:
/// `sumG[r] += Σ g[i]` and `sumGX[r] += Σ g[i]·(x[i] - mean[r])`, accumulated in Float64,
/// 8 elements a step: element i goes to lane i mod 8 of each sum, the lanes are added, then
/// the tail in order. With `masked`, g[i] counts only where the pre-ReLU output
/// z = Float(x[i] - mean[r])·scale[r] + shift[r], computed as the forward pass computed it,
/// was positive (a batch norm whose output went through a ReLU).
///
/// One row's chains run at the add latency, so two rows go side by side; each takes the
/// steps it would take alone: the same bits.
@inline(__always)
func addGradientSums(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, rows: Int, stride: Int, count: Int,
                     mean: UnsafePointer<Double>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, masked: Bool,
                     sumG: UnsafeMutablePointer<Double>, sumGX: UnsafeMutablePointer<Double>) {
    @inline(__always) func step(_ gp: UnsafePointer<Float>, _ xp: UnsafePointer<Float>, _ m: SIMD8<Double>,
                                _ k: SIMD8<Float>, _ b: SIMD8<Float>, _ sg: inout SIMD8<Double>, _ sgx: inout SIMD8<Double>) {
        let centred = widen(UnsafeRawPointer(xp).loadUnaligned(as: SIMD8<Float>.self)) - m
        var gf = UnsafeRawPointer(gp).loadUnaligned(as: SIMD8<Float>.self)
        if masked { gf = gf.replacing(with: 0, where: .!(narrow(centred) * k + b .> 0)) }
        let gv = widen(gf)
        sg += gv
        sgx += gv * centred
    }
    @inline(__always) func finish(_ r: Int, _ from: Int, _ sg: SIMD8<Double>, _ sgx: SIMD8<Double>) {
        var totalG = (sg.lowHalf + sg.highHalf).sum(), totalGX = (sgx.lowHalf + sgx.highHalf).sum()
        let gp = g + r * stride, xp = x + r * stride, m = mean[r], k = scale[r], b = shift[r]
        for i in from..<count {
            let centred = Double(xp[i]) - m
            let gi = !masked || Float(centred) * k + b > 0 ? Double(gp[i]) : 0
            totalG += gi
            totalGX += gi * centred
        }
        sumG[r] += totalG
        sumGX[r] += totalGX
    }
    var r = 0
    while r + 2 <= rows {
        let g0 = g + r * stride, x0 = x + r * stride, g1 = g0 + stride, x1 = x0 + stride
        let m0 = SIMD8<Double>(repeating: mean[r]), m1 = SIMD8<Double>(repeating: mean[r + 1])
        let k0 = SIMD8<Float>(repeating: scale[r]), k1 = SIMD8<Float>(repeating: scale[r + 1])
        let b0 = SIMD8<Float>(repeating: shift[r]), b1 = SIMD8<Float>(repeating: shift[r + 1])
        var sg0 = SIMD8<Double>(), sgx0 = SIMD8<Double>(), sg1 = SIMD8<Double>(), sgx1 = SIMD8<Double>()
        var i = 0
        while i + 8 <= count {
            // 512 bytes ahead on each of the four streams (CPrefetch).
            ddptrain_prefetch(x0 + i + 128); ddptrain_prefetch(g0 + i + 128)
            ddptrain_prefetch(x1 + i + 128); ddptrain_prefetch(g1 + i + 128)
            step(g0 + i, x0 + i, m0, k0, b0, &sg0, &sgx0)
            step(g1 + i, x1 + i, m1, k1, b1, &sg1, &sgx1)
            i += 8
        }
        finish(r, i, sg0, sgx0)
        finish(r + 1, i, sg1, sgx1)
        r += 2
    }
    if r < rows {
        let g0 = g + r * stride, x0 = x + r * stride
        let m0 = SIMD8<Double>(repeating: mean[r]), k0 = SIMD8<Float>(repeating: scale[r]), b0 = SIMD8<Float>(repeating: shift[r])
        var sg0 = SIMD8<Double>(), sgx0 = SIMD8<Double>()
        var i = 0
        while i + 8 <= count { step(g0 + i, x0 + i, m0, k0, b0, &sg0, &sgx0); i += 8 }
        finish(r, i, sg0, sgx0)
    }
}

/// Float32 to Float64 lane by lane (by halves: the SIMD8 conversion is not always inlined).
@inline(__always)
func widen(_ v: SIMD8<Float>) -> SIMD8<Double> {
    SIMD8<Double>(lowHalf: SIMD4<Double>(v.lowHalf), highHalf: SIMD4<Double>(v.highHalf))
}

/// Float64 to Float32 lane by lane, rounding to nearest.
@inline(__always)
func narrow(_ v: SIMD8<Double>) -> SIMD8<Float> {
    SIMD8<Float>(lowHalf: SIMD4<Float>(v.lowHalf), highHalf: SIMD4<Float>(v.highHalf))
}

/// dx[i] = k·(g[i] - a - x̂[i]·b) with x̂ = Float(x - mean)·invStd, where g is the incoming
/// gradient masked by a fused ReLU as in `reluMaskedGradientSums`.
@inline(__always)
func reluMaskedInputGradient(_ dx: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
                             count: Int, mean: Double, scale: Float, shift: Float,
                             k: Float, a: Float, b: Float, invStd: Float) {
    let m = SIMD8<Double>(repeating: mean)
    let ks = SIMD8<Float>(repeating: scale), sh = SIMD8<Float>(repeating: shift)
    let kv = SIMD8<Float>(repeating: k), av = SIMD8<Float>(repeating: a), bv = SIMD8<Float>(repeating: b)
    let inv = SIMD8<Float>(repeating: invStd)
    var i = 0
    while i + 8 <= count {
        ddptrain_prefetch(x + i + 128); ddptrain_prefetch(g + i + 128)  // CPrefetch
        let centred = SIMD8<Float>(SIMD8<Double>(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)) - m)
        let gf = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD8<Float>.self)
        let gm = gf.replacing(with: 0, where: .!(centred * ks + sh .> 0))
        let d = kv * (gm - av - centred * inv * bv)
        UnsafeMutableRawPointer(dx + i).storeBytes(of: d, as: SIMD8<Float>.self)
        i += 8
    }
    while i < count {
        let centred = Float(Double(x[i]) - mean)
        let gi = centred * scale + shift > 0 ? g[i] : 0
        dx[i] = k * (gi - a - centred * invStd * b)
        i += 1
    }
}

/// `reluMaskedInputGradient` (masked) or dx[i] = k·(g[i] - a - x̂[i]·b) over `rows` rows of
/// `width` (8 or more) floats, g and x contiguous, dx's rows `rowStride` apart: 8 at a time, each row's
/// last 8 overlapping the ones before (the same values written twice) rather than a scalar
/// tail: batch norm's rows of 28 or 14 into a convolution's padded output gradient, whose
/// gaps it must not write. The same operations on each element as those loops: the same bits.
@inline(__always)
func inputGradientRows(_ dx: UnsafeMutablePointer<Float>, rowStride: Int, _ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
                       rows: Int, width: Int, masked: Bool, mean: Double, scale: Float, shift: Float,
                       k: Float, a: Float, b: Float, invStd: Float) {
    precondition(width >= 8, "inputGradientRows takes rows of 8 or more")
    let m = SIMD8<Double>(repeating: mean)
    let ks = SIMD8<Float>(repeating: scale), sh = SIMD8<Float>(repeating: shift)
    let kv = SIMD8<Float>(repeating: k), av = SIMD8<Float>(repeating: a), bv = SIMD8<Float>(repeating: b)
    let inv = SIMD8<Float>(repeating: invStd)
    var x = x, g = g, dx = dx
    @inline(__always) func eight(_ i: Int) {
        let centred = SIMD8<Float>(SIMD8<Double>(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)) - m)
        var gv = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD8<Float>.self)
        if masked { gv = gv.replacing(with: 0, where: .!(centred * ks + sh .> 0)) }
        UnsafeMutableRawPointer(dx + i).storeBytes(of: kv * (gv - av - centred * inv * bv), as: SIMD8<Float>.self)
    }
    for _ in 0..<rows {
        ddptrain_prefetch(x + 256); ddptrain_prefetch(g + 256)  // CPrefetch: 1 KB ahead
        var i = 0
        while i + 8 < width { eight(i); i += 8 }
        eight(width - 8)
        x += width; g += width; dx += rowStride
    }
}

/// y[i] = max(Float(x[i] - mean) · scale + shift, 0) over a row of `count` floats (ReLU's own
/// max, which keeps NaN), 8 at a time, the last 8 overlapping the ones before (the same
/// values written twice) where the compiler's loop ran the rest one at a time: batch norm's
/// rows of 28 and 14 into a convolution's prepared planes, whose padding it must not write.
@inline(__always)
func normalizedReLURow(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int,
                       mean: Double, scale: Float, shift: Float) {
    guard count >= 8 else {
        for i in 0..<count { y[i] = max(Float(Double(x[i]) - mean) * scale + shift, 0) }
        return
    }
    let m = SIMD8<Double>(repeating: mean), k = SIMD8<Float>(repeating: scale), b = SIMD8<Float>(repeating: shift)
    @inline(__always) func eight(_ i: Int) {
        let z = SIMD8<Float>(SIMD8<Double>(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)) - m) * k + b
        UnsafeMutableRawPointer(y + i).storeBytes(of: z.replacing(with: 0, where: z .<= 0), as: SIMD8<Float>.self)
    }
    var i = 0
    while i + 8 < count { eight(i); i += 8 }
    eight(count - 8)
}

/// Σ x[i] in Float32 (for gradients, where Float32 is what the result is stored in).
@inline(__always)
func sumFloat(_ x: UnsafePointer<Float>, count: Int) -> Float {
    var a = SIMD8<Float>(), b = SIMD8<Float>()
    var i = 0
    while i + 16 <= count {
        a += UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
        b += UnsafeRawPointer(x + i + 8).loadUnaligned(as: SIMD8<Float>.self)
        i += 16
    }
    var total = (a + b).sum()
    while i < count { total += x[i]; i += 1 }
    return total
}
