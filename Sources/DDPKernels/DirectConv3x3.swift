/// Direct 3x3 convolution, stride 1, padding 1, for small channel counts (16 to 64) on
/// small planes (28x28 down to 7x7), where im2col + GEMM spends more time copying and
/// packing than multiplying (one output channel block of 16 gives GEMM 32 FLOPs per packed
/// element).
///
/// Planes are stored padded and flat: row stride W + 2, the image at row 1, column 1, zeros
/// around it. Output position j = oy * (W + 2) + ox then reads tap (ky, kx) at
/// j + ky * (W + 2) + kx, so a run of 8 consecutive outputs is one unaligned vector load per
/// tap, with no bounds checks; the two positions per row with ox >= W are computed and
/// thrown away. Every output element is one FMA chain over (input channel, ky, kx) in that
/// order, whatever its position and whatever the batch: a sample's result depends on that
/// sample alone, bit for bit.

/// The flat padded layout of one H x W plane.
public struct PaddedPlane: Equatable, Sendable {
    public let height: Int
    public let width: Int

    public init(height: Int, width: Int) { self.height = height; self.width = width }

    public var rowStride: Int { width + 2 }
    /// Output positions computed per plane: H rows of `rowStride`, rounded up to whole vectors.
    public var outLength: Int { (height * rowStride + 7) / 8 * 8 }
    /// Offset of pixel (0, 0) in a padded plane.
    public var origin: Int { rowStride + 1 }
    /// Floats per padded plane: every tap of every output position reads inside it, and a
    /// flat output row read at `origin` (the weight gradient's dy) stays inside it too.
    public var planeLength: Int { (outLength + 2 * rowStride + 2 + 7) / 8 * 8 }
}

/// Copies planes [count, H, W] into the interiors of padded planes [count, planeLength].
/// The padding is never written: the caller zeroes the destination once.
public func padPlanes(_ source: UnsafePointer<Float>, count: Int, _ p: PaddedPlane, into padded: UnsafeMutablePointer<Float>) {
    let h = p.height, w = p.width, rs = p.rowStride
    for i in 0..<count {
        let src = source + i * h * w, dst = padded + i * p.planeLength + p.origin
        for y in 0..<h { (dst + y * rs).update(from: src + y * w, count: w) }
    }
}

/// Copies flat outputs [count, outLength] (row stride W + 2) into planes [count, H, W],
/// adding `bias[i]` to plane i if given.
public func unpadPlanes(_ flat: UnsafePointer<Float>, count: Int, _ p: PaddedPlane, bias: UnsafePointer<Float>?,
                        into planes: UnsafeMutablePointer<Float>) {
    let h = p.height, w = p.width, rs = p.rowStride
    for i in 0..<count {
        let src = flat + i * p.outLength, dst = planes + i * h * w
        if let bias {
            let b = bias[i]
            for y in 0..<h { for x in 0..<w { dst[y * w + x] = src[y * rs + x] + b } }
        } else {
            for y in 0..<h { (dst + y * w).update(from: src + y * rs, count: w) }
        }
    }
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

@inline(__always)
private func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always)
private func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

/// One sample: out [OC, outLength] = conv3x3(input [C, planeLength] padded, packed [C, 9, OC]).
/// OC must be a multiple of 4. Blocks of 4 output channels x 24 positions keep 12
/// accumulators in registers; the tail runs 4 x 8. Both accumulate in the same order.
public func conv3x3Flat(_ input: UnsafePointer<Float>, channels c: Int, _ packed: UnsafePointer<Float>, outChannels oc: Int,
                        _ p: PaddedPlane, into out: UnsafeMutablePointer<Float>) {
    precondition(oc % 4 == 0, "conv3x3Flat needs a multiple of 4 output channels, got \(oc)")
    let rs = p.rowStride, length = p.outLength, plane = p.planeLength
    for o0 in stride(from: 0, to: oc, by: 4) {
        var j = 0
        while j + 24 <= length {
            var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a02 = SIMD8<Float>()
            var a10 = SIMD8<Float>(), a11 = SIMD8<Float>(), a12 = SIMD8<Float>()
            var a20 = SIMD8<Float>(), a21 = SIMD8<Float>(), a22 = SIMD8<Float>()
            var a30 = SIMD8<Float>(), a31 = SIMD8<Float>(), a32 = SIMD8<Float>()
            for ci in 0..<c {
                let src = input + ci * plane + j
                var w = packed + ci * 9 * oc + o0
                for ky in 0..<3 {
                    for kx in 0..<3 {
                        let s = src + ky * rs + kx
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
                }
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
            for ci in 0..<c {
                let src = input + ci * plane + j
                var w = packed + ci * 9 * oc + o0
                for ky in 0..<3 {
                    for kx in 0..<3 {
                        let v = load8(src + ky * rs + kx)
                        a0.addProduct(v, SIMD8<Float>(repeating: w[0]))
                        a1.addProduct(v, SIMD8<Float>(repeating: w[1]))
                        a2.addProduct(v, SIMD8<Float>(repeating: w[2]))
                        a3.addProduct(v, SIMD8<Float>(repeating: w[3]))
                        w += oc
                    }
                }
            }
            let d = out + o0 * length + j
            store8(a0, d); store8(a1, d + length); store8(a2, d + 2 * length); store8(a3, d + 3 * length)
            j += 8
        }
    }
}

/// The weight gradient of `samples` consecutive samples, added into grad [OC, C, 3, 3]:
/// grad[o, c, ky, kx] += Σ_s Σ_j dy_s[o, j] · x_s[c, j + ky·rowStride + kx], with x [samples,
/// C, planeLength] and dy [samples, OC, planeLength] both padded (dy's padding supplies the
/// zeros at the thrown-away positions). OC must be even. Each (2 output channels, c, ky)
/// keeps 2 x 3 vector accumulators over the samples' planes (4 x 3 left too few registers
/// and spilled), then sums their lanes in a fixed order: on small planes (7x7 is 8
/// vectors) several samples share one lane sum.
public func conv3x3WeightGradient(_ x: UnsafePointer<Float>, channels c: Int, _ dy: UnsafePointer<Float>, outChannels oc: Int,
                                  _ p: PaddedPlane, samples: Int, addingInto grad: UnsafeMutablePointer<Float>) {
    precondition(oc % 2 == 0, "conv3x3WeightGradient needs an even number of output channels, got \(oc)")
    let rs = p.rowStride, length = p.outLength, plane = p.planeLength
    let xSample = c * plane, dySample = oc * plane
    // 1 and 2, from run-time values: with literal offsets the compiler builds the load at
    // j + 1 from those at j and j + 2 with shuffles, and spills accumulators for them.
    let one = rs - p.width - 1, two = 2 * one
    for o0 in stride(from: 0, to: oc, by: 2) {
        for ci in 0..<c {
            for ky in 0..<3 {
                var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a02 = SIMD8<Float>()
                var a10 = SIMD8<Float>(), a11 = SIMD8<Float>(), a12 = SIMD8<Float>()
                for s in 0..<samples {
                    let src = x + s * xSample + ci * plane + ky * rs
                    let d0 = dy + s * dySample + o0 * plane + p.origin, d1 = d0 + plane
                    var j = 0
                    while j < length {
                        let x0 = load8(src + j), x1 = load8(src + j + one), x2 = load8(src + j + two)
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
