import DDPSystem
import Foundation

// TensorBoard event files, written without TensorFlow: a TFRecord file (each record framed
// by its length and two masked CRC-32C checksums) of `Event` protocol buffers. The four
// messages needed are encoded by hand below; their field numbers are those of TensorFlow's
// event.proto and summary.proto.

public enum TFRecord {
    /// CRC-32C (Castagnoli; reflected polynomial 0x82F63B78), the checksum TFRecord uses.
    public static func crc32c<Bytes: Sequence>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    private static let table: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 == 1 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// TFRecord stores the CRC rotated right by 15 bits plus a constant, so that a CRC of
    /// data that holds CRCs stays well distributed.
    public static func maskedCRC<Bytes: Sequence>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        let crc = crc32c(bytes)
        return ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }

    /// One record: length (UInt64, little-endian), masked CRC of those 8 bytes, the data,
    /// masked CRC of the data.
    public static func frame(_ data: [UInt8]) -> [UInt8] {
        let length = littleEndian(UInt64(data.count))
        return length + littleEndian(maskedCRC(length)) + data + littleEndian(maskedCRC(data))
    }
}

/// The protocol-buffer encoding of the event messages: varint keys and lengths, fixed-width
/// little-endian numbers.
public enum EventProto {
    /// What an event carries (the `what` oneof of Event).
    public enum Payload {
        /// The first event of a file: "brain.Event:2".
        case fileVersion(String)
        /// A Summary of simple values.
        case scalars([(tag: String, value: Float)])
        /// SessionLog{status: START}: TensorBoard drops what earlier files hold from this
        /// event's step on, which is how a resumed run replaces the steps it logs again.
        case sessionStart
    }

    /// Event{wall_time = 1, step = 2, file_version = 3, summary = 5, session_log = 7}.
    public static func event(wallTime: Double, step: Int64, _ payload: Payload) -> [UInt8] {
        var out = key(1, wireType: 1) + littleEndian(wallTime.bitPattern)
        if step != 0 { out += key(2, wireType: 0) + varint(UInt64(bitPattern: step)) }
        switch payload {
        case .fileVersion(let version):
            out += lengthDelimited(3, Array(version.utf8))
        case .scalars(let scalars):
            // Summary{value = 1, repeated}; Summary.Value{tag = 1, simple_value = 2}.
            out += lengthDelimited(5, scalars.flatMap { scalar in
                lengthDelimited(1, lengthDelimited(1, Array(scalar.tag.utf8)) + key(2, wireType: 5) + littleEndian(scalar.value.bitPattern))
            })
        case .sessionStart:
            out += lengthDelimited(7, key(1, wireType: 0) + varint(1))
        }
        return out
    }

    static func key(_ field: UInt64, wireType: UInt64) -> [UInt8] { varint(field << 3 | wireType) }

    static func lengthDelimited(_ field: UInt64, _ bytes: [UInt8]) -> [UInt8] {
        key(field, wireType: 2) + varint(UInt64(bytes.count)) + bytes
    }

    static func varint(_ value: UInt64) -> [UInt8] {
        var v = value, out: [UInt8] = []
        while v >= 0x80 { out.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        return out + [UInt8(v)]
    }
}

func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian, Array.init)
}

/// One events file of one run (rank 0), `DIR/events.out.tfevents.<unix time>.<host>`, created
/// exclusively and never through a link. A resumed run starts a new file beside the
/// earlier ones, as TensorBoard expects: its first step's session-start event tells
/// TensorBoard to drop what the earlier files hold from that step on.
public final class EventFileWriter {
    public let path: String
    private let descriptor: Int32
    /// The file's size after its last whole record.
    private var size: off_t = 0
    private var started = false

    public init(directory: String, wallTime: Double = ProcessClock.unixTime()) throws {
        if let failure = makeDirectories(directory) {
            throw TrainingError("cannot create \(failure.path ?? directory): \(failure.reason)", exitCode: ExitStatus.inputError)
        }
        let host = hostName().map { $0.isASCII && ($0.isLetter || $0.isNumber || "-.".contains($0)) ? $0 : "_" }
        let path = "\(directory)/\(EventFileWriter.prefix)\(try EventFileWriter.nameTime(directory: directory, now: Int(wallTime)))"
            + ".\(String(host))"
        switch createExclusively(path) {
        case .success(let fd): descriptor = fd
        case .failure(let failure): throw TrainingError("\(path): cannot create: \(failure.reason)", exitCode: ExitStatus.inputError)
        }
        self.path = path
    }

    static let prefix = "events.out.tfevents."

    /// The time in a new file's name: now, or one second past the newest events file's when
    /// that is not earlier (a resume within the same second, a clock set back). TensorBoard
    /// reads a folder's files in name order, and a resumed run's file must come last.
    static func nameTime(directory: String, now: Int) throws -> Int {
        let entries: [String]
        do {
            entries = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw TrainingError("\(directory): cannot list it: \(describe(error))", exitCode: ExitStatus.inputError)
        }
        // Names sort as text: a time with more digits than now's (a file planted or damaged by
        // hand, or from a clock centuries ahead) would sort before or after ours by its length,
        // not its time, and one past Int.max cannot be counted from at all.
        let times = entries.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count).prefix(while: \.isNumber)) }
        if let odd = times.first(where: { $0.count > String(now).count }) {
            throw TrainingError("\(directory): an event file is named for time \(odd), later than any clock time this run could "
                                + "take a name from (now \(now)); move it away", exitCode: ExitStatus.inputError)
        }
        let newest = times.compactMap { Int($0) }.max()
        guard let newest, newest >= now else { return now }
        return newest + 1
    }

    /// Writes into an open descriptor (tests: /dev/full).
    public init(descriptor: Int32, path: String) {
        self.descriptor = descriptor
        self.path = path
    }

    deinit { close(descriptor) }

    /// The scalars of one step. The first call starts the file (its version) and the run at
    /// that step (a session start).
    public func write(step: Int, wallTime: Double, scalars: [(tag: String, value: Float)]) throws {
        if !started {
            try append(EventProto.event(wallTime: wallTime, step: 0, .fileVersion("brain.Event:2")), what: "log step \(step)")
            try append(EventProto.event(wallTime: wallTime, step: Int64(step), .sessionStart), what: "log step \(step)")
            started = true
        }
        try append(EventProto.event(wallTime: wallTime, step: Int64(step), .scalars(scalars)), what: "log step \(step)")
    }

    /// One record in one write, so that a crash leaves whole records. A record that cannot
    /// be written (disk full, quota, I/O error) stops the run as a metrics line does: the
    /// file is cut back to its last whole record.
    private func append(_ event: [UInt8], what: String) throws {
        let record = TFRecord.frame(event)
        do {
            try writeEvery(record, to: descriptor, path: path)
            size += off_t(record.count)
        } catch let error as TrainingError {
            _ = ftruncate(descriptor, size)
            throw TrainingError("cannot \(what): \(error.message); the run stops here (make room, then resume with --resume auto)",
                                exitCode: ExitStatus.checkpointWriteFailed)
        }
    }
}

extension RunDirectory {
    /// Rank 0's TensorBoard event files.
    public var tensorboardPath: String { path + "/tensorboard" }
}
