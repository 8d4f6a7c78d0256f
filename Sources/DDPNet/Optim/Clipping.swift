/// The global L2 norm of `count` values, accumulated in Float64. Four partial sums in a
/// fixed order keep it deterministic and let the loop pipeline.
public func globalNorm(_ g: UnsafePointer<Float>, count: Int) -> Double {
    var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    var i = 0
    while i + 4 <= count {
        let a = Double(g[i]), b = Double(g[i + 1]), c = Double(g[i + 2]), d = Double(g[i + 3])
        s0 += a * a; s1 += b * b; s2 += c * c; s3 += d * d
        i += 4
    }
    while i < count { s0 += Double(g[i]) * Double(g[i]); i += 1 }
    return ((s0 + s1) + (s2 + s3)).squareRoot()
}

/// PyTorch's clip_grad_norm_: when the global norm exceeds `maxNorm`, scales every value
/// by maxNorm / (norm + 1e-6). Returns the norm before clipping. A non-finite norm is
/// reported and nothing is scaled: the caller skips such steps (see `isFinite`).
@discardableResult
public func clipGradNorm(_ g: UnsafeMutablePointer<Float>, count: Int, maxNorm: Float) -> (normBeforeClip: Double, clipped: Bool) {
    let norm = globalNorm(g, count: count)
    guard norm.isFinite, norm > Double(maxNorm) else { return (norm, false) }
    let scale = Float(Double(maxNorm) / (norm + 1e-6))
    for i in 0..<count { g[i] *= scale }
    return (norm, true)
}

/// PyTorch's clip_grad_value_: clamps every value to [-limit, limit] (NaN stays NaN).
/// Returns whether any value changed.
@discardableResult
public func clipGradValue(_ g: UnsafeMutablePointer<Float>, count: Int, limit: Float) -> Bool {
    var changed: UInt8 = 0
    for i in 0..<count {
        let x = g[i]
        let outside = x > limit || x < -limit
        changed |= outside ? 1 : 0
        g[i] = x > limit ? limit : (x < -limit ? -limit : x)
    }
    return changed != 0
}

/// False when any of `count` values is NaN or infinite. Compares exponent bits with an
/// integer max, which vectorizes, instead of branching per value.
public func isFinite(_ g: UnsafePointer<Float>, count: Int) -> Bool {
    let exponentMask: UInt32 = 0x7F80_0000
    var largest: UInt32 = 0
    g.withMemoryRebound(to: UInt32.self, capacity: count) { bits in
        for i in 0..<count { largest = max(largest, bits[i] & exponentMask) }
    }
    return largest != exponentMask
}
