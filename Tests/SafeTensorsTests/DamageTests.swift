import Foundation
import SafeTensors
import XCTest

/// Every kind of damage is refused with a message naming the file and the problem.
final class DamageTests: XCTestCase {
    private var directory = ""
    private var goodBytes: [UInt8] = []
    /// Where the data section of `goodBytes` starts.
    private var dataStart = 0

    override func setUpWithError() throws {
        directory = makeTemporaryDirectory(for: self)
        let path = directory + "/good.safetensors"
        try SafeTensorsWriter.write([.init(name: "w", shape: [4, 4], values: (0..<16).map(Float.init)),
                                     .init(name: "b", shape: [4], values: [1, 2, 3, 4] as [Float])],
                                    metadata: ["step": "100"], to: path)
        goodBytes = readBytes(path)
        dataStart = 8 + Int(goodBytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        XCTAssertEqual(goodBytes.count - dataStart, 80)
        XCTAssertEqual(try SafeTensorsFile(path: path).checksumVerified, true)
    }

    private func damagedFile(_ bytes: [UInt8], _ name: String = #function) -> String {
        let path = "\(directory)/\(name.prefix { $0 != "(" }).safetensors"
        writeBytes(bytes, to: path)
        return path
    }

    func testTruncationAnywhereIsDetected() {
        let headerLength = dataStart - 8
        assertDamaged(damagedFile([], "empty"), "truncated: file has 0 bytes, the header length prefix alone needs 8")
        assertDamaged(damagedFile(Array(goodBytes[..<5]), "inPrefix"), "truncated: file has 5 bytes")
        assertDamaged(damagedFile(Array(goodBytes[..<8]), "atPrefixEnd"),
                      "truncated: header needs \(headerLength) bytes, file has 0 after the length prefix")
        assertDamaged(damagedFile(Array(goodBytes[..<(dataStart - 10)]), "inHeader"),
                      "truncated: header needs \(headerLength) bytes, file has \(headerLength - 10)")
        assertDamaged(damagedFile(Array(goodBytes[..<dataStart]), "atDataStart"),
                      "truncated: data section needs 80 bytes, file has 0")
        assertDamaged(damagedFile(Array(goodBytes.dropLast(1)), "lastByte"),
                      "truncated: data section needs 80 bytes, file has 79")
    }

    func testFlippedDataByteFailsTheChecksum() {
        for position in [dataStart, dataStart + 41, goodBytes.count - 1] {
            var bytes = goodBytes
            bytes[position] ^= 0x10
            assertDamaged(damagedFile(bytes, "flipped\(position)"), "checksum mismatch: header says 0x", ", file gives 0x")
        }
    }

    func testHeaderThatIsNotJSON() {
        assertDamaged(damagedFile(handMadeFile(header: #"{"w": {"dtype": "F32", "shape": [1], "#, data: [0, 0, 0, 0])),
                      "header is not valid JSON")
        var notAnObject = goodBytes
        notAnObject[8] = UInt8(ascii: "[")
        assertDamaged(damagedFile(notAnObject, "bracket"), "header is not valid JSON")
        var invalidUTF8 = goodBytes
        invalidUTF8[10] = 0xFF
        assertDamaged(damagedFile(invalidUTF8, "utf8"), "header is not valid UTF-8")
        assertDamaged(damagedFile(handMadeFile(header: "[1, 2]", data: []), "array"), "header is not valid JSON")
    }

    func testTrailingGarbage() {
        assertDamaged(damagedFile(goodBytes + [0, 1, 2]), "trailing garbage: 3 bytes after the end of the data section")
    }

    func testOverlappingGappedAndOutOfRangeOffsets() {
        let eightBytes = [UInt8](repeating: 0, count: 8)
        assertDamaged(damagedFile(handMadeFile(
            header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            data: eightBytes), "overlap"), #"tensors "a" [0, 8] and "b" [4, 8] overlap"#)
        assertDamaged(damagedFile(handMadeFile(
            header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: eightBytes), "gap"),
            "gap in data section: bytes 0..<4 belong to no tensor")
        assertDamaged(damagedFile(handMadeFile(
            header: #"{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}"#, data: eightBytes), "beyondEnd"),
            "truncated: data section needs 16 bytes, file has 8")
        assertDamaged(damagedFile(handMadeFile(
            header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, data: eightBytes), "reversed"),
            #"tensor "a": data_offsets [8, 0] are not [begin, end] with 0 <= begin <= end"#)
        assertDamaged(damagedFile(handMadeFile(
            header: #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: eightBytes), "sizeMismatch"),
            #"tensor "a": data_offsets [0, 8] span 8 bytes, but F32 [3] needs 12"#)
        var hugeLength = goodBytes
        hugeLength.replaceSubrange(0..<8, with: littleEndianBytes(UInt64(1) << 40))
        assertDamaged(damagedFile(hugeLength, "hugeHeaderLength"),
                      "header length 1099511627776 exceeds the limit of 100000000 bytes")
    }

    func testUnknownDtypeAndMalformedEntries() {
        let fourBytes = [UInt8](repeating: 0, count: 4)
        assertDamaged(damagedFile(handMadeFile(
            header: #"{"a":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}"#, data: fourBytes), "dtype"),
            #"tensor "a": unknown dtype "F99""#)
        assertDamaged(damagedFile(handMadeFile(
            header: #"{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#, data: fourBytes), "fractionalShape"),
            #"tensor "a": entry needs a string dtype"#)
        assertDamaged(damagedFile(handMadeFile(
            header: #"{"__metadata__":{"step":100},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            data: fourBytes), "metadataNumber"),
            "__metadata__ is not an object of string values")
        var badChecksum = goodBytes
        let digits = Array(SafeTensorsWriter.checksumKey.utf8) + Array(#"":""#.utf8)
        let valueStart = badChecksum.firstRange(of: digits)!.upperBound
        badChecksum[valueStart] = UInt8(ascii: "z")
        assertDamaged(damagedFile(badChecksum, "checksumText"), "metadata ddptrain.file_crc32 is not 8 hex digits")
    }
}
