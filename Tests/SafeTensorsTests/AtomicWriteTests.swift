import Foundation
import SafeTensors
import XCTest

/// A failed or interrupted write never leaves a partial file under the final name and never
/// harms the file already there. The tests run as root, so failures come from things root
/// cannot override: a non-directory parent, a file size limit, a directory in the way.
final class AtomicWriteTests: XCTestCase {
    private var directory = ""

    override func setUp() {
        directory = makeTemporaryDirectory(for: self)
    }

    private func writeVersion(_ version: Float, count: Int = 4, to path: String) throws {
        try SafeTensorsWriter.write([.init(name: "w", shape: [count], values: [Float](repeating: version, count: count))],
                                    metadata: ["version": "\(version)"], to: path)
    }

    private func assertHoldsVersion(_ version: Float, _ path: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(try SafeTensorsFile(path: path).values(of: "w", as: Float.self).first, version, file: file, line: line)
    }

    private func directoryListing() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    func testParentThatIsARegularFileFailsWithTheSyscallNamed() {
        let notADirectory = directory + "/plain-file"
        writeBytes([1, 2, 3], to: notADirectory)
        let path = notADirectory + "/step-00000001.safetensors"
        XCTAssertThrowsError(try writeVersion(1, to: path)) { error in
            let error = error as! SafeTensorsError
            XCTAssertEqual(error.kind, .systemCall(call: "open", errno: ENOTDIR))
            XCTAssertEqual(error.description, "\(path): open(\(SafeTensorsWriter.temporaryPath(for: path))) failed: "
                                            + "Not a directory (errno \(ENOTDIR))")
        }
        XCTAssertEqual(directoryListing(), ["plain-file"])
        XCTAssertEqual(readBytes(notADirectory), [1, 2, 3])
    }

    func testFailureInTheMiddleOfTheDataRemovesTheTemporaryAndKeepsTheOldFile() throws {
        let path = directory + "/step-00000100.safetensors"
        try writeVersion(1, to: path)
        let oldBytes = readBytes(path)

        // Past RLIMIT_FSIZE write() fails with EFBIG (after a short write), even for root;
        // SIGXFSZ is ignored so that the failure is an error and not the death of the process.
        var savedLimit = rlimit()
        XCTAssertEqual(getrlimit(Int32(RLIMIT_FSIZE.rawValue), &savedLimit), 0)
        var smallLimit = savedLimit
        smallLimit.rlim_cur = 4096
        let savedHandler = signal(SIGXFSZ, SIG_IGN)
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &smallLimit), 0)
        XCTAssertThrowsError(try writeVersion(2, count: 16_384, to: path)) { error in
            XCTAssertEqual((error as? SafeTensorsError)?.kind, .systemCall(call: "write", errno: EFBIG), "\(error)")
            XCTAssertTrue("\(error)".hasPrefix("\(path): write(\(SafeTensorsWriter.temporaryPath(for: path))) failed: "))
        }
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &savedLimit), 0)
        signal(SIGXFSZ, savedHandler)

        XCTAssertEqual(directoryListing(), ["step-00000100.safetensors"], "no temporary file is left")
        XCTAssertEqual(readBytes(path), oldBytes)
        assertHoldsVersion(1, path)
    }

    func testFailedRenameRemovesTheTemporary() throws {
        let path = directory + "/occupied.safetensors"
        try FileManager.default.createDirectory(atPath: path + "/inside", withIntermediateDirectories: true)
        XCTAssertThrowsError(try writeVersion(1, to: path)) { error in
            guard case .systemCall(call: "rename", errno: _) = (error as! SafeTensorsError).kind else {
                return XCTFail("expected rename to fail: \(error)")
            }
        }
        XCTAssertEqual(directoryListing(), ["occupied.safetensors"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path), ["inside"])
    }

    func testLeftoverTemporaryFromACrashIsNeverTakenForTheCheckpoint() throws {
        let path = directory + "/step-00000200.safetensors"
        try writeVersion(1, to: path)
        try writeVersion(2, to: directory + "/source")
        let newBytes = readBytes(directory + "/source")
        try FileManager.default.removeItem(atPath: directory + "/source")

        // A crash in the middle of the data leaves half a file under the temporary name.
        let leftover = SafeTensorsWriter.temporaryPath(for: path)
        writeBytes(Array(newBytes.prefix(newBytes.count - 5)), to: leftover)
        let leftoverName = URL(fileURLWithPath: leftover).lastPathComponent
        XCTAssertTrue(leftoverName.hasPrefix("."), "hidden from directory scans")
        XCTAssertFalse(leftoverName.hasSuffix(".safetensors"), "never matched as a checkpoint name")
        assertDamaged(leftover, "truncated")
        assertHoldsVersion(1, path)

        // The next write replaces the leftover and publishes only the complete file.
        try writeVersion(2, to: path)
        XCTAssertEqual(directoryListing(), ["step-00000200.safetensors"])
        XCTAssertEqual(readBytes(path), newBytes)
    }
}
