import FuzzTargets
#if canImport(Glibc)
import Glibc
#endif

// One libFuzzer executable for every reader; FUZZ_TARGET names the one to fuzz (launch/fuzz
// sets it), so that the targets differ only in FuzzTargets.

nonisolated(unsafe) private var target: FuzzTarget?

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    let name = getenv("FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let chosen = FuzzTarget(rawValue: name) else {
        let known = FuzzTarget.allCases.map(\.rawValue).joined(separator: " ")
        fputs("fuzz: set FUZZ_TARGET to one of: \(known) (got '\(name)')\n", stderr)
        exit(64)
    }
    chosen.prepare()
    target = chosen
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    target?.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
