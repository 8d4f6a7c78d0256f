/// Unaligned vector loads and stores of floats, and the lane shuffles the kernels share.

@inline(__always)
func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always)
func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

@inline(__always)
func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}

@inline(__always)
func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
}

@inline(__always)
func load4(_ p: UnsafePointer<Float>) -> SIMD4<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD4<Float>.self)
}

@inline(__always)
func store4(_ v: SIMD4<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD4<Float>.self)
}

/// (a₀, b₀, a₁, b₁, ...), the inverse of `evenHalf` and `oddHalf`: a perfect unshuffle
/// rotates a lane's index bits right by one, so three of them (four index bits) rotate it
/// left by one, taking lane 8h + q to 2q + h.
@inline(__always)
func interleave(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD16<Float> {
    var v = SIMD16(lowHalf: a, highHalf: b)
    for _ in 0..<3 { v = SIMD16(lowHalf: v.evenHalf, highHalf: v.oddHalf) }
    return v
}

/// `interleave` of 4 + 4 lanes (three index bits: two unshuffles).
@inline(__always)
func interleave(_ a: SIMD4<Float>, _ b: SIMD4<Float>) -> SIMD8<Float> {
    var v = SIMD8(lowHalf: a, highHalf: b)
    for _ in 0..<2 { v = SIMD8(lowHalf: v.evenHalf, highHalf: v.oddHalf) }
    return v
}
