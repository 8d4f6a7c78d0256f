import Foundation
import FuzzTargets
import XCTest

/// Every input the fuzzers found a crash with (Fuzz/regressions/<target>/) and every seed
/// (Fuzz/corpus/<target>/) goes through the same function the fuzzer calls, built without
/// the fuzzer. Passing means the reader returned or threw for each; a crash ends the test
/// process, and the last "replaying" line printed names the input that did it.
final class FuzzRegressionTests: XCTestCase {
    func testSafetensors() throws { try replay(.safetensors) }
    func testCheckpoint() throws { try replay(.checkpoint) }
    func testIDX() throws { try replay(.idx) }
    func testCIFAR10() throws { try replay(.cifar10) }
    func testCache() throws { try replay(.cache) }
    func testConfig() throws { try replay(.config) }
    func testModel() throws { try replay(.model) }

    func testEveryTargetHasSeeds() throws {
        for target in FuzzTarget.allCases {
            XCTAssertFalse(try inputs(of: target, in: "corpus").isEmpty, "Fuzz/corpus/\(target.rawValue) is empty")
        }
    }

    private static let fuzzDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    private func inputs(of target: FuzzTarget, in folder: String) throws -> [URL] {
        let directory = Self.fuzzDirectory.appendingPathComponent(folder).appendingPathComponent(target.rawValue)
        guard FileManager.default.fileExists(atPath: directory.path) else { return [] }
        return try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)
            .filter { !$0.lastPathComponent.hasPrefix(".") }
            .sorted { $0.path < $1.path }
    }

    private func replay(_ target: FuzzTarget) throws {
        for input in try inputs(of: target, in: "corpus") + inputs(of: target, in: "regressions") {
            let relative = input.pathComponents.suffix(3).joined(separator: "/")
            // Unbuffered, so that the line is out before a crash.
            FileHandle.standardError.write(Data("replaying Fuzz/\(relative)\n".utf8))
            target.run([UInt8](try Data(contentsOf: input)))
        }
    }
}
