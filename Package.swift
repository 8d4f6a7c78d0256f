// swift-tools-version:6.0
import PackageDescription
import Foundation

// Release builds of the numeric targets use AVX2 and FMA when the build machine has them
// (swiftc -target-cpu haswell: the x86-64-v3 feature set, which swiftc does not accept by
// that name; every AVX2 Intel and AMD Zen CPU has it), so that element-wise loops vectorize
// 8 floats wide; a machine without them gets baseline x86-64 (SSE2) code. Where the build
// machine also has AVX-512 (F, CD, BW, DQ, VL: the x86-64-v4 set, skylake-avx512 to swiftc)
// the convolution kernels run 16 floats wide (DDPTRAIN_AVX512, DESIGN.md "Kernels"), with
// the same bits as the 8-wide ones. A binary built with AVX2 or AVX-512 dies with SIGILL on
// a CPU without it: build where you run (launch/setup does).
// DDPTRAIN_TARGET_CPU overrides: a CPU name for -target-cpu (AVX-512 kernels when the name
// is skylake-avx512 or a later AVX-512 Intel CPU), or "baseline".
let numericFlags: [String] = {
    // -O, not -Ounchecked: preconditions and bounds stay checked (a wrong batch traps with
    // a message rather than writing past a buffer); entry points check once per call and
    // the inner loops run over unsafe pointers, so the checks cost next to nothing.
    var flags = ["-O", "-Xcc", "-fno-math-errno"]
    let requested = ProcessInfo.processInfo.environment["DDPTRAIN_TARGET_CPU"]
    let avx512CPUs: Set<String> = ["skylake-avx512", "cascadelake", "cooperlake", "icelake-server", "icelake-client",
                                   "tigerlake", "sapphirerapids", "emeraldrapids", "graniterapids", "znver4", "znver5"]
    if let cpu = requested, !cpu.isEmpty {
        if cpu != "baseline" { flags += ["-target-cpu", cpu] }
        if avx512CPUs.contains(cpu) { flags += ["-D", "DDPTRAIN_AVX512"] }
        return flags
    }
    #if arch(x86_64) && os(Linux)
    if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
       let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) {
        let features = Set(line.split(separator: " ").map(String.init))
        let v3 = ["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave", "popcnt"]
        let v4 = v3 + ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"]
        if v4.allSatisfy(features.contains) {
            flags += ["-target-cpu", "skylake-avx512", "-D", "DDPTRAIN_AVX512"]
        } else if v3.allSatisfy(features.contains) {
            flags += ["-target-cpu", "haswell"]
        }
    }
    #endif
    return flags
}()

// Layers of the code, bottom up (DESIGN.md): C system libraries and DDPSystem (checked file
// calls, memory); kernels; networks; data; distribution; training; the command line. Each
// target knows only those below it.
let package = Package(
    name: "ddptrain",
    products: [
        .executable(name: "ddptrain", targets: ["ddptrain"]),
        // For the libFuzzer package in Fuzz/ (docs/FUZZING.md).
        .library(name: "FuzzTargets", targets: ["FuzzTargets"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
    ],
    targets: [
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        // The stop-signal handler: async-signal-safe, so in C.
        .target(name: "CStopSignal"),
        // A cache prefetch hint for the kernels' streaming passes (Swift has none).
        .target(name: "CPrefetch"),
        .target(name: "DDPSystem", dependencies: ["CStopSignal"]),
        .target(name: "DDPKernels", dependencies: ["COpenBLAS", "CPrefetch"],
                swiftSettings: [.unsafeFlags(numericFlags, .when(configuration: .release))]),
        .target(name: "DDPNet", dependencies: ["DDPKernels", "DDPSystem", "CPrefetch", "Yams"],
                swiftSettings: [.unsafeFlags(numericFlags, .when(configuration: .release))]),
        .target(name: "DDPData", dependencies: ["DDPKernels", "DDPSystem", "CZlib"]),
        // Distribution (DESIGN layer 6): everything ranks do together, and the only module that calls MPI.
        .target(name: "DDPComm", dependencies: ["CMPI", "DDPNet", "DDPKernels", "DDPSystem"]),
        .target(name: "SafeTensors", dependencies: ["DDPSystem", "CZlib"]),
        .target(name: "DDPTrain", dependencies: ["DDPNet", "DDPData", "DDPComm", "SafeTensors", "DDPSystem", "CStopSignal", "Yams"]),
        .executableTarget(name: "ddptrain", dependencies: [
            "DDPTrain", "DDPComm", "DDPNet", "DDPData", "DDPKernels", "DDPSystem", "SafeTensors",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // One function per reader of untrusted files, shared by the fuzzers and FuzzRegressionTests.
        .target(name: "FuzzTargets", dependencies: ["DDPTrain", "DDPNet", "DDPData", "DDPKernels", "SafeTensors", "CZlib"]),

        .testTarget(name: "DDPKernelsTests", dependencies: ["DDPKernels"]),
        .testTarget(name: "DDPNetTests", dependencies: ["DDPNet"]),
        .testTarget(name: "DDPDataTests", dependencies: ["DDPData"]),
        .testTarget(name: "DDPCommTests", dependencies: ["DDPComm"]),
        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors", "DDPSystem"]),
        .testTarget(name: "DDPTrainTests", dependencies: ["DDPTrain", "DDPNet", "DDPKernels", "DDPData", "SafeTensors"]),
        // Runs the real binary under mpirun; needs `swift build -c release` first.
        .testTarget(name: "MultiRankTests", dependencies: ["SafeTensors"]),
        // Replays Fuzz/corpus and Fuzz/regressions through FuzzTargets, without the fuzzer.
        .testTarget(name: "FuzzRegressionTests", dependencies: ["FuzzTargets"]),
    ]
)
