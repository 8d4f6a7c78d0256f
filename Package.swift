// swift-tools-version:6.0
import PackageDescription

// Layers of the code, bottom up (DESIGN.md): C system libraries; kernels; networks;
// data; distribution; training; the command line. Each target knows only those below it.
let package = Package(
    name: "ddptrain",
    products: [
        .executable(name: "ddptrain", targets: ["ddptrain"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
    ],
    targets: [
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        .target(name: "DDPKernels", dependencies: ["COpenBLAS"],
                swiftSettings: [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]),
        .target(name: "DDPNet", dependencies: ["DDPKernels", "Yams"],
                swiftSettings: [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]),
        .target(name: "DDPData", dependencies: ["DDPKernels", "CZlib"]),
        .target(name: "DDPComm", dependencies: ["CMPI"]),
        .target(name: "SafeTensors", dependencies: ["CZlib"]),
        .target(name: "DDPTrain", dependencies: ["DDPNet", "DDPData", "DDPComm", "SafeTensors", "Yams"]),
        .executableTarget(name: "ddptrain", dependencies: [
            "DDPTrain", "DDPComm", "DDPNet", "DDPData", "DDPKernels", "SafeTensors",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "DDPKernelsTests", dependencies: ["DDPKernels"]),
        .testTarget(name: "DDPNetTests", dependencies: ["DDPNet"]),
        .testTarget(name: "DDPDataTests", dependencies: ["DDPData"]),
        .testTarget(name: "DDPCommTests", dependencies: ["DDPComm"]),
        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors"]),
        .testTarget(name: "DDPTrainTests", dependencies: ["DDPTrain"]),
        // Runs the real binary under mpirun; needs `swift build -c release` first.
        .testTarget(name: "MultiRankTests", dependencies: ["SafeTensors"]),
    ]
)
