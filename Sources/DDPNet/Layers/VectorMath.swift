// exp, expm1 and erf for the activation loops, in plain arithmetic that the compiler
// vectorizes: libm's expf/tanhf/erff are opaque calls, one element at a time, and made
// tanh 15x and GELU 20x slower than ReLU. Accuracy: a few ulp for exp and expm1 (expm1
// stays relative-accurate near 0); erf to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26,
// as PyTorch's own vectorized erf). Arguments are clamped to [-87, 88]: enough for the
// activations, whose results saturate long before.

/// x = n·ln2 + r with |r| <= ln2/2; returns r and 2^n.
@inline(__always)
private func reduce(_ x: Float) -> (r: Float, scale: Float) {
    // Adding 1.5·2^23 rounds to an integer that sits in the low mantissa bits.
    let magic: Float = 12_582_912
    let k = x * 1.442_695_04 + magic
    let n = k - magic
    // ln2 split in two (Cody & Waite) so that n·ln2 is exact in its high part.
    let r = (x - n * 0.693_145_751_953_125) - n * 1.428_606_765_330_187e-6
    let scale = Float(bitPattern: (k.bitPattern &- 0x4B40_0000 &+ 127) << 23)
    return (r, scale)
}

/// e^r - 1 for |r| <= ln2/2 (Taylor to r^7; the remainder is below 6e-9).
@inline(__always)
private func expm1Reduced(_ r: Float) -> Float {
    let p = 1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (1 / 5040)))))
    return r + r * r * p
}

@inline(__always)
func vexp(_ x: Float) -> Float {
    let (r, scale) = reduce(min(max(x, -87), 88))
    return scale + scale * expm1Reduced(r)
}

@inline(__always)
func vexpm1(_ x: Float) -> Float {
    let (r, scale) = reduce(min(max(x, -87), 88))
    // 2^n·(e^r - 1) + (2^n - 1): exact enough for n = 0, no cancellation otherwise.
    return scale * expm1Reduced(r) + (scale - 1)
}

@inline(__always)
func verf(_ x: Float) -> Float {
    let z = abs(x)
    let t = 1 / (1 + 0.327_591_1 * z)
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))))
    let y = 1 - poly * vexp(-z * z)
    return x < 0 ? -y : y
}
