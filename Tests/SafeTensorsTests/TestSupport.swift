import Foundation
import SafeTensors
import XCTest

/// A fresh directory under /tmp, removed when the test ends.
func makeTemporaryDirectory(for test: XCTestCase) -> String {
    var template = Array("/tmp/safetensors-test-XXXXXX".utf8CString)
    let directory = String(cString: mkdtemp(&template)!)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
    return directory
}

func readBytes(_ path: String) -> [UInt8] {
    Array(FileManager.default.contents(atPath: path) ?? Data())
}

func writeBytes(_ bytes: [UInt8], to path: String) {
    XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)), "cannot create \(path)")
}

/// A safetensors file built by hand from the spec: length prefix, header padded with
/// spaces to an 8-byte boundary, data.
func handMadeFile(header: String, data: [UInt8]) -> [UInt8] {
    var headerBytes = Array(header.utf8)
    while headerBytes.count % 8 != 0 { headerBytes.append(UInt8(ascii: " ")) }
    return littleEndianBytes(UInt64(headerBytes.count)) + headerBytes + data
}

func littleEndianBytes<Value: FixedWidthInteger>(_ value: Value) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

/// CRC-32 (IEEE, as zlib computes it), written out bit by bit so the test does not trust
/// the code it checks.
func referenceCRC32(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes {
        crc ^= UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
    }
    return ~crc
}

/// Asserts that reading `path` fails as damaged, with a message that starts with the path
/// and contains every fragment.
func assertDamaged(_ path: String, _ fragments: String..., file: StaticString = #filePath, line: UInt = #line) {
    assertLoadFails(path, damaged: true, fragments, file: file, line: line)
}

/// Asserts that reading `path` fails, as damage or (`damaged: false`) as a file that cannot be
/// read, with a message that starts with the path and contains every fragment.
func assertLoadFails(_ path: String, damaged: Bool, _ fragments: [String], file: StaticString = #filePath, line: UInt = #line) {
    do throws(SafeTensorsError) {
        let loaded = try SafeTensorsFile(path: path)
        XCTFail("\(path) loaded with tensors \(loaded.tensors.map(\.name)), expected \(damaged ? "damage" : "a read failure")",
                file: file, line: line)
    } catch {
        if damaged {
            XCTAssertEqual(error.kind, .damaged, "\(error)", file: file, line: line)
        } else {
            XCTAssertNotEqual(error.kind, .damaged, "\(error)", file: file, line: line)
        }
        XCTAssertTrue(error.description.hasPrefix(path + ": "), "\(error)", file: file, line: line)
        for fragment in fragments {
            XCTAssertTrue(error.description.contains(fragment), "\"\(error)\" lacks \"\(fragment)\"", file: file, line: line)
        }
    }
}
