import Foundation
import SafeTensors
import XCTest

/// Files we write load in Python's safetensors, and files it writes load here.
/// Needs `pip install safetensors numpy`; without it these tests fail, never skip silently.
final class PythonInteropTests: XCTestCase {
    private struct PythonModulesMissing: Error, CustomStringConvertible {
        let output: String
        var description: String {
            "Python interop needs the safetensors and numpy modules: run `pip install safetensors numpy`\n\(output)"
        }
    }

    /// Throwing here fails the test (it does not skip it): the interop check must not vanish
    /// quietly from a machine that lacks the modules.
    override func setUpWithError() throws {
        let (status, output) = try runPython("import safetensors, numpy")
        guard status == 0 else { throw PythonModulesMissing(output: output) }
    }

    /// Runs `python3 -c script arguments...`, returning its exit status and its stdout and stderr.
    private func runPython(_ script: String, _ arguments: String...) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }

    func testPythonLoadsOurFile() throws {
        let path = makeTemporaryDirectory(for: self) + "/ours.safetensors"
        try SafeTensorsWriter.write([.init(name: "0.weight", shape: [2, 3], values: [0.5, -1, 2, 3.25, 0, 1e-3] as [Float]),
                                     .init(name: "step", shape: [], values: [Int64(123_456_789_012)]),
                                     .init(name: "mean", shape: [2], values: [0.1, -7.5] as [Double]),
                                     .init(name: "mask", shape: [3], values: [0, 7, 255] as [UInt8]),
                                     .init(name: "empty", shape: [0, 2], values: [Float]())],
                                    metadata: ["step": "100", "note": "ünïcode \"quoted\""], to: path)
        let script = """
            import json, sys
            from safetensors import safe_open
            from safetensors.numpy import load_file
            tensors = load_file(sys.argv[1])
            with safe_open(sys.argv[1], framework="np") as f:
                metadata = f.metadata()
            print(json.dumps({"metadata": metadata, "tensors": {name: {"dtype": str(t.dtype), "shape": list(t.shape),
                  "values": t.reshape(-1).tolist()} for name, t in tensors.items()}}))
            """
        let (status, output) = try runPython(script, path)
        XCTAssertEqual(status, 0, output)
        let loaded = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any], output)
        let metadata = try XCTUnwrap(loaded["metadata"] as? [String: String])
        XCTAssertEqual(metadata["step"], "100")
        XCTAssertEqual(metadata["note"], "ünïcode \"quoted\"")
        XCTAssertEqual(metadata[SafeTensorsWriter.checksumKey], try SafeTensorsFile(path: path).metadata[SafeTensorsWriter.checksumKey])
        let tensors = try XCTUnwrap(loaded["tensors"] as? [String: [String: Any]])
        // Compared as Float: Foundation's JSON parser may miss the last bit of a Double.
        func check(_ name: String, _ dtype: String, _ shape: [Int], _ values: [Float]) {
            XCTAssertEqual(tensors[name]?["dtype"] as? String, dtype, name)
            XCTAssertEqual(tensors[name]?["shape"] as? [Int], shape, name)
            XCTAssertEqual((tensors[name]?["values"] as? [NSNumber])?.map(\.floatValue), values, name)
        }
        check("0.weight", "float32", [2, 3], [0.5, -1, 2, 3.25, 0, 1e-3])
        check("step", "int64", [], [123_456_789_012])
        check("mean", "float64", [2], [0.1, -7.5])
        check("mask", "uint8", [3], [0, 7, 255])
        check("empty", "float32", [0, 2], [])
    }

    func testWeLoadPythonsFile() throws {
        let path = makeTemporaryDirectory(for: self) + "/theirs.safetensors"
        let script = """
            import sys, numpy as np
            from safetensors.numpy import save_file
            save_file({"weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 4,
                       "step": np.array(7, dtype=np.int64),
                       "mean": np.array([0.5, -1.25], dtype=np.float64),
                       "counts": np.array([-3, 4], dtype=np.int32),
                       "mask": np.array([1, 0, 255], dtype=np.uint8),
                       "empty": np.zeros((0, 3), dtype=np.float32)},
                      sys.argv[1], metadata={"format": "np", "note": "from python"})
            """
        let (status, output) = try runPython(script, path)
        XCTAssertEqual(status, 0, output)

        let file = try SafeTensorsFile(path: path)
        XCTAssertNil(file.checksumVerified, "Python writes no checksum")
        XCTAssertEqual(file.metadata, ["format": "np", "note": "from python"])
        XCTAssertEqual(Set(file.tensors.map(\.name)), ["weight", "step", "mean", "counts", "mask", "empty"])
        XCTAssertEqual(file.tensor(named: "weight")?.shape, [2, 3])
        XCTAssertEqual(try file.values(of: "weight", as: Float.self), [0, 0.25, 0.5, 0.75, 1, 1.25])
        XCTAssertEqual(file.tensor(named: "step")?.shape, [])
        XCTAssertEqual(try file.values(of: "step", as: Int64.self), [7])
        XCTAssertEqual(try file.values(of: "mean", as: Double.self), [0.5, -1.25])
        XCTAssertEqual(try file.values(of: "counts", as: Int32.self), [-3, 4])
        XCTAssertEqual(try file.values(of: "mask", as: UInt8.self), [1, 0, 255])
        XCTAssertEqual(file.tensor(named: "empty")?.shape, [0, 3])
        XCTAssertEqual(try file.values(of: "empty", as: Float.self), [])
    }
}
