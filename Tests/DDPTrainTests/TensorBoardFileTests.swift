import DDPTrain
import Foundation
import XCTest

/// The TensorBoard event file's framing and messages against known bytes; its creation and
/// write failures. (MultiRankTests.TensorBoardTests reads a real run's files with TensorBoard.)
final class TensorBoardFileTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("ddptrain-tensorboard-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    /// CRC-32C check value and RFC 3720's test vectors (B.4); masked values as TensorBoard's
    /// own reader computes them (tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c).
    func testCRC32CKnownVectors() {
        XCTAssertEqual(TFRecord.crc32c(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(TFRecord.crc32c([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(TFRecord.crc32c([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(TFRecord.crc32c((0..<32).map { UInt8($0) }), 0x46DD_794E)
        XCTAssertEqual(TFRecord.crc32c((0..<32).reversed().map { UInt8($0) }), 0x113F_DB5C)
        XCTAssertEqual(TFRecord.maskedCRC(Array("123456789".utf8)), 0xC78A_B0E5)
        XCTAssertEqual(TFRecord.maskedCRC([UInt8](repeating: 0, count: 32)), 0x0FD7_FFFA)
    }

    /// A record: length, masked CRC of the length, data, masked CRC of the data.
    func testRecordFraming() {
        let data = Array("123456789".utf8)
        let record = TFRecord.frame(data)
        XCTAssertEqual(record.count, 8 + 4 + 9 + 4)
        XCTAssertEqual(Array(record[0..<8]), [9, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(Array(record[8..<12]), le32(TFRecord.maskedCRC(record[0..<8])))
        XCTAssertEqual(Array(record[12..<21]), data)
        XCTAssertEqual(Array(record[21...]), [0xE5, 0xB0, 0x8A, 0xC7])
    }

    /// The messages, byte for byte as Python's protobuf serializes them
    /// (tensorboard.compat.proto.event_pb2).
    func testEventsEncodeAsProtobufDoes() {
        XCTAssertEqual(EventProto.event(wallTime: 1.5, step: 3, .scalars([("a/b", 0.25)])),
                       [9, 0, 0, 0, 0, 0, 0, 248, 63, 16, 3, 42, 12, 10, 10, 10, 3, 97, 47, 98, 21, 0, 0, 128, 62])
        XCTAssertEqual(EventProto.event(wallTime: 1_764_636_000.25, step: 0, .fileVersion("brain.Event:2")),
                       [9, 0, 0, 16, 88, 141, 75, 218, 65, 26, 13] + Array("brain.Event:2".utf8))
        XCTAssertEqual(EventProto.event(wallTime: 2, step: 300, .sessionStart), [9, 0, 0, 0, 0, 0, 0, 0, 64, 16, 172, 2, 58, 2, 8, 1])
        XCTAssertEqual(EventProto.event(wallTime: 2, step: -1, .scalars([])),
                       [9, 0, 0, 0, 0, 0, 0, 0, 64, 16, 255, 255, 255, 255, 255, 255, 255, 255, 255, 1, 42, 0])
    }

    /// A full disk while writing an event stops the run with exit 74 and the file's name, as
    /// for a line of metrics.jsonl.
    func testWriteFailureIsExit74WithTheReason() throws {
        let fd = open("/dev/full", O_WRONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let writer = EventFileWriter(descriptor: fd, path: "/dev/full")
        XCTAssertThrowsError(try writer.write(step: 7, wallTime: 1, scalars: [("train/loss", 1)])) { error in
            let failure = error as? TrainingError
            XCTAssertEqual(failure?.exitCode, 74)
            XCTAssertEqual(failure?.message, "cannot log step 7: /dev/full: cannot write: No space left on device (errno 28); "
                           + "the run stops here (make room, then resume with --resume auto)")
        }
    }

    /// Each run starts a file of its own, named to sort after every earlier one (TensorBoard
    /// reads them in name order), also within the same second; the earlier files are kept,
    /// and a link planted under a name is neither written through nor reused.
    func testEachRunStartsANewFileThatSortsLast() throws {
        let directory = scratch.appendingPathComponent("tensorboard").path
        let first = try EventFileWriter(directory: directory, wallTime: 1_764_636_000.5)
        try first.write(step: 1, wallTime: 1_764_636_000.6, scalars: [("train/loss", 2)])
        let second = try EventFileWriter(directory: directory, wallTime: 1_764_636_000.7)
        XCTAssertGreaterThan(second.path, first.path)
        XCTAssertTrue(second.path.contains("/events.out.tfevents.1764636001."), second.path)

        let target = scratch.appendingPathComponent("precious").path
        try Data("precious\n".utf8).write(to: URL(fileURLWithPath: target))
        let planted = directory + "/events.out.tfevents.1764639999.planted"
        try FileManager.default.createSymbolicLink(atPath: planted, withDestinationPath: target)
        let third = try EventFileWriter(directory: directory, wallTime: 1_764_636_002)
        try third.write(step: 2, wallTime: 1_764_636_002, scalars: [("train/loss", 1)])
        XCTAssertTrue(third.path.contains("/events.out.tfevents.1764640000."), third.path)
        XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "precious\n")

        let files = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        XCTAssertEqual(files.count, 4)
        XCTAssertEqual(files.map { directory + "/" + $0 }.filter { $0 != planted }, [first.path, second.path, third.path])
        // The first file: a version record, then the session start and the step's scalars.
        XCTAssertEqual(try records(first.path).count, 3)
        XCTAssertEqual(try records(second.path).count, 0, "started by its first step")
    }

    func le32(_ v: UInt32) -> [UInt8] { [UInt8(v & 255), UInt8(v >> 8 & 255), UInt8(v >> 16 & 255), UInt8(v >> 24)] }

    /// The records of a TFRecord file, each checked against its CRCs.
    func records(_ path: String) throws -> [[UInt8]] {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        var out: [[UInt8]] = [], at = 0
        while at < bytes.count {
            let header = bytes[at..<at + 8]
            let length = header.reversed().reduce(0) { $0 << 8 | Int($1) }
            XCTAssertEqual(Array(bytes[at + 8..<at + 12]), le32(TFRecord.maskedCRC(header)))
            let data = Array(bytes[at + 12..<at + 12 + length])
            XCTAssertEqual(Array(bytes[at + 12 + length..<at + 16 + length]), le32(TFRecord.maskedCRC(data)))
            out.append(data)
            at += 16 + length
        }
        return out
    }
}
