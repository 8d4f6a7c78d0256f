import COpenBLAS

/// Row-major single-precision GEMM: C = alpha * op(A) * op(B) + beta * C, with op(A) of
/// shape [m, k] and op(B) of shape [k, n]. Leading dimensions are those of the stored
/// (untransposed) row-major matrices.
@inline(__always)
public func sgemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                  alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                  b: UnsafePointer<Float>, ldb: Int,
                  beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
    if m == 0 || n == 0 { return }
    if k == 0 {
        // BLAS leaves C scaled by beta when k is 0; do it ourselves to be explicit.
        for i in 0..<m { for j in 0..<n { c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j] } }
        return
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// OpenBLAS's thread pool, which we size per rank.
public enum BLASThreads {
    public static func set(_ count: Int) { openblas_set_num_threads(Int32(count)) }
    public static var current: Int { Int(openblas_get_num_threads()) }
    /// OpenBLAS's build configuration, e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64".
    public static var configuration: String {
        guard let c = openblas_get_config() else { return "unknown" }
        return String(cString: c).trimmingCharacters(in: " ")
    }
    public static var coreName: String {
        guard let c = openblas_get_corename() else { return "unknown" }
        return String(cString: c)
    }
}

/// OpenBLAS picks its kernels by CPU model when it loads (DYNAMIC_ARCH). A release older
/// than the CPU does not know its model and falls back to its Prescott (SSE3) kernels: Debian
/// 12's 0.3.21 does so on Sapphire and Emerald Rapids Xeons, where its sgemm then runs at a
/// third of what its SkylakeX kernels reach (32 against 114 GFLOP/s on one core, measured).
/// `chooseByFeatures()` picks the kernels by the CPU's features instead, as later OpenBLAS
/// releases do for models they do not know, and as OPENBLAS_CORETYPE would.
public enum BLASCore {
    /// Whether `chooseByFeatures()` replaced OpenBLAS's Prescott fallback, for doctor to say.
    public nonisolated(unsafe) private(set) static var replacedPrescott = false

    /// Call before any BLAS call. Leaves OpenBLAS alone when OPENBLAS_CORETYPE is set (the
    /// user chose), when it knew the CPU (any choice but Prescott), when it was not built
    /// with DYNAMIC_ARCH, or when the CPU has nothing better than SSE3.
    public static func chooseByFeatures() {
        guard getenv("OPENBLAS_CORETYPE") == nil, BLASThreads.coreName == "Prescott",
              let chosen = coreType(forFeatures: cpuFeatures()),
              let library = dlopen(nil, RTLD_NOW),
              let quit = dlsym(library, "gotoblas_dynamic_quit"),
              let initialize = dlsym(library, "gotoblas_dynamic_init") else { return }
        typealias Entry = @convention(c) () -> Void
        // gotoblas_dynamic_init reads OPENBLAS_CORETYPE; quit first, or it keeps its choice.
        setenv("OPENBLAS_CORETYPE", chosen, 1)
        unsafeBitCast(quit, to: Entry.self)()
        unsafeBitCast(initialize, to: Entry.self)()
        unsetenv("OPENBLAS_CORETYPE")
        replacedPrescott = true
    }

    /// OpenBLAS's name for the best kernels these CPU flags (/proc/cpuinfo's) run, or nil.
    public static func coreType(forFeatures features: Set<String>) -> String? {
        if ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"].allSatisfy(features.contains) { return "SkylakeX" }
        if ["avx2", "fma"].allSatisfy(features.contains) { return "Haswell" }
        if features.contains("avx") { return "SandyBridge" }
        if features.contains("sse4_2") { return "Nehalem" }
        return nil
    }

    /// The flags of the first processor in /proc/cpuinfo (empty where there is none).
    public static func cpuFeatures() -> Set<String> {
        guard let file = fopen("/proc/cpuinfo", "r") else { return [] }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0, let line {
            let text = String(cString: line)
            guard text.hasPrefix("flags") else { continue }
            guard let colon = text.firstIndex(of: ":") else { return [] }
            return Set(text[text.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).map(String.init))
        }
        return []
    }
}

extension String {
    func trimmingCharacters(in character: Character) -> String {
        var s = Substring(self)
        while s.first == character { s.removeFirst() }
        while s.last == character { s.removeLast() }
        return String(s)
    }
}

/// One 512x512x512 sgemm on matrices allocated once: the unit of every sgemm peak that
/// doctor, bench and microbench compare against.
public final class SgemmProbe {
    public static let size = 512
    /// FLOPs of one run.
    public static let flops = 2.0 * Double(size * size * size)
    /// Bytes of its three matrices.
    public static let bytes = 3 * size * size * 4
    private let a: FloatBuffer, b: FloatBuffer, c: FloatBuffer

    public init() {
        let count = SgemmProbe.size * SgemmProbe.size
        a = FloatBuffer(capacity: count); b = FloatBuffer(capacity: count); c = FloatBuffer(capacity: count)
        for i in 0..<count { a.pointer[i] = Float(i % 13) * 0.01; b.pointer[i] = Float(i % 7) * 0.02 }
    }

    /// Seconds of one run with `threads` BLAS threads (the setting is restored after).
    public func seconds(threads: Int = 1) -> Double {
        let saved = BLASThreads.current
        if saved != threads { BLASThreads.set(threads) }
        defer { if saved != threads { BLASThreads.set(saved) } }
        let m = SgemmProbe.size
        let start = Clock.seconds()
        sgemm(m: m, n: m, k: m, a: a.pointer, lda: m, b: b.pointer, ldb: m, c: c.pointer, ldc: m)
        return Clock.seconds() - start
    }
}

/// sgemm GFLOP/s on 512x512x512 matrices with `threads` BLAS threads: the best of runs
/// over at least `window` seconds and at least 6 runs. Not of 6 runs back to back: on a
/// shared machine the core's speed drifts over tenths of a second (best of 6 runs read
/// 84 to 155 GFLOP/s in consecutive processes), and a peak is the best the core gave.
public func sgemmPeakGFLOPS(threads: Int = 1, window: Double = 0.3) -> Double {
    let probe = SgemmProbe()
    var best = Double.infinity, runs = 0
    let start = Clock.seconds()
    while runs < 6 || Clock.seconds() - start < window {
        best = min(best, probe.seconds(threads: threads))
        runs += 1
    }
    return SgemmProbe.flops / best / 1e9
}

#if canImport(Glibc)
import Glibc
#endif
