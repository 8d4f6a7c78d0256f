import Foundation
import FuzzTargets
import XCTest

/// Every input a fuzzer crashed with (Fuzz/regressions/TARGET/) and every seed
/// (Fuzz/corpus/TARGET/) goes through the function the fuzzer calls, built without the
/// fuzzer. Each input runs in a child process (this test binary, running
/// `testReplayOneInput`), so that a crash fails one assertion that names the input instead
/// of ending the whole test run.
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

    /// In a child started by `replay`: the one input named by the environment. In the suite
    /// itself (no such variables): every seed of every target, in this process; seeds are
    /// sound files, so this runs the readers' whole path on them without a child.
    func testReplayOneInput() throws {
        let environment = ProcessInfo.processInfo.environment
        guard let name = environment[Self.targetVariable], let file = environment[Self.fileVariable] else {
            for target in FuzzTarget.allCases {
                for input in try inputs(of: target, in: "corpus") {
                    target.run([UInt8](try Data(contentsOf: input)))
                }
            }
            return
        }
        let target = try XCTUnwrap(FuzzTarget(rawValue: name))
        target.run([UInt8](try Data(contentsOf: URL(fileURLWithPath: file))))
        print(Self.replayedMarker)
    }

    /// Printed by the child once the input went through, so that a child that ran no test
    /// (a filter that matched nothing) does not count as a pass.
    private static let replayedMarker = "fuzz replay: input done"


    private static let targetVariable = "DDPTRAIN_FUZZ_REPLAY_TARGET"
    private static let fileVariable = "DDPTRAIN_FUZZ_REPLAY_FILE"
    /// Far above what any input takes (milliseconds); only a hang reaches it.
    private static let childTimeLimit = 30.0

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
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("fuzz-replay-\(UUID().uuidString).log")
        defer { try? FileManager.default.removeItem(at: log) }
        for input in try inputs(of: target, in: "corpus") + inputs(of: target, in: "regressions") {
            let name = "Fuzz/" + input.pathComponents.suffix(3).joined(separator: "/")
            FileManager.default.createFile(atPath: log.path, contents: nil)
            let output = try FileHandle(forWritingTo: log)
            let child = Process()
            child.executableURL = URL(fileURLWithPath: "/proc/self/exe")
            child.arguments = ["FuzzRegressionTests.FuzzRegressionTests/testReplayOneInput"]
            var environment = ProcessInfo.processInfo.environment
            environment[Self.targetVariable] = target.rawValue
            environment[Self.fileVariable] = input.path
            environment["SWIFT_BACKTRACE"] = "enable=no"  // the fatal error's message is enough here
            child.environment = environment
            child.standardOutput = output
            child.standardError = output
            try child.run()
            let deadline = Date().addingTimeInterval(Self.childTimeLimit)
            while child.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
            let hung = child.isRunning
            if hung { child.terminate() }
            child.waitUntilExit()
            try output.close()
            let printed = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            let message = printed.split(separator: "\n").first { $0.contains("Fatal error") || $0.contains("error:") }
            if hung {
                XCTFail("\(name): the \(target.rawValue) reader did not finish in \(Int(Self.childTimeLimit)) s")
            } else if child.terminationReason == .uncaughtSignal {
                XCTFail("\(name): the \(target.rawValue) reader crashed (signal \(child.terminationStatus))"
                        + (message.map { ": \($0)" } ?? ""))
            } else if child.terminationStatus != 0 {
                XCTFail("\(name): replay exited with status \(child.terminationStatus)\n\(printed.suffix(2000))")
            } else if !printed.contains(Self.replayedMarker) {
                XCTFail("\(name): the replay child ran no replay (status 0 without its marker)\n\(printed.suffix(2000))")
            }
        }
    }
}
