/// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011):
/// a counter-based generator. The output is a pure function of (key, counter), so any
/// random number can be computed anywhere without state to save, split or synchronize
/// (DESIGN I7). Keys are (seed, purpose); counters say which number is meant.
public struct Philox: Sendable {
    public let key0: UInt32
    public let key1: UInt32

    /// What the numbers are for; mixed into the key so that streams never overlap.
    public enum Purpose: UInt32, Sendable {
        case initialization = 1
        case shuffle = 2
        case dropout = 3
        case synthetic = 4
        case test = 5
    }

    public init(key0: UInt32, key1: UInt32) {
        self.key0 = key0
        self.key1 = key1
    }

    public init(seed: UInt64, purpose: Purpose) {
        // Mix the purpose into the high key word with an odd constant so nearby seeds and
        // purposes give unrelated keys.
        key0 = UInt32(truncatingIfNeeded: seed)
        key1 = UInt32(truncatingIfNeeded: seed >> 32) ^ (purpose.rawValue &* 0x9E37_79B9)
    }

    @inline(__always)
    private static func mulhilo(_ a: UInt32, _ b: UInt32) -> (hi: UInt32, lo: UInt32) {
        let p = UInt64(a) &* UInt64(b)
        return (UInt32(truncatingIfNeeded: p >> 32), UInt32(truncatingIfNeeded: p))
    }

    /// Four 32-bit random words for the 128-bit counter (c0, c1, c2, c3).
    @inline(__always)
    public func block(_ c0: UInt32, _ c1: UInt32, _ c2: UInt32, _ c3: UInt32) -> (UInt32, UInt32, UInt32, UInt32) {
        var x0 = c0, x1 = c1, x2 = c2, x3 = c3
        var k0 = key0, k1 = key1
        for _ in 0..<10 {
            let (hi0, lo0) = Philox.mulhilo(0xD251_1F53, x0)
            let (hi1, lo1) = Philox.mulhilo(0xCD9E_8D57, x2)
            x0 = hi1 ^ x1 ^ k0
            x1 = lo1
            x2 = hi0 ^ x3 ^ k1
            x3 = lo0
            k0 = k0 &+ 0x9E37_79B9
            k1 = k1 &+ 0xBB67_AE85
        }
        return (x0, x1, x2, x3)
    }

    /// A float uniform in [0, 1) from a 32-bit word (24 random bits, exactly representable).
    @inline(__always)
    public static func unit(_ word: UInt32) -> Float { Float(word >> 8) * (1.0 / 16_777_216.0) }

    /// A double uniform in (0, 1) from a 32-bit word; never 0, so log() is safe.
    @inline(__always)
    public static func openUnit(_ word: UInt32) -> Double { (Double(word) + 0.5) * (1.0 / 4_294_967_296.0) }

    /// Fills `out` with uniform [0, 1) floats of stream (a, b), starting at element 0.
    public func fillUniform(_ out: UnsafeMutablePointer<Float>, count: Int, stream a: UInt32, _ b: UInt32 = 0) {
        var i = 0
        var blockIndex: UInt64 = 0
        while i < count {
            let r = block(UInt32(truncatingIfNeeded: blockIndex), a, b, UInt32(truncatingIfNeeded: blockIndex >> 32))
            out[i] = Philox.unit(r.0)
            if i + 1 < count { out[i + 1] = Philox.unit(r.1) }
            if i + 2 < count { out[i + 2] = Philox.unit(r.2) }
            if i + 3 < count { out[i + 3] = Philox.unit(r.3) }
            i += 4
            blockIndex += 1
        }
    }

    /// Standard normal doubles of stream (a, b), by Box-Muller over pairs of words.
    public func fillNormal(_ out: UnsafeMutablePointer<Double>, count: Int, stream a: UInt32, _ b: UInt32 = 0) {
        var i = 0
        var blockIndex: UInt64 = 0
        while i < count {
            let r = block(UInt32(truncatingIfNeeded: blockIndex), a, b, UInt32(truncatingIfNeeded: blockIndex >> 32))
            let (z0, z1) = Philox.boxMuller(r.0, r.1)
            let (z2, z3) = Philox.boxMuller(r.2, r.3)
            out[i] = z0
            if i + 1 < count { out[i + 1] = z1 }
            if i + 2 < count { out[i + 2] = z2 }
            if i + 3 < count { out[i + 3] = z3 }
            i += 4
            blockIndex += 1
        }
    }

    /// Two independent standard normals from two 32-bit words (Box-Muller).
    @inline(__always)
    public static func boxMuller(_ u: UInt32, _ v: UInt32) -> (Double, Double) {
        let radius = (-2.0 * log(openUnit(u))).squareRoot()
        let angle = 2.0 * Double.pi * openUnit(v)
        return (radius * cos(angle), radius * sin(angle))
    }

    /// A uniform integer in 0..<bound from word `index` of stream (a, b) (Lemire's
    /// multiply-shift on 64 bits built from two words; bias below 2^-32 for our bounds).
    @inline(__always)
    public func below(_ bound: Int, index: UInt64, stream a: UInt32, _ b: UInt32 = 0) -> Int {
        let r = block(UInt32(truncatingIfNeeded: index), a, b, UInt32(truncatingIfNeeded: index >> 32))
        let x = (UInt64(r.0) << 32) | UInt64(r.1)
        return Int(x.multipliedFullWidth(by: UInt64(bound)).high)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
