import CPrefetch
/// Direct 3x3 convolution, padding 1, stride 1 or 2, for small channel counts (16 to 64)
/// on small planes (28x28 down to 7x7), where im2col + GEMM spends more time copying and
/// packing than multiplying (an output channel count of 16 gives GEMM 32 FLOPs per packed
/// element).
///
/// Stride 1: each input channel is stored padded and flat, row stride W + 2, the image at
/// row 1, column 1, zeros around it. Output position j = oy * (W + 2) + ox then reads tap
/// (ky, kx) at j + ky * (W + 2) + kx, so 8 consecutive outputs are one unaligned vector load
/// per tap, with no bounds checks; the positions with ox >= W are computed and thrown away.
/// Stride 2: each padded input channel is split into its four phases (even/odd rows x
/// even/odd columns), each a flat plane of row stride OW + 1; tap (ky, kx) reads phase
/// (ky mod 2, kx mod 2) at j + (ky / 2) * (OW + 1) + kx / 2, again 8 outputs per load.
///
/// Every output element is one FMA chain over (input channel, ky, kx) in that order,
/// whatever its position and whatever the batch: a sample's result depends on that sample
/// alone, bit for bit.

/// Where a direct 3x3 convolution reads and writes: the prepared input's floats per
/// channel, the offsets of the 9 taps (ky, kx row by row) from an output position, and the
/// flat output (row stride, positions per channel in whole vectors).
public struct DirectConvLayout: Equatable, Sendable {
    public let height: Int
    public let width: Int
    public let stride: Int
    public let outHeight: Int
    public let outWidth: Int
    public let outRowStride: Int
    /// Flat output positions per channel, a multiple of 8.
    public let outLength: Int
    /// Floats per prepared input channel.
    public let channelLength: Int
    /// Floats per phase plane (stride 2).
    public let phaseLength: Int
    public let taps: [Int]

    /// Padding 1 and stride 1 or 2 on an H x W plane; stride 1 with at least
    /// `minimumChannelLength` floats per channel (Winograd's transforms read further).
    public init(height: Int, width: Int, stride: Int, minimumChannelLength: Int = 0) {
        precondition(stride == 1 || stride == 2, "DirectConvLayout takes stride 1 or 2, got \(stride)")
        self.height = height; self.width = width; self.stride = stride
        outHeight = (height - 1) / stride + 1
        outWidth = (width - 1) / stride + 1
        if stride == 1 {
            let rs = width + 2
            outRowStride = rs
            outLength = (height * rs + 7) / 8 * 8
            // The farthest tap of the last vector, and dy read at `origin` (the weight gradient).
            channelLength = (max(outLength + 2 * rs + 2, minimumChannelLength) + 7) / 8 * 8
            phaseLength = 0
            taps = (0..<9).map { ($0 / 3) * rs + $0 % 3 }
        } else {
            let rs = outWidth + 1
            outRowStride = rs
            outLength = (outHeight * rs + 7) / 8 * 8
            let phase = (outLength + rs + 1 + 7) / 8 * 8
            phaseLength = phase
            channelLength = 4 * phase
            taps = (0..<9).map { t in
                let ky = t / 3, kx = t % 3
                return ((ky % 2) * 2 + kx % 2) * phase + (ky / 2) * rs + kx / 2
            }
        }
    }

    /// Stride 1: offset of pixel (0, 0) in a padded channel.
    public var origin: Int { outRowStride + 1 }
}

/// Writes planes [count, H, W] row by row into channels of `channelStride` floats: row y of
/// plane i at i * channelStride + offset + y * rowStride. Nothing else is written: the
/// caller zeroes the destination once, and the gaps stay zero.
public func spreadRows(_ source: UnsafePointer<Float>, count: Int, height h: Int, width w: Int, rowStride: Int,
                       channelStride: Int, offset: Int, into destination: UnsafeMutablePointer<Float>) {
    for i in 0..<count {
        let src = source + i * h * w, dst = destination + i * channelStride + offset
        for y in 0..<h {
            // 1 KB ahead in the source, both lines a row of up to 32 floats spans (CPrefetch).
            let row = src + y * w
            ddptrain_prefetch(row + 256); ddptrain_prefetch(row + 256 + 16)
            copyRow(row, dst + y * rowStride, count: w)
        }
    }
}

/// Prepares one sample's input channels [C, H, W] for `conv3x3Flat` into [C, channelLength]:
/// padded (stride 1) or padded and split into phases (stride 2). The stride-1 padding is not
/// written (zero the destination once); the phases are written whole, zeros included.
public func prepareConvInput(_ x: UnsafePointer<Float>, channels c: Int, _ l: DirectConvLayout, into prepared: UnsafeMutablePointer<Float>) {
    let h = l.height, w = l.width
    if l.stride == 1 {
        spreadRows(x, count: c, height: h, width: w, rowStride: l.outRowStride, channelStride: l.channelLength,
                   offset: l.origin, into: prepared)
        return
    }
    let rs = l.outRowStride, rows = l.outHeight + 1
    let evenCount = (w + 1) / 2, oddCount = w / 2
    for ci in 0..<c {
        let image = x + ci * h * w, channel = prepared + ci * l.channelLength
        for a in 0..<2 {
            // Phase (a, b) at (r, q) is padded pixel (2r + a, 2q + b) = image (2r + a - 1, 2q + b - 1):
            // phase (a, 1) holds the image's even columns from q = 0, phase (a, 0) its odd
            // columns from q = 1, zeros elsewhere.
            let evenPhase = channel + (a * 2 + 1) * l.phaseLength, oddPhase = channel + a * 2 * l.phaseLength
            for r in 0..<rows {
                let iy = 2 * r + a - 1
                let even = evenPhase + r * rs, odd = oddPhase + r * rs
                guard iy >= 0 && iy < h else {
                    even.update(repeating: 0, count: rs); odd.update(repeating: 0, count: rs); continue
                }
                // 8 rows ahead (CPrefetch).
                ddptrain_prefetch(image + (iy + 8) * w); ddptrain_prefetch(image + (iy + 8) * w + 16)
                splitColumns(image + iy * w, width: w, even: even, odd: odd + 1)
                // After the columns, rs = (w - 1) / 2 + 2 leaves one float of the even phase's
                // row and, for an odd w, one of the odd phase's: stores, where
                // `update(repeating:count:)` called memset for them.
                odd[0] = 0
                even[evenCount] = 0
                if 1 + oddCount < rs { odd[1 + oddCount] = 0 }
            }
        }
    }
}

/// Splits a row of `w` floats into its even columns (`even`, (w + 1) / 2 floats) and its odd
/// ones (`odd`, w / 2), 16 or 8 at a time; an even width of at least 8 ends with an
/// overlapping block (the same floats written twice), an odd one with the last even column.
@inline(__always)
private func splitColumns(_ src: UnsafePointer<Float>, width w: Int, even: UnsafeMutablePointer<Float>,
                          odd: UnsafeMutablePointer<Float>) {
    var i = 0
    while i + 16 <= w { let v = load16(src + i); store8(v.evenHalf, even + i / 2); store8(v.oddHalf, odd + i / 2); i += 16 }
    while i + 8 <= w { let v = load8(src + i); store4(v.evenHalf, even + i / 2); store4(v.oddHalf, odd + i / 2); i += 8 }
    if i < w && w >= 8 && w % 2 == 0 {
        let last = w - 8, v = load8(src + last)
        store4(v.evenHalf, even + last / 2); store4(v.oddHalf, odd + last / 2)
        return
    }
    while i + 2 <= w { even[i / 2] = src[i]; odd[i / 2] = src[i + 1]; i += 2 }
    if i < w { even[i / 2] = src[i] }
}

/// Copies flat outputs [count, outLength] into planes [count, OH, OW], adding `bias[i]` to
/// plane i, or `addend`'s planes [count, OH, OW] element by element, if given (not both).
public func unflattenOutput(_ flat: UnsafePointer<Float>, count: Int, _ l: DirectConvLayout, bias: UnsafePointer<Float>?,
                            adding addend: UnsafePointer<Float>? = nil, into planes: UnsafeMutablePointer<Float>) {
    precondition(bias == nil || addend == nil, "unflattenOutput adds a bias or planes, not both")
    let h = l.outHeight, w = l.outWidth, rs = l.outRowStride
    for i in 0..<count {
        let src = flat + i * l.outLength, dst = planes + i * h * w
        if let bias {
            let b = bias[i]
            for y in 0..<h { copyRow(src + y * rs, dst + y * w, count: w, adding: b) }
        } else if let addend {
            let more = addend + i * h * w
            for y in 0..<h { addRow(src + y * rs, more + y * w, dst + y * w, count: w) }
        } else if w % 4 == 0 && Int(bitPattern: planes) % 16 == 0 {
            // Past the caches (`ddptrain_stream4`): a whole batch's output (or input
            // gradient), read back by the next layer (or the previous one's backward) only
            // after the last sample is written, where each line was first read in to be
            // overwritten. In fmnist-cnn's profile the copy went from 0.18 to 0.11 (in units of
            // Winograd's forward kernel), the batch norm's statistics up 0.02.
            for y in 0..<h {
                let from = src + y * rs, to = dst + y * w
                for i in Swift.stride(from: 0, to: w, by: 4) { ddptrain_stream4(to + i, from + i) }
            }
        } else {
            for y in 0..<h { copyRow(src + y * rs, dst + y * w, count: w) }
        }
    }
    ddptrain_stream_fence()
}

/// Weights [OC, C, 3, 3] (PyTorch's layout) repacked for `conv3x3Flat`: [C, 9, OC].
public func packConv3x3Weights(_ weight: UnsafePointer<Float>, outChannels oc: Int, inChannels c: Int,
                               into packed: UnsafeMutablePointer<Float>) {
    for o in 0..<oc { for ci in 0..<c { for t in 0..<9 { packed[(ci * 9 + t) * oc + o] = weight[(o * c + ci) * 9 + t] } } }
}

/// Weights [OC, C, 3, 3] repacked for the input gradient, which is the convolution of the
/// padded output gradient with the kernel flipped and its channels swapped: [OC, 9, C],
/// tap (ky, kx) holding w[o, c, 2 - ky, 2 - kx].
public func packConv3x3WeightsTransposed(_ weight: UnsafePointer<Float>, outChannels oc: Int, inChannels c: Int,
                                         into packed: UnsafeMutablePointer<Float>) {
    for o in 0..<oc { for ci in 0..<c { for t in 0..<9 { packed[(o * 9 + t) * c + ci] = weight[(o * c + ci) * 9 + (8 - t)] } } }
}

/// Copies a short row (7 to 28 floats here) inline: memmove's call and dispatch cost more
/// than the copy at these lengths (7.5% of resnet8's step in memmove).
@inline(__always)
private func copyRow(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    copyRow(src, dst, count: count, adding: nil)
}

/// `copyRow`, adding `bias` to every float if given.
@inline(__always)
private func copyRow(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int, adding bias: Float?) {
    overRow(count: count,
            { i in store8(bias.map { load8(src + i) + $0 } ?? load8(src + i), dst + i) },
            { i in store4(bias.map { load4(src + i) + $0 } ?? load4(src + i), dst + i) },
            { i in dst[i] = bias.map { src[i] + $0 } ?? src[i] })
}

/// dst = a + b over a short row (dst must not overlap a or b).
@inline(__always)
private func addRow(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    overRow(count: count,
            { i in store8(load8(a + i) + load8(b + i), dst + i) },
            { i in store4(load4(a + i) + load4(b + i), dst + i) },
            { i in dst[i] = a[i] + b[i] })
}

/// Runs over a short row of `count` floats 8 at a time, the last 8 overlapping the ones before
/// (their floats written twice, with the same values) instead of a scalar tail; 4 at a time
/// the same way below 8, one at a time below 4.
@inline(__always)
private func overRow(count: Int, _ by8: (Int) -> Void, _ by4: (Int) -> Void, _ by1: (Int) -> Void) {
    if count >= 8 {
        var i = 0
        while i + 8 < count { by8(i); i += 8 }
        by8(count - 8)
    } else if count >= 4 {
        by4(0); by4(count - 4)
    } else {
        for i in 0..<count { by1(i) }
    }
}

/// Writes `w` floats to dst, column 2q from even[q] and 2q + 1 from odd[q], plus the float
/// at the same column of `addend` if given; an even width of at least 8 ends with an
/// overlapping block.
@inline(__always)
private func mergeColumns(even: UnsafePointer<Float>, odd: UnsafePointer<Float>, width w: Int, adding addend: UnsafePointer<Float>?,
                          into dst: UnsafeMutablePointer<Float>) {
    @inline(__always) func put16(_ v: SIMD16<Float>, _ i: Int) { store16(addend.map { v + load16($0 + i) } ?? v, dst + i) }
    @inline(__always) func put8(_ v: SIMD8<Float>, _ i: Int) { store8(addend.map { v + load8($0 + i) } ?? v, dst + i) }
    @inline(__always) func put(_ v: Float, _ i: Int) { dst[i] = addend.map { v + $0[i] } ?? v }
    var i = 0
    while i + 16 <= w { put16(interleave(load8(even + i / 2), load8(odd + i / 2)), i); i += 16 }
    while i + 8 <= w { put8(interleave(load4(even + i / 2), load4(odd + i / 2)), i); i += 8 }
    if i < w && w >= 8 && w % 2 == 0 {
        let last = w - 8
        put8(interleave(load4(even + last / 2), load4(odd + last / 2)), last)
        return
    }
    while i + 2 <= w { put(even[i / 2], i); put(odd[i / 2], i + 1); i += 2 }
    if i < w { put(even[i / 2], i) }
}

/// One sample: out [OC, outLength] = conv3x3(prepared input [C, channelLength], packed
/// weights [C, 9, OC]) by `convFlat`. OC must be a multiple of 4.
public func conv3x3Flat(_ input: UnsafePointer<Float>, channels c: Int, _ packed: UnsafePointer<Float>, outChannels oc: Int,
                        _ l: DirectConvLayout, into out: UnsafeMutablePointer<Float>) {
    convFlat(input, channels: c, channelLength: l.channelLength, taps: l.taps, packed, outChannels: oc,
             outLength: l.outLength, into: out)
}

/// `conv3x3Flat` with any list of taps: out [OC, outLength] where
/// out[o, j] = Σ_c Σ_t packed[c, t, o] · input[c * channelLength + j + taps[t]], each element
/// one FMA chain over (c, t) in order, whatever block it falls in. Blocks of 4 output
/// channels x 24 positions keep 12 accumulators in registers, the tail 4 x 8; with AVX-512,
/// 8 x 48 (`convFlatEights`) and 8 x 16 or 8 x 8 after the last 48 (`convFlatTail`) where OC
/// is a multiple of 8, else 4 x 48.
public func convFlat(_ input: UnsafePointer<Float>, channels c: Int, channelLength plane: Int, taps tapList: [Int],
                     _ packed: UnsafePointer<Float>, outChannels oc: Int, outLength length: Int,
                     into out: UnsafeMutablePointer<Float>) {
    precondition(oc % 4 == 0, "convFlat needs a multiple of 4 output channels, got \(oc)")
    let tapCount = tapList.count
    tapList.withUnsafeBufferPointer { taps in
    #if DDPTRAIN_AVX512
    let wideLanes = length / 48 * 48
    let tailByEights = oc % 8 == 0 && wideLanes < length
    if tailByEights {
        convFlatTail(input, channels: c, channelLength: plane, taps: taps, packed, outChannels: oc, outLength: length,
                     from: wideLanes, into: out)
    }
    #endif
    #if DDPTRAIN_AVX512
    if oc % 8 == 0 {
        convFlatEights(input, channels: c, channelLength: plane, taps: taps, packed, outChannels: oc, outLength: length,
                       upTo: wideLanes, into: out)
    }
    #endif
    for o0 in stride(from: 0, to: oc, by: 4) {
        var j = 0
        #if DDPTRAIN_AVX512
        if oc % 8 == 0 { j = wideLanes }
        // 4 x 48 (OC a multiple of 4 but not of 8): the same chains 16 lanes wide (zmm), then
        // the 8-wide blocks for the rest.
        while j + 48 <= length {
            var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a02 = SIMD16<Float>()
            var a10 = SIMD16<Float>(), a11 = SIMD16<Float>(), a12 = SIMD16<Float>()
            var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a22 = SIMD16<Float>()
            var a30 = SIMD16<Float>(), a31 = SIMD16<Float>(), a32 = SIMD16<Float>()
            var src = input + j, w = packed + o0
            for _ in 0..<c {
                for t in 0..<tapCount {
                    let s = src + taps[t]
                    let v0 = load16(s), v1 = load16(s + 16), v2 = load16(s + 32)
                    let w0 = SIMD16<Float>(repeating: w[0])
                    a00.addProduct(v0, w0); a01.addProduct(v1, w0); a02.addProduct(v2, w0)
                    let w1 = SIMD16<Float>(repeating: w[1])
                    a10.addProduct(v0, w1); a11.addProduct(v1, w1); a12.addProduct(v2, w1)
                    let w2 = SIMD16<Float>(repeating: w[2])
                    a20.addProduct(v0, w2); a21.addProduct(v1, w2); a22.addProduct(v2, w2)
                    let w3 = SIMD16<Float>(repeating: w[3])
                    a30.addProduct(v0, w3); a31.addProduct(v1, w3); a32.addProduct(v2, w3)
                    w += oc
                }
                src += plane
            }
            let d = out + o0 * length + j
            store16(a00, d); store16(a01, d + 16); store16(a02, d + 32)
            store16(a10, d + length); store16(a11, d + length + 16); store16(a12, d + length + 32)
            store16(a20, d + 2 * length); store16(a21, d + 2 * length + 16); store16(a22, d + 2 * length + 32)
            store16(a30, d + 3 * length); store16(a31, d + 3 * length + 16); store16(a32, d + 3 * length + 32)
            j += 48
        }
        if tailByEights { continue }
        #endif
        while j + 24 <= length {
            var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a02 = SIMD8<Float>()
            var a10 = SIMD8<Float>(), a11 = SIMD8<Float>(), a12 = SIMD8<Float>()
            var a20 = SIMD8<Float>(), a21 = SIMD8<Float>(), a22 = SIMD8<Float>()
            var a30 = SIMD8<Float>(), a31 = SIMD8<Float>(), a32 = SIMD8<Float>()
            // Pointers stepped, not recomputed: checked index products per channel cost
            // as much as a tap's FMAs.
            var src = input + j, w = packed + o0
            for _ in 0..<c {
                for t in 0..<tapCount {
                    let s = src + taps[t]
                    let v0 = load8(s), v1 = load8(s + 8), v2 = load8(s + 16)
                    let w0 = SIMD8<Float>(repeating: w[0])
                    a00.addProduct(v0, w0); a01.addProduct(v1, w0); a02.addProduct(v2, w0)
                    let w1 = SIMD8<Float>(repeating: w[1])
                    a10.addProduct(v0, w1); a11.addProduct(v1, w1); a12.addProduct(v2, w1)
                    let w2 = SIMD8<Float>(repeating: w[2])
                    a20.addProduct(v0, w2); a21.addProduct(v1, w2); a22.addProduct(v2, w2)
                    let w3 = SIMD8<Float>(repeating: w[3])
                    a30.addProduct(v0, w3); a31.addProduct(v1, w3); a32.addProduct(v2, w3)
                    w += oc
                }
                src += plane
            }
            let d = out + o0 * length + j
            store8(a00, d); store8(a01, d + 8); store8(a02, d + 16)
            store8(a10, d + length); store8(a11, d + length + 8); store8(a12, d + length + 16)
            store8(a20, d + 2 * length); store8(a21, d + 2 * length + 8); store8(a22, d + 2 * length + 16)
            store8(a30, d + 3 * length); store8(a31, d + 3 * length + 8); store8(a32, d + 3 * length + 16)
            j += 24
        }
        while j < length {
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            var src = input + j, w = packed + o0
            for _ in 0..<c {
                for t in 0..<tapCount {
                    let v = load8(src + taps[t])
                    a0.addProduct(v, SIMD8<Float>(repeating: w[0]))
                    a1.addProduct(v, SIMD8<Float>(repeating: w[1]))
                    a2.addProduct(v, SIMD8<Float>(repeating: w[2]))
                    a3.addProduct(v, SIMD8<Float>(repeating: w[3]))
                    w += oc
                }
                src += plane
            }
            let d = out + o0 * length + j
            store8(a0, d); store8(a1, d + length); store8(a2, d + 2 * length); store8(a3, d + 3 * length)
            j += 8
        }
    }
    }
}

#if DDPTRAIN_AVX512
/// `convFlat`'s positions below `upTo` (a multiple of 48) in blocks of 8 output channels x 48
/// positions: 24 zmm accumulators, 3 loads and 8 broadcasts a tap for 24 FMAs, where 4 x 48
/// took 3 loads (most of them split across two cache lines) and 4 broadcasts for 12 and
/// waited on the load ports. Each element the same FMA chain over (channel, tap). OC must be
/// a multiple of 8.
@inline(__always)
private func convFlatEights(_ input: UnsafePointer<Float>, channels c: Int, channelLength plane: Int, taps: UnsafeBufferPointer<Int>,
                            _ packed: UnsafePointer<Float>, outChannels oc: Int, outLength length: Int, upTo end: Int,
                            into out: UnsafeMutablePointer<Float>) {
    let tapCount = taps.count
    for o0 in stride(from: 0, to: oc, by: 8) {
        var j = 0
        while j + 48 <= end {
            var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a02 = SIMD16<Float>()
            var a10 = SIMD16<Float>(), a11 = SIMD16<Float>(), a12 = SIMD16<Float>()
            var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a22 = SIMD16<Float>()
            var a30 = SIMD16<Float>(), a31 = SIMD16<Float>(), a32 = SIMD16<Float>()
            var a40 = SIMD16<Float>(), a41 = SIMD16<Float>(), a42 = SIMD16<Float>()
            var a50 = SIMD16<Float>(), a51 = SIMD16<Float>(), a52 = SIMD16<Float>()
            var a60 = SIMD16<Float>(), a61 = SIMD16<Float>(), a62 = SIMD16<Float>()
            var a70 = SIMD16<Float>(), a71 = SIMD16<Float>(), a72 = SIMD16<Float>()
            var src = input + j, w = packed + o0
            for _ in 0..<c {
                for t in 0..<tapCount {
                    let s = src + taps[t]
                    let v0 = load16(s), v1 = load16(s + 16), v2 = load16(s + 32)
                    let w0 = SIMD16<Float>(repeating: w[0])
                    a00.addProduct(v0, w0); a01.addProduct(v1, w0); a02.addProduct(v2, w0)
                    let w1 = SIMD16<Float>(repeating: w[1])
                    a10.addProduct(v0, w1); a11.addProduct(v1, w1); a12.addProduct(v2, w1)
                    let w2 = SIMD16<Float>(repeating: w[2])
                    a20.addProduct(v0, w2); a21.addProduct(v1, w2); a22.addProduct(v2, w2)
                    let w3 = SIMD16<Float>(repeating: w[3])
                    a30.addProduct(v0, w3); a31.addProduct(v1, w3); a32.addProduct(v2, w3)
                    let w4 = SIMD16<Float>(repeating: w[4])
                    a40.addProduct(v0, w4); a41.addProduct(v1, w4); a42.addProduct(v2, w4)
                    let w5 = SIMD16<Float>(repeating: w[5])
                    a50.addProduct(v0, w5); a51.addProduct(v1, w5); a52.addProduct(v2, w5)
                    let w6 = SIMD16<Float>(repeating: w[6])
                    a60.addProduct(v0, w6); a61.addProduct(v1, w6); a62.addProduct(v2, w6)
                    let w7 = SIMD16<Float>(repeating: w[7])
                    a70.addProduct(v0, w7); a71.addProduct(v1, w7); a72.addProduct(v2, w7)
                    w += oc
                }
                src += plane
            }
            var d = out + o0 * length + j
            @inline(__always) func put(_ x: SIMD16<Float>, _ y: SIMD16<Float>, _ z: SIMD16<Float>) {
                store16(x, d); store16(y, d + 16); store16(z, d + 32); d += length
            }
            put(a00, a01, a02); put(a10, a11, a12); put(a20, a21, a22); put(a30, a31, a32)
            put(a40, a41, a42); put(a50, a51, a52); put(a60, a61, a62); put(a70, a71, a72)
            j += 48
        }
    }
}
#endif

#if DDPTRAIN_AVX512
/// `convFlat`'s positions from `start` (a multiple of 8) to outLength, 8 output channels at a
/// time: 16 positions (8 zmm accumulators), then 8 (8 ymm), each element the same FMA chain
/// over (channel, tap). As 4 x 24 and 4 x 8 ymm blocks they ran at a half and a quarter of
/// the rate: a 7x7 output of stride 2 is 48 + 8 positions, a 14x14 one 4 x 48 + 24. OC must
/// be a multiple of 8.
@inline(__always)
private func convFlatTail(_ input: UnsafePointer<Float>, channels c: Int, channelLength plane: Int, taps: UnsafeBufferPointer<Int>,
                          _ packed: UnsafePointer<Float>, outChannels oc: Int, outLength length: Int, from start: Int,
                          into out: UnsafeMutablePointer<Float>) {
    let tapCount = taps.count
    for o0 in stride(from: 0, to: oc, by: 8) {
        var j = start
        while j + 16 <= length {
            var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
            var a4 = SIMD16<Float>(), a5 = SIMD16<Float>(), a6 = SIMD16<Float>(), a7 = SIMD16<Float>()
            var src = input + j, w = packed + o0
            for _ in 0..<c {
                for t in 0..<tapCount {
                    let x = load16(src + taps[t])
                    a0.addProduct(x, SIMD16(repeating: w[0])); a1.addProduct(x, SIMD16(repeating: w[1]))
                    a2.addProduct(x, SIMD16(repeating: w[2])); a3.addProduct(x, SIMD16(repeating: w[3]))
                    a4.addProduct(x, SIMD16(repeating: w[4])); a5.addProduct(x, SIMD16(repeating: w[5]))
                    a6.addProduct(x, SIMD16(repeating: w[6])); a7.addProduct(x, SIMD16(repeating: w[7]))
                    w += oc
                }
                src += plane
            }
            let d = out + o0 * length + j, r = length
            store16(a0, d); store16(a1, d + r); store16(a2, d + 2 * r); store16(a3, d + 3 * r)
            store16(a4, d + 4 * r); store16(a5, d + 5 * r); store16(a6, d + 6 * r); store16(a7, d + 7 * r)
            j += 16
        }
        if j < length {
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            var a4 = SIMD8<Float>(), a5 = SIMD8<Float>(), a6 = SIMD8<Float>(), a7 = SIMD8<Float>()
            var src = input + j, w = packed + o0
            for _ in 0..<c {
                for t in 0..<tapCount {
                    let x = load8(src + taps[t])
                    a0.addProduct(x, SIMD8(repeating: w[0])); a1.addProduct(x, SIMD8(repeating: w[1]))
                    a2.addProduct(x, SIMD8(repeating: w[2])); a3.addProduct(x, SIMD8(repeating: w[3]))
                    a4.addProduct(x, SIMD8(repeating: w[4])); a5.addProduct(x, SIMD8(repeating: w[5]))
                    a6.addProduct(x, SIMD8(repeating: w[6])); a7.addProduct(x, SIMD8(repeating: w[7]))
                    w += oc
                }
                src += plane
            }
            let d = out + o0 * length + j, r = length
            store8(a0, d); store8(a1, d + r); store8(a2, d + 2 * r); store8(a3, d + 3 * r)
            store8(a4, d + 4 * r); store8(a5, d + 5 * r); store8(a6, d + 6 * r); store8(a7, d + 7 * r)
        }
    }
}
#endif

/// The input gradient of a stride-2 convolution, as four stride-1 ones: dx at (2r + a,
/// 2q + b) collects dy at (r, q) and, where the kernel reaches it, (r + 1, q), (r, q + 1),
/// (r + 1, q + 1): kernel rows/columns 1 for even a/b, 0 and 2 for odd (0 reaching one
/// further). dy in the stride-2 flat output layout, with at least one zero row and column
/// after the last (`channelLength`), is the input; each phase's output has the same flat
/// layout as the forward's output.
public struct StrideTwoInputGradient: Sendable {
    /// The taps of phase (a, b), 2a + b: offsets into dy, and ky * 3 + kx per tap.
    public let taps: [[Int]]
    public let kernelTaps: [[Int]]

    public init(_ l: DirectConvLayout) {
        precondition(l.stride == 2)
        let rs = l.outRowStride
        // Kernel rows (columns) that reach dx rows (columns) of each parity.
        func reaching(_ parity: Int) -> [Int] { parity == 0 ? [1] : [0, 2] }
        var taps: [[Int]] = [], kernelTaps: [[Int]] = []
        for a in 0..<2 {
            for b in 0..<2 {
                var t: [Int] = [], k: [Int] = []
                for ky in reaching(a) {
                    for kx in reaching(b) {
                        // Kernel row 0 reads dy one row further (oy = r + 1); likewise columns.
                        t.append((ky == 0 ? 1 : 0) * rs + (kx == 0 ? 1 : 0))
                        k.append(ky * 3 + kx)
                    }
                }
                taps.append(t); kernelTaps.append(k)
            }
        }
        self.taps = taps; self.kernelTaps = kernelTaps
    }

    /// Floats per dy channel: the flat output and the farthest tap of its last vector.
    public static func channelLength(_ l: DirectConvLayout) -> Int { (l.outLength + l.outRowStride + 1 + 7) / 8 * 8 }

    /// Weights [OC, C, 3, 3] packed per phase for `convFlat`: [OC, taps, C], one phase after
    /// another (9 taps in all, as many floats as the weights).
    public func pack(_ weight: UnsafePointer<Float>, outChannels oc: Int, inChannels c: Int, into packed: UnsafeMutablePointer<Float>) {
        var p = packed
        for k in kernelTaps {
            for o in 0..<oc {
                for (t, tap) in k.enumerated() {
                    for ci in 0..<c { p[(o * k.count + t) * c + ci] = weight[(o * c + ci) * 9 + tap] }
                }
            }
            p += oc * k.count * c
        }
    }

    /// One sample: dx [C, H, W] from its dy [OC, channelLength], plus `addend` [C, H, W] if
    /// given; `flat` [4, C, outLength] is scratch.
    public func run(_ dy: UnsafePointer<Float>, outChannels oc: Int, _ packed: UnsafePointer<Float>, inChannels c: Int,
                    _ l: DirectConvLayout, flat: UnsafeMutablePointer<Float>, adding addend: UnsafePointer<Float>? = nil,
                    into dx: UnsafeMutablePointer<Float>) {
        let dyChannel = Self.channelLength(l), rs = l.outRowStride, h = l.height, w = l.width
        let phaseStride = c * l.outLength
        var p = packed
        for phase in 0..<4 {
            convFlat(dy, channels: oc, channelLength: dyChannel, taps: taps[phase], p, outChannels: c, outLength: l.outLength,
                     into: flat + phase * phaseStride)
            p += oc * taps[phase].count * c
        }
        // dx row y = 2r + a: columns 2q from phase (a, 0), 2q + 1 from phase (a, 1), row r.
        for ci in 0..<c {
            for y in 0..<h {
                let a = y % 2, row = ci * l.outLength + (y / 2) * rs, at = (ci * h + y) * w
                let even = flat + 2 * a * phaseStride + row, odd = flat + (2 * a + 1) * phaseStride + row
                // Two calls, so that each is compiled for its case.
                if let addend {
                    mergeColumns(even: even, odd: odd, width: w, adding: addend + at, into: dx + at)
                } else {
                    mergeColumns(even: even, odd: odd, width: w, adding: nil, into: dx + at)
                }
            }
        }
    }
}

/// The weight gradient of `samples` consecutive samples, added into grad [OC, C, 3, 3]:
/// grad[o, c, tap] += Σ_s Σ_j dy_s[o, j] · x_s[c, j + taps[tap]], with x the prepared input
/// [samples, C, channelLength] and dy the output gradient laid out like the flat output
/// (row stride outRowStride, zeros at the thrown-away positions), channel o of sample s at
/// dy + s * dySample + o * dyChannel. OC must be even. Each (2 output channels, c, kernel
/// row) keeps 2 x 3 vector accumulators over the samples' planes (4 x 3 left too few
/// registers and spilled), then sums their lanes in a fixed order: on small planes (7x7
/// is 8 vectors) several samples share one lane sum. `scratch` holds
/// `conv3x3WeightGradientScratch(l, samples:)` floats.
public func conv3x3WeightGradient(_ x: UnsafePointer<Float>, channels c: Int, _ dy: UnsafePointer<Float>, outChannels oc: Int,
                                  dyChannel: Int, dySample: Int, _ l: DirectConvLayout, samples: Int,
                                  scratch: UnsafeMutablePointer<Float>, addingInto grad: UnsafeMutablePointer<Float>) {
    precondition(oc % 2 == 0, "conv3x3WeightGradient needs an even number of output channels, got \(oc)")
    let length = l.outLength, plane = l.channelLength
    let xSample = c * plane
    #if DDPTRAIN_AVX512
    if oc % 8 == 0 {
        conv3x3WeightGradientPaired(x, channels: c, dy, outChannels: oc, dyChannel: dyChannel, dySample: dySample, l,
                                    samples: samples, pairs: scratch, addingInto: grad)
        return
    }
    #endif
    for o0 in stride(from: 0, to: oc, by: 2) {
        for ci in 0..<c {
            for ky in 0..<3 {
                // Run-time offsets: with literal ones (stride 1: +1, +2) the compiler builds
                // a load from its neighbours with shuffles and spills accumulators for them.
                let t0 = l.taps[3 * ky], t1 = l.taps[3 * ky + 1], t2 = l.taps[3 * ky + 2]
                var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a02 = SIMD8<Float>()
                var a10 = SIMD8<Float>(), a11 = SIMD8<Float>(), a12 = SIMD8<Float>()
                for s in 0..<samples {
                    let src = x + s * xSample + ci * plane
                    let d0 = dy + s * dySample + o0 * dyChannel, d1 = d0 + dyChannel
                    var j = 0
                    while j < length {
                        let x0 = load8(src + j + t0), x1 = load8(src + j + t1), x2 = load8(src + j + t2)
                        let g0 = load8(d0 + j)
                        a00.addProduct(g0, x0); a01.addProduct(g0, x1); a02.addProduct(g0, x2)
                        let g1 = load8(d1 + j)
                        a10.addProduct(g1, x0); a11.addProduct(g1, x1); a12.addProduct(g1, x2)
                        j += 8
                    }
                }
                let g = grad + (o0 * c + ci) * 9 + ky * 3, step = c * 9
                g[0] += a00.sum(); g[1] += a01.sum(); g[2] += a02.sum()
                g[step] += a10.sum(); g[step + 1] += a11.sum(); g[step + 2] += a12.sum()
            }
        }
    }
}

/// Floats of `conv3x3WeightGradient`'s scratch for `samples` samples: 8 output channels' dy.
public func conv3x3WeightGradientScratch(_ l: DirectConvLayout, samples: Int) -> Int { 8 * l.outLength * samples }

#if DDPTRAIN_AVX512
/// `conv3x3WeightGradient` 16 lanes wide, with its bits: each SIMD16 accumulator holds two
/// output channels' 8-lane accumulators side by side (dy of channel o in the low half, o + 1
/// in the high half, the same x in both), so every lane runs the chain of the 8-wide kernel
/// and each half's lane sum is the 8-wide sum. Blocks of 8 output channels x 3 taps: 12
/// accumulators, which AVX-512's 32 registers hold.
///
/// A pair put together from its two rows takes a shuffle on the port that also does half
/// the FMAs (4 per 12 FMAs), for every input channel and kernel row again. With 4 input
/// channels or more, the block's dy is first copied with its channel pairs interleaved 8
/// lanes at a time (`pairs`), so that each pair is one 64-byte load; with fewer (a first
/// layer's one channel), the copy would cost more than the shuffles it saves.
private func conv3x3WeightGradientPaired(_ x: UnsafePointer<Float>, channels c: Int, _ dy: UnsafePointer<Float>, outChannels oc: Int,
                                         dyChannel: Int, dySample: Int, _ l: DirectConvLayout, samples: Int,
                                         pairs: UnsafeMutablePointer<Float>, addingInto grad: UnsafeMutablePointer<Float>) {
    // One sample (planes of 512 positions or more) compiled apart: without the loop over
    // samples, the compiler keeps the accumulators in place instead of copying 7 of them
    // between registers every step (6% of the kernel's time on resnet8's 28x28 layers).
    if c >= 4 && samples == 1 {
        weightGradientPaired(x, channels: c, dy, outChannels: oc, dyChannel: dyChannel, dySample: dySample, l, samples: 1,
                             interleavingInto: pairs, addingInto: grad)
    } else if c >= 4 {
        weightGradientPaired(x, channels: c, dy, outChannels: oc, dyChannel: dyChannel, dySample: dySample, l, samples: samples,
                             interleavingInto: pairs, addingInto: grad)
    } else {
        weightGradientPaired(x, channels: c, dy, outChannels: oc, dyChannel: dyChannel, dySample: dySample, l, samples: samples,
                             interleavingInto: nil, addingInto: grad)
    }
}

/// `conv3x3WeightGradientPaired`, reading the pairs from `pairs` [samples, 4, length / 8, 2, 8]
/// after copying them there, or, without it, from dy's rows.
@inline(__always)
private func weightGradientPaired(_ x: UnsafePointer<Float>, channels c: Int, _ dy: UnsafePointer<Float>, outChannels oc: Int,
                                  dyChannel: Int, dySample: Int, _ l: DirectConvLayout, samples: Int,
                                  interleavingInto pairs: UnsafeMutablePointer<Float>?, addingInto grad: UnsafeMutablePointer<Float>) {
    let length = l.outLength, plane = l.channelLength
    let xSample = c * plane
    // From a pair's lanes j..<j + 8 to the next pair's, and to its lanes j + 8..<j + 16.
    let pairStride = pairs == nil ? 2 * dyChannel : 2 * length, laneStep = pairs == nil ? 8 : 16
    @inline(__always) func pair(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
        pairs == nil ? SIMD16(lowHalf: load8(p), highHalf: load8(p + dyChannel)) : load16(p)
    }
    for o0 in stride(from: 0, to: oc, by: 8) {
        @inline(__always) func firstPair(_ s: Int) -> UnsafePointer<Float> {
            pairs.map { UnsafePointer($0 + 8 * s * length) } ?? dy + s * dySample + o0 * dyChannel
        }
        if let pairs {
            for s in 0..<samples {
                for pair in 0..<4 {
                    let low = dy + s * dySample + (o0 + 2 * pair) * dyChannel, high = low + dyChannel
                    let into = pairs + (4 * s + pair) * 2 * length
                    var j = 0
                    while j < length { store8(load8(low + j), into + 2 * j); store8(load8(high + j), into + 2 * j + 8); j += 8 }
                }
            }
        }
        for ci in 0..<c {
            for ky in 0..<3 {
                let t0 = l.taps[3 * ky], t1 = l.taps[3 * ky + 1], t2 = l.taps[3 * ky + 2]
                var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a02 = SIMD16<Float>()
                var a10 = SIMD16<Float>(), a11 = SIMD16<Float>(), a12 = SIMD16<Float>()
                var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a22 = SIMD16<Float>()
                var a30 = SIMD16<Float>(), a31 = SIMD16<Float>(), a32 = SIMD16<Float>()
                for s in 0..<samples {
                    let src = x + s * xSample + ci * plane
                    // Pointers stepped: index products cost an overflow check each.
                    var d = firstPair(s), p = src, end = src + length
                    while p < end {
                        let x0 = twice(p + t0), x1 = twice(p + t1), x2 = twice(p + t2)
                        let g0 = pair(d)
                        a00.addProduct(g0, x0); a01.addProduct(g0, x1); a02.addProduct(g0, x2)
                        let g1 = pair(d + pairStride)
                        a10.addProduct(g1, x0); a11.addProduct(g1, x1); a12.addProduct(g1, x2)
                        let g2 = pair(d + 2 * pairStride)
                        a20.addProduct(g2, x0); a21.addProduct(g2, x1); a22.addProduct(g2, x2)
                        let g3 = pair(d + 3 * pairStride)
                        a30.addProduct(g3, x0); a31.addProduct(g3, x1); a32.addProduct(g3, x2)
                        p += 8; d += laneStep
                    }
                }
                let g = grad + (o0 * c + ci) * 9 + ky * 3, step = c * 9
                @inline(__always) func add(_ pair: Int, _ a0: SIMD16<Float>, _ a1: SIMD16<Float>, _ a2: SIMD16<Float>) {
                    let low = g + 2 * pair * step, high = low + step
                    low[0] += a0.lowHalf.sum(); low[1] += a1.lowHalf.sum(); low[2] += a2.lowHalf.sum()
                    high[0] += a0.highHalf.sum(); high[1] += a1.highHalf.sum(); high[2] += a2.highHalf.sum()
                }
                add(0, a00, a01, a02); add(1, a10, a11, a12); add(2, a20, a21, a22); add(3, a30, a31, a32)
            }
        }
    }
}

/// The 8 floats at p in both halves.
@inline(__always)
func twice(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
    let v = UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    return SIMD16(lowHalf: v, highHalf: v)
}
#endif
