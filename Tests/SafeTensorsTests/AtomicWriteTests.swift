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
            XCTAssertTrue(error.description.hasPrefix("\(path): open(\(notADirectory)/.step-00000001.safetensors.tmp."), error.description)
            XCTAssertTrue(error.description.hasSuffix(") failed: Not a directory (errno \(ENOTDIR))"), error.description)
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
            XCTAssertTrue("\(error)".hasPrefix("\(path): write(\(directory)/.step-00000100.safetensors.tmp."), "\(error)")
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

        // A crash in the middle of the data leaves half a file under a temporary name.
        let leftover = directory + "/.step-00000200.safetensors.tmp.0123456789abcdef"
        writeBytes(Array(newBytes.prefix(newBytes.count - 5)), to: leftover)
        let leftoverName = URL(fileURLWithPath: leftover).lastPathComponent
        XCTAssertTrue(leftoverName.hasPrefix("."), "hidden from directory scans")
        XCTAssertFalse(leftoverName.hasSuffix(".safetensors"), "never matched as a checkpoint name")
        assertDamaged(leftover, "truncated")
        assertHoldsVersion(1, path)

        // The next write publishes only the complete file (under a name of its own).
        try writeVersion(2, to: path)
        XCTAssertEqual(directoryListing(), [leftoverName, "step-00000200.safetensors"])
        XCTAssertEqual(readBytes(path), newBytes)
    }

    func testTemporaryFileIsCreatedExclusivelyAndNeverThroughALink() throws {
        let outside = makeTemporaryDirectory(for: self) + "/victim"
        writeBytes([1, 2, 3], to: outside)
        let path = directory + "/config.json"
        let guessed = directory + "/.config.json.tmp.guessed"
        XCTAssertEqual(symlink(outside, guessed), 0)
        // The guessed name is taken: the next suffix is tried.
        var suffixes = ["guessed", "fresh"].makeIterator()
        try AtomicFile.write(Array("{}".utf8), to: path, temporarySuffix: { suffixes.next()! })
        XCTAssertEqual(readBytes(path), Array("{}".utf8))
        XCTAssertEqual(readBytes(outside), [1, 2, 3], "never written through the link")
        var status = stat()
        XCTAssertEqual(lstat(path, &status), 0)
        XCTAssertEqual(status.st_mode & S_IFMT, S_IFREG)
        XCTAssertEqual(status.st_mode & 0o777, 0o644 & ~currentUmask())

        // Every attempt taken: a bounded number of tries, then the error names the call.
        var attempts = 0
        XCTAssertThrowsError(try AtomicFile.write([1], to: path, temporarySuffix: { attempts += 1; return "guessed" })) { error in
            XCTAssertEqual((error as? SafeTensorsError)?.kind, .systemCall(call: "open", errno: EEXIST), "\(error)")
            XCTAssertEqual("\(error)", "\(path): open(\(guessed)) failed: File exists (errno \(EEXIST))")
        }
        XCTAssertEqual(attempts, 16)
        XCTAssertEqual(readBytes(outside), [1, 2, 3])
        XCTAssertEqual(readBytes(path), Array("{}".utf8), "the old file is untouched")
        XCTAssertEqual(directoryListing(), [".config.json.tmp.guessed", "config.json"])
    }

    func testTemporaryNamesAreUnpredictable() {
        let names = Set((0..<100).map { _ in AtomicFile.randomSuffix() })
        XCTAssertEqual(names.count, 100)
        XCTAssertTrue(names.allSatisfy { $0.count == 16 && $0.allSatisfy(\.isHexDigit) }, "\(names.first!)")
    }

    private func currentUmask() -> mode_t {
        let mask = umask(0)
        umask(mask)
        return mask
    }
}
