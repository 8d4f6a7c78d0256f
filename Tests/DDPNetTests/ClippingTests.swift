import DDPNet
import XCTest

/// Each call works on its own copy of the values, through array-owned storage.
private func norm(_ values: [Float]) -> Double {
    values.withUnsafeBufferPointer { globalNorm($0.baseAddress!, count: $0.count) }
}

private func exactNorm(_ values: [Float]) -> Double { values.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot() }

final class ClippingTests: XCTestCase {
    func testGlobalNormInFloat64() {
        XCTAssertEqual(norm([3, 4]), 5)
        // 10^6 + 3 copies of 1e-3 (the tail is not a multiple of 4): Float32 accumulation
        // would be off in the fourth digit.
        let n = 1_000_003
        XCTAssertEqual(norm([Float](repeating: 1e-3, count: n)), Double(Float(1e-3)) * Double(n).squareRoot(), accuracy: 1e-9)
    }

    func testClipGradNormScalesToMaxNorm() {
        let values: [Float] = (0..<1001).map { Float($0 % 13) - 6 }
        var g = values
        let result = g.withUnsafeMutableBufferPointer { clipGradNorm($0.baseAddress!, count: $0.count, maxNorm: 1) }
        XCTAssertEqual(result.normBeforeClip, exactNorm(values), accuracy: 1e-9)
        XCTAssertTrue(result.clipped)
        XCTAssertEqual(norm(g), 1, accuracy: 1e-5)
        // Every value is scaled by the same maxNorm / (norm + 1e-6).
        XCTAssertEqual(Double(g[0]) / Double(values[0]), 1 / (exactNorm(values) + 1e-6), accuracy: 1e-7)
        XCTAssertEqual(Double(g[1000]) / Double(values[1000]), 1 / (exactNorm(values) + 1e-6), accuracy: 1e-7)
    }

    func testClipGradNormLeavesSmallGradientsAlone() {
        let values: [Float] = [0.1, -0.2, 0.3]
        var g = values
        let result = g.withUnsafeMutableBufferPointer { clipGradNorm($0.baseAddress!, count: $0.count, maxNorm: 1) }
        XCTAssertFalse(result.clipped)
        XCTAssertEqual(result.normBeforeClip, exactNorm(values), accuracy: 1e-12)
        XCTAssertEqual(g, values)
    }

    func testClipGradValue() {
        var g: [Float] = [0.5, -3, 2, -0.25, .nan]
        XCTAssertTrue(g.withUnsafeMutableBufferPointer { clipGradValue($0.baseAddress!, count: $0.count, limit: 1) })
        XCTAssertEqual(Array(g.prefix(4)), [0.5, -1, 1, -0.25])
        XCTAssertTrue(g[4].isNaN)
        XCTAssertFalse(g.withUnsafeMutableBufferPointer { clipGradValue($0.baseAddress!, count: 4, limit: 1) })
        XCTAssertEqual(Array(g.prefix(4)), [0.5, -1, 1, -0.25])
    }

    func testNonFiniteDetection() {
        let n = 1027
        var g = (0..<n).map { Float($0) - 500 }
        g[7] = .greatestFiniteMagnitude
        func finite(_ values: [Float]) -> Bool { values.withUnsafeBufferPointer { isFinite($0.baseAddress!, count: $0.count) } }
        XCTAssertTrue(finite(g))
        for bad in [Float.nan, .infinity, -.infinity, -Float.nan] {
            for position in [0, 513, n - 1] {
                var h = g
                h[position] = bad
                XCTAssertFalse(finite(h), "\(bad) at \(position)")
            }
        }
    }
}
