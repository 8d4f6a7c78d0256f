// swift-tools-version:5.4
// 5.4, not later: from 5.5 on SwiftPM renames an executable's entry point to <module>_main
// and links with --defsym main=<module>_main, which fails here: a fuzzer's main comes from
// libFuzzer, and -parse-as-library emits none.
import PackageDescription

// One libFuzzer executable for the readers of untrusted files; FUZZ_TARGET picks the reader
// (docs/FUZZING.md). Not part of
// the main package so that its builds never see the fuzzer sanitizer; build with
//
//     swift build -c release -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
//
// or just run launch/fuzz. Each target's logic is in the main package's FuzzTargets module,
// which the regression tests replay without the fuzzer.

let package = Package(
    name: "ddptrain-fuzz",
    dependencies: [.package(name: "ddptrain", path: "..")],
    targets: [
        .executableTarget(name: "fuzz", dependencies: [.product(name: "FuzzTargets", package: "ddptrain")], path: "Sources/fuzz"),
    ]
)
