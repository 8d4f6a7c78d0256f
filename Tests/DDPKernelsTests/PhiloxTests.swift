import DDPKernels
import XCTest

final class PhiloxTests: XCTestCase {
    /// Known-answer vectors from the Random123 distribution (kat_vectors, philox4x32 10 rounds).
    func testKnownAnswers() {
        let zero = Philox(key0: 0, key1: 0)
        XCTAssertTrue(zero.block(0, 0, 0, 0) == (0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8))
        let ones = Philox(key0: 0xffff_ffff, key1: 0xffff_ffff)
        XCTAssertTrue(ones.block(0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff) == (0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd))
        let pi = Philox(key0: 0xa409_3822, key1: 0x299f_31d0)
        XCTAssertTrue(pi.block(0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344) == (0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1))
    }

    func testUniformMomentsAndRange() {
        let g = Philox(seed: 42, purpose: .test)
        let n = 200_000
        let out = FloatBuffer(capacity: n)
        g.fillUniform(out.pointer, count: n, stream: 7)
        var sum = 0.0, sumSq = 0.0
        for i in 0..<n {
            let u = Double(out.pointer[i])
            XCTAssertTrue(u >= 0 && u < 1)
            sum += u; sumSq += u * u
        }
        let mean = sum / Double(n), variance = sumSq / Double(n) - mean * mean
        // Standard error of the mean is sqrt(1/12 / n) ≈ 6.5e-4; allow 5 of them.
        XCTAssertEqual(mean, 0.5, accuracy: 5 * (1.0 / 12 / Double(n)).squareRoot())
        XCTAssertEqual(variance, 1.0 / 12, accuracy: 0.002)
    }

    func testNormalMoments() {
        let g = Philox(seed: 1, purpose: .test)
        let n = 200_000
        let out = DoubleBuffer(capacity: n)
        g.fillNormal(out.pointer, count: n, stream: 3)
        var sum = 0.0, sumSq = 0.0
        for i in 0..<n { sum += out.pointer[i]; sumSq += out.pointer[i] * out.pointer[i] }
        let mean = sum / Double(n), variance = sumSq / Double(n) - mean * mean
        XCTAssertEqual(mean, 0, accuracy: 5 / Double(n).squareRoot())
        XCTAssertEqual(variance, 1, accuracy: 5 * (2 / Double(n)).squareRoot())
    }

    func testStreamsDifferByPurposeAndSeed() {
        let a = Philox(seed: 5, purpose: .dropout).block(0, 0, 0, 0)
        let b = Philox(seed: 5, purpose: .shuffle).block(0, 0, 0, 0)
        let c = Philox(seed: 6, purpose: .dropout).block(0, 0, 0, 0)
        XCTAssertFalse(a == b)
        XCTAssertFalse(a == c)
    }
}
