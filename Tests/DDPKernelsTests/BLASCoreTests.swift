import DDPKernels
import XCTest

/// OpenBLAS never runs its Prescott (SSE3) fallback on a CPU that has better: the kernels
/// by feature set, and OpenBLAS re-initialized with them on this machine.
final class BLASCoreTests: XCTestCase {
    func testCoreTypeByFeatures() {
        let v3: Set = ["sse4_2", "avx", "avx2", "fma"]
        XCTAssertEqual(BLASCore.coreType(forFeatures: v3.union(["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"])), "SkylakeX")
        // AVX-512 without VL and BW (Knights Landing) is not SkylakeX's set.
        XCTAssertEqual(BLASCore.coreType(forFeatures: v3.union(["avx512f", "avx512cd"])), "Haswell")
        XCTAssertEqual(BLASCore.coreType(forFeatures: v3), "Haswell")
        XCTAssertEqual(BLASCore.coreType(forFeatures: ["sse4_2", "avx"]), "SandyBridge")
        XCTAssertEqual(BLASCore.coreType(forFeatures: ["sse4_2"]), "Nehalem")
        XCTAssertNil(BLASCore.coreType(forFeatures: ["sse3"]))
        XCTAssertNil(BLASCore.coreType(forFeatures: []))
    }

    func testThisMachineDoesNotRunThePrescottFallback() throws {
        let features = BLASCore.cpuFeatures()
        XCTAssertFalse(features.isEmpty, "no flags line in /proc/cpuinfo")
        BLASCore.chooseByFeatures()
        // A user's OPENBLAS_CORETYPE stands, whatever it names.
        if getenv("OPENBLAS_CORETYPE") == nil, BLASCore.coreType(forFeatures: features) != nil {
            XCTAssertNotEqual(BLASThreads.coreName, "Prescott", "OpenBLAS runs its SSE3 kernels on a CPU with \(BLASCore.coreType(forFeatures: features)!)'s features")
        }
        // And sgemm still computes: a 3x2 times 2x2 product.
        let a: [Float] = [1, 2, 3, 4, 5, 6], b: [Float] = [1, 0, 0, 1]
        var c = [Float](repeating: 0, count: 6)
        sgemm(m: 3, n: 2, k: 2, a: a, lda: 2, b: b, ldb: 2, c: &c, ldc: 2)
        XCTAssertEqual(c, a)
    }
}
