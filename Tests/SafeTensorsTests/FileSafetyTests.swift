import Foundation
import SafeTensors
import XCTest

/// Hostile files: what is named like a checkpoint but cannot be read, is huge, or was edited
/// consistently enough to pass a data-only checksum; and links planted where the writer
/// creates its temporary file.
final class FileSafetyTests: XCTestCase {
    private var directory = ""

    override func setUp() {
        directory = makeTemporaryDirectory(for: self)
    }

    private func writeGood(_ path: String) throws {
        try SafeTensorsWriter.write([.init(name: "a", shape: [4], values: [1, 2, 3, 4] as [Float]),
                                     .init(name: "b", shape: [4], values: [5, 6, 7, 8] as [Float])],
                                    metadata: ["step": "100"], to: path)
    }

    /// Asserts that reading `path` fails as a file that cannot be read (not as damage),
    /// with a message that starts with the path and contains every fragment.
    private func assertCannotRead(_ path: String, _ fragments: String..., file: StaticString = #filePath, line: UInt = #line) {
        assertLoadFails(path, damaged: false, fragments, file: file, line: line)
    }

    // MARK: Files that cannot be read are not damaged files

    func testFIFONamedLikeACheckpointIsRefusedWithoutBlocking() {
        let path = directory + "/step-00000001.safetensors"
        XCTAssertEqual(mkfifo(path, 0o644), 0)
        assertCannotRead(path, "not a regular file (a FIFO)")
    }

    func testDirectoryNamedLikeACheckpointIsNotDamage() throws {
        let path = directory + "/step-00000002.safetensors"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        assertCannotRead(path, "not a regular file (a directory)")
    }

    func testCharacterDeviceIsRefusedWithoutReadingIt() {
        // /dev/zero would be read for ever (and claims size 0); it must be refused by type.
        assertCannotRead("/dev/zero", "not a regular file (a character device)")
    }

    func testMissingFileNamesOpenAndErrno() {
        let path = directory + "/missing.safetensors"
        assertCannotRead(path, "open failed: No such file or directory (errno \(ENOENT))")
    }

    // MARK: Nothing is read before its size is known

    func testHugeSparseFileIsRefusedFromItsHeaderWithoutReadingIt() throws {
        let path = directory + "/step-00000003.safetensors"
        try writeGood(path)
        let size = readBytes(path).count
        XCTAssertEqual(truncate(path, 1 << 40), 0, "a 1 TiB sparse file")
        let before = try bytesRead()
        assertDamaged(path, "trailing garbage: \((1 << 40) - size) bytes after the end of the data section")
        XCTAssertLessThan(try bytesRead() - before, 1 << 20, "read no more than the header")
    }

    func testHugeDataSectionClaimIsTruncationNotAnAllocation() {
        // The header claims 2^62 bytes of data; the file has 8.
        let huge = 1 << 60
        let path = directory + "/claim.safetensors"
        writeBytes(handMadeFile(header: #"{"a":{"dtype":"F32","shape":[\#(huge)],"data_offsets":[0,\#(huge * 4)]}}"#,
                                data: [UInt8](repeating: 0, count: 8)), to: path)
        assertDamaged(path, "truncated: data section needs \(huge * 4) bytes, file has 8")
    }

    func testSoundHeaderClaimingMoreThanMemoryIsRefusedWithoutAllocating() {
        let claimed = 1 << 43  // 8 TiB, in a sparse file of exactly the size the header needs
        let path = directory + "/claim-memory.safetensors"
        let bytes = handMadeFile(header: #"{"a":{"dtype":"U8","shape":[\#(claimed)],"data_offsets":[0,\#(claimed)]}}"#, data: [])
        writeBytes(bytes, to: path)
        XCTAssertEqual(truncate(path, off_t(bytes.count + claimed)), 0)
        assertCannotRead(path, "data section of \(claimed) bytes is larger than this machine's memory")
    }

    func testOffsetsAndShapesNearIntMaxAreDamageNotATrap() {
        let max = Int.max
        let cases: [(String, String)] = [
            (#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#, "has a negative or too large dimension"),
            (#"{"a":{"dtype":"F64","shape":[1],"data_offsets":[\#(max - 8),\#(max)]}}"#, "gap in data section"),
            (#"{"a":{"dtype":"U8","shape":[\#(max)],"data_offsets":[0,\#(max)]}}"#, "truncated: data section needs \(max) bytes"),
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[\#(max - 8)],"data_offsets":[8,\#(max)]}}"#,
             "truncated"),
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,92233720368547758070]}}"#, "entry needs"),
            (#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}"#, "negative or too large dimension"),
        ]
        for (index, (header, fragment)) in cases.enumerated() {
            let path = "\(directory)/near-max-\(index).safetensors"
            writeBytes(handMadeFile(header: header, data: [UInt8](repeating: 0, count: 8)), to: path)
            assertDamaged(path, fragment)
        }
    }

    func testDeeplyNestedHeaderIsDamageNotAStackOverflow() {
        let depth = 200_000
        let header = #"{"a":{"dtype":"F32","shape":"# + String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
            + #","data_offsets":[0,0]}}"#
        let path = directory + "/deep.safetensors"
        writeBytes(handMadeFile(header: header, data: []), to: path)
        assertDamaged(path, "header is nested more than 16 levels deep")
    }

    // MARK: The checksum covers the header

    func testSwappedTensorNamesFailTheChecksum() throws {
        let path = directory + "/swapped.safetensors"
        try writeGood(path)
        var bytes = readBytes(path)
        let a = try XCTUnwrap(bytes.firstRange(of: Array(#""a":{"#.utf8)))
        let b = try XCTUnwrap(bytes.firstRange(of: Array(#""b":{"#.utf8)))
        bytes[a.lowerBound + 1] = UInt8(ascii: "b")
        bytes[b.lowerBound + 1] = UInt8(ascii: "a")
        writeBytes(bytes, to: path)
        assertDamaged(path, "checksum mismatch")
    }

    func testEditedMetadataFailsTheChecksum() throws {
        let path = directory + "/edited.safetensors"
        try writeGood(path)
        var bytes = readBytes(path)
        let value = try XCTUnwrap(bytes.firstRange(of: Array(#""step":"100""#.utf8)))
        bytes[value.upperBound - 4] = UInt8(ascii: "9")
        writeBytes(bytes, to: path)
        assertDamaged(path, "checksum mismatch")
    }

    /// Files of format version 1 carry a CRC-32 of the data section only; they still load.
    func testDataOnlyChecksumOfOlderFilesStillLoads() throws {
        let data = [Float(1), 2].withUnsafeBytes { Array($0) }
        let crc = String(referenceCRC32(data), radix: 16)
        let digits = String(repeating: "0", count: 8 - crc.count) + crc
        let header = #"{"__metadata__":{"ddptrain.data_crc32":""# + digits + #""},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let path = directory + "/version1.safetensors"
        writeBytes(handMadeFile(header: header, data: data), to: path)
        let file = try SafeTensorsFile(path: path)
        XCTAssertEqual(file.checksumVerified, true)
        XCTAssertEqual(try file.values(of: "a", as: Float.self), [1, 2])

        writeBytes(handMadeFile(header: header, data: data.dropLast() + [0x7F]), to: path)
        assertDamaged(path, "checksum mismatch")
    }

    // MARK: Temporary files are created exclusively

    func testLinkPlantedAtTheOldPredictableTemporaryNameIsNotWrittenThrough() throws {
        let outside = makeTemporaryDirectory(for: self) + "/victim"
        writeBytes([1, 2, 3], to: outside)
        let path = directory + "/step-00000004.safetensors"
        let planted = "\(directory)/.step-00000004.safetensors.tmp.\(getpid())"
        XCTAssertEqual(symlink(outside, planted), 0)
        try writeGood(path)
        XCTAssertEqual(readBytes(outside), [1, 2, 3], "the file outside the run dir is untouched")
        XCTAssertEqual(try SafeTensorsFile(path: path).values(of: "a", as: Float.self), [1, 2, 3, 4])
        var status = stat()
        XCTAssertEqual(lstat(planted, &status), 0)
        XCTAssertEqual(status.st_mode & S_IFMT, S_IFLNK, "the planted link is left alone")
    }

    /// Bytes this process has read with read/pread so far (`rchar` of /proc/self/io): what
    /// the reader read, unlike the resident-memory high-water mark, which earlier tests may
    /// already have raised past anything this one would add.
    private func bytesRead() throws -> Int {
        let io = try String(contentsOfFile: "/proc/self/io", encoding: .utf8)
        let line = try XCTUnwrap(io.split(separator: "\n").first { $0.hasPrefix("rchar:") }, io)
        return try XCTUnwrap(Int(line.dropFirst("rchar:".count).trimmingCharacters(in: .whitespaces)), io)
    }
}
