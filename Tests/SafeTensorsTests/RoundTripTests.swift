import Foundation
import SafeTensors
import XCTest

final class RoundTripTests: XCTestCase {
    func testRoundTripOfEveryElementTypeWithScalarAndEmptyTensors() throws {
        let path = makeTemporaryDirectory(for: self) + "/step-00000100.safetensors"
        let weights: [Float] = [1.5, -2.25, 0, .infinity, -0.0, 3e-38]
        let tensors: [SafeTensorsWriter.Tensor] = [
            .init(name: "0.weight", shape: [2, 3], values: weights),
            .init(name: "lr", shape: [], values: [0.125 as Double]),
            .init(name: "step", shape: [1], values: [Int64.max]),
            .init(name: "counts", shape: [2], values: [Int32.min, 7]),
            .init(name: "mask", shape: [3], values: [0, 1, 255] as [UInt8]),
            .init(name: "empty", shape: [0], values: [Float]()),
            .init(name: "empty.matrix", shape: [0, 4], values: [Double]()),
        ]
        let metadata = ["step": "100", "config": "{\"lr\": 0.1}\n\t\"quoted\" \\ é"]
        try SafeTensorsWriter.write(tensors, metadata: metadata, to: path)

        let file = try SafeTensorsFile(path: path)
        XCTAssertEqual(file.checksumVerified, true)
        XCTAssertEqual(file.tensors.map(\.name), tensors.map(\.name), "data order is the order given")
        XCTAssertEqual(file.tensors.map(\.shape), tensors.map(\.shape))
        XCTAssertEqual(file.tensors.map(\.dtype), [.f32, .f64, .i64, .i32, .u8, .f32, .f64])
        XCTAssertEqual(try file.values(of: "0.weight", as: Float.self).map(\.bitPattern), weights.map(\.bitPattern))
        XCTAssertEqual(try file.values(of: "lr", as: Double.self), [0.125])
        XCTAssertEqual(try file.values(of: "step", as: Int64.self), [Int64.max])
        XCTAssertEqual(try file.values(of: "counts", as: Int32.self), [Int32.min, 7])
        XCTAssertEqual(try file.values(of: "mask", as: UInt8.self), [0, 1, 255])
        XCTAssertEqual(try file.values(of: "empty", as: Float.self), [])
        XCTAssertEqual(try file.values(of: "empty.matrix", as: Double.self), [])
        XCTAssertEqual(file.metadata["step"], "100")
        XCTAssertEqual(file.metadata["config"], metadata["config"])
        XCTAssertEqual(file.metadata.count, 3, "the caller's metadata plus the checksum")
    }

    func testTinyFileMatchesTheSpecByteForByte() throws {
        let path = makeTemporaryDirectory(for: self) + "/tiny.safetensors"
        try SafeTensorsWriter.write([.init(name: "a", shape: [2], values: [1, 2] as [Float])],
                                    metadata: ["k": "v"], to: path)
        let data = littleEndianBytes(Float(1).bitPattern) + littleEndianBytes(Float(2).bitPattern)
        func makeHeader(checksum: String) -> [UInt8] {
            let json = #"{"__metadata__":{"ddptrain.file_crc32":""# + checksum
                + #"","k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
            let padding = (8 - json.utf8.count % 8) % 8
            return Array(json.utf8) + [UInt8](repeating: UInt8(ascii: " "), count: padding)
        }
        // The CRC-32 of the whole file, its own 8 digits read as "00000000".
        let placeholder = makeHeader(checksum: "00000000")
        let crc = String(referenceCRC32(littleEndianBytes(UInt64(placeholder.count)) + placeholder + data), radix: 16)
        let header = makeHeader(checksum: String(repeating: "0", count: 8 - crc.count) + crc)

        let bytes = readBytes(path)
        XCTAssertEqual(Array(bytes[0..<8]), littleEndianBytes(UInt64(header.count)), "u64 little-endian header length")
        XCTAssertEqual(String(decoding: bytes[8..<(8 + header.count)], as: UTF8.self),
                       String(decoding: header, as: UTF8.self))
        XCTAssertEqual((8 + header.count) % 8, 0, "data section starts 8-byte aligned")
        XCTAssertEqual(Array(bytes[(8 + header.count)...]), data)
    }

    func testSameInputsGiveIdenticalBytes() throws {
        let directory = makeTemporaryDirectory(for: self)
        let values = (0..<1000).map { Float($0) * 0.37 }
        let metadata = Dictionary(uniqueKeysWithValues: (0..<50).map { ("key\($0)", "value \($0)") })
        for name in ["first", "second"] {
            try values.withUnsafeBytes { bytes in
                try SafeTensorsWriter.write([.init(name: "w", dtype: .f32, shape: [10, 100], bytes: bytes),
                                             .init(name: "b", shape: [3], values: [1, 2, 3] as [Int64])],
                                            metadata: metadata, to: "\(directory)/\(name).safetensors")
            }
        }
        let first = readBytes("\(directory)/first.safetensors")
        XCTAssertFalse(first.isEmpty)
        XCTAssertEqual(first, readBytes("\(directory)/second.safetensors"))
    }

    func testCopyValuesChecksNameTypeAndShape() throws {
        let path = makeTemporaryDirectory(for: self) + "/copy.safetensors"
        try SafeTensorsWriter.write([.init(name: "w", shape: [2, 3], values: (0..<6).map(Float.init))],
                                    metadata: [:], to: path)
        let file = try SafeTensorsFile(path: path)
        var destination = [Float](repeating: -1, count: 6)
        try destination.withUnsafeMutableBufferPointer { try file.copyValues(of: "w", shape: [2, 3], into: $0) }
        XCTAssertEqual(destination, [0, 1, 2, 3, 4, 5])

        let failures: [(String, () throws -> Void)] = [
            ("tensor \"w\" has shape [2, 3], expected [3, 2]", {
                var floats = [Float](repeating: 0, count: 6)
                try floats.withUnsafeMutableBufferPointer { buffer in
                    try file.copyValues(of: "w", shape: [3, 2], into: buffer)
                }
            }),
            ("tensor \"w\" has 6 elements, destination holds 5", {
                var floats = [Float](repeating: 0, count: 5)
                try floats.withUnsafeMutableBufferPointer { buffer in
                    try file.copyValues(of: "w", shape: [2, 3], into: buffer)
                }
            }),
            ("tensor \"w\" is F32, not F64", { _ = try file.values(of: "w", as: Double.self) }),
            ("no tensor named \"v\"", { _ = try file.values(of: "v", as: Float.self) }),
        ]
        for (expected, request) in failures {
            XCTAssertThrowsError(try request()) { error in
                XCTAssertEqual((error as? SafeTensorsError)?.kind, .invalidRequest)
                XCTAssertEqual("\(error)", "\(path): \(expected)")
            }
        }
    }

    func testWriterRejectsInconsistentInput() {
        let path = makeTemporaryDirectory(for: self) + "/bad.safetensors"
        let cases: [([SafeTensorsWriter.Tensor], [String: String], String)] = [
            ([.init(name: "w", shape: [2, 2], values: [1, 2, 3] as [Float])], [:],
             "tensor \"w\": 12 bytes given, F32 [2, 2] needs 16"),
            ([.init(name: "w", shape: [-1], values: [Float]())], [:],
             "tensor \"w\": shape [-1] has a negative or too large dimension"),
            ([.init(name: "w", shape: [1], values: [1] as [Float]), .init(name: "w", shape: [1], values: [1] as [Float])], [:],
             "tensor name \"w\" is reserved or used twice"),
            ([], [SafeTensorsWriter.checksumKey: "0"], "metadata key ddptrain.file_crc32 is reserved for the writer"),
            ([], [SafeTensorsWriter.dataChecksumKey: "0"], "metadata key ddptrain.data_crc32 is reserved for the writer"),
        ]
        for (tensors, metadata, expected) in cases {
            XCTAssertThrowsError(try SafeTensorsWriter.write(tensors, metadata: metadata, to: path)) { error in
                XCTAssertEqual("\(error)", "\(path): \(expected)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        }
    }
}
