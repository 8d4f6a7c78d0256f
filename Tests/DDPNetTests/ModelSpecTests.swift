import DDPKernels
import DDPNet
import Foundation
import XCTest

final class ModelSpecTests: XCTestCase {
    /// Every name and shape of PyTorch's state_dict for the equivalent nn.Sequential of each
    /// preset (printed by PyTorch 2.x from the layer lists in the README and peers/), so that
    /// a checkpoint loads with load_state_dict(strict=True).
    static let pytorchStateDicts: [String: [String: [Int]]] = [
        "mlp": ["1.weight": [256, 784], "2.weight": [256], "2.bias": [256], "2.running_mean": [256], "2.running_var": [256], "2.num_batches_tracked": [], "5.weight": [128, 256], "6.weight": [128], "6.bias": [128], "6.running_mean": [128], "6.running_var": [128], "6.num_batches_tracked": [], "8.weight": [10, 128], "8.bias": [10]],
        "fmnist-cnn": ["0.weight": [32, 1, 3, 3], "1.weight": [32], "1.bias": [32], "1.running_mean": [32], "1.running_var": [32], "1.num_batches_tracked": [], "4.weight": [64, 32, 3, 3], "5.weight": [64], "5.bias": [64], "5.running_mean": [64], "5.running_var": [64], "5.num_batches_tracked": [], "9.weight": [128, 3136], "10.weight": [128], "10.bias": [128], "10.running_mean": [128], "10.running_var": [128], "10.num_batches_tracked": [], "13.weight": [10, 128], "13.bias": [10]],
        "lenet5": ["0.weight": [6, 1, 5, 5], "0.bias": [6], "3.weight": [16, 6, 5, 5], "3.bias": [16], "7.weight": [120, 400], "7.bias": [120], "9.weight": [84, 120], "9.bias": [84], "11.weight": [10, 84], "11.bias": [10]],
        "resnet8": ["0.weight": [16, 1, 3, 3], "1.weight": [16], "1.bias": [16], "1.running_mean": [16], "1.running_var": [16], "1.num_batches_tracked": [], "3.conv1.weight": [16, 16, 3, 3], "3.bn1.weight": [16], "3.bn1.bias": [16], "3.bn1.running_mean": [16], "3.bn1.running_var": [16], "3.bn1.num_batches_tracked": [], "3.conv2.weight": [16, 16, 3, 3], "3.bn2.weight": [16], "3.bn2.bias": [16], "3.bn2.running_mean": [16], "3.bn2.running_var": [16], "3.bn2.num_batches_tracked": [], "4.conv1.weight": [32, 16, 3, 3], "4.bn1.weight": [32], "4.bn1.bias": [32], "4.bn1.running_mean": [32], "4.bn1.running_var": [32], "4.bn1.num_batches_tracked": [], "4.conv2.weight": [32, 32, 3, 3], "4.bn2.weight": [32], "4.bn2.bias": [32], "4.bn2.running_mean": [32], "4.bn2.running_var": [32], "4.bn2.num_batches_tracked": [], "4.downsample.0.weight": [32, 16, 1, 1], "4.downsample.1.weight": [32], "4.downsample.1.bias": [32], "4.downsample.1.running_mean": [32], "4.downsample.1.running_var": [32], "4.downsample.1.num_batches_tracked": [], "5.conv1.weight": [64, 32, 3, 3], "5.bn1.weight": [64], "5.bn1.bias": [64], "5.bn1.running_mean": [64], "5.bn1.running_var": [64], "5.bn1.num_batches_tracked": [], "5.conv2.weight": [64, 64, 3, 3], "5.bn2.weight": [64], "5.bn2.bias": [64], "5.bn2.running_mean": [64], "5.bn2.running_var": [64], "5.bn2.num_batches_tracked": [], "5.downsample.0.weight": [64, 32, 1, 1], "5.downsample.1.weight": [64], "5.downsample.1.bias": [64], "5.downsample.1.running_mean": [64], "5.downsample.1.running_var": [64], "5.downsample.1.num_batches_tracked": [], "8.weight": [10, 64], "8.bias": [10]],
    ]
    static let pytorchParameterCounts = ["mlp": 235_530, "fmnist-cnn": 421_866, "lenet5": 61_706, "resnet8": 77_754]

    func testPresetsMatchPyTorchStateDicts() throws {
        for name in ModelSpec.presetNames {
            let model = try ModelSpec.named(name).build(inputShape: Shape(n: 1, c: 1, h: 28, w: 28), maxBatch: 2)
            var ours: [String: [Int]] = [:]
            for v in model.parameterViews { ours[v.name] = v.shape }
            for v in model.bufferViews { ours[v.name] = v.shape }
            XCTAssertEqual(ours, Self.pytorchStateDicts[name], name)
            XCTAssertEqual(model.parameterCount, Self.pytorchParameterCounts[name], name)
            XCTAssertEqual(model.outputShape.perSample, 10)
        }
        // resnet8 also takes 32x32 colour input (CIFAR-10).
        let cifar = try ModelSpec.named("resnet8").build(inputShape: Shape(n: 1, c: 3, h: 32, w: 32), maxBatch: 2)
        XCTAssertEqual(cifar.outputShape.perSample, 10)
        XCTAssertEqual(cifar.parameter(named: "0.weight")?.shape, [16, 3, 3, 3])
    }

    func testModelFileInYAMLAndJSONWithInferredSizesAndPerLayerInit() throws {
        let yaml = """
        name: small
        layers:
          - {type: conv2d, out: 4, kernel: 3, padding: 1, bias: false, init: he-normal}
          - batchnorm
          - relu
          - maxpool2d: {kernel: 2}
          - flatten
          - {type: dropout, p: 0.3}
          - {type: linear, out: 10, init: "xavier-uniform"}
        """
        let spec = try ModelSpec.parse(yaml, source: "small.yaml")
        XCTAssertEqual(spec.name, "small")
        XCTAssertEqual(spec.layerInitializers, [0: "he-normal", 6: "xavier-uniform"])
        let model = try spec.build(inputShape: Shape(n: 1, c: 1, h: 28, w: 28), maxBatch: 4)
        XCTAssertEqual(model.parameter(named: "6.weight")?.shape, [10, 4 * 14 * 14])
        XCTAssertEqual((model.layers[5] as? Dropout)?.p, 0.3)
        let json = #"[{"type": "linear", "out": 5}, {"type": "relu"}, {"type": "linear", "out": 10}]"#
        let fromJSON = try ModelSpec.parse(json, source: "m.json").build(inputShape: Shape(n: 1, features: 7), maxBatch: 1)
        XCTAssertEqual(fromJSON.parameter(named: "0.weight")?.shape, [5, 7])
        XCTAssertEqual(fromJSON.parameterCount, 5 * 7 + 5 + 10 * 5 + 10)
        XCTAssertTrue(fromJSON.summaryTable(name: "m").contains("total parameters: 100"))
    }

    func testBadModelFilesNameFileLayerAndProblem() {
        let cases: [(String, String)] = [
            ("layers: [{type: convolution, out: 3}]", "m.yaml: layer 0: unknown layer type 'convolution'"),
            ("layers: [{type: linear}]", "m.yaml: layer 0 (linear): needs 'out' > 0"),
            ("layers: [flatten, {type: linear, out: 4, colour: red}]", "m.yaml: layer 1 (linear): unknown setting(s) colour"),
            ("layers: [{type: dropout, p: 1.5}]", "m.yaml: layer 0 (dropout): 'p' must be in [0, 1), got 1.5"),
            ("layers: []", "m.yaml: the layer list is empty"),
            ("name: x", "m.yaml: needs a 'layers' list"),
            ("layers: [{type: linear, out: 4}", "m.yaml: not valid YAML or JSON"),
        ]
        for (text, message) in cases {
            XCTAssertThrowsError(try ModelSpec.parse(text, source: "m.yaml"), text) { error in
                XCTAssertTrue("\(error)".hasPrefix(message), "\(error)")
            }
        }
        // A layer that does not fit its input says which.
        XCTAssertThrowsError(try ModelSpec.parse("layers: [{type: conv2d, out: 4, kernel: 3}]", source: "c.yaml")
            .build(inputShape: Shape(n: 1, features: 10), maxBatch: 1)) { error in
            XCTAssertTrue("\(error)".contains("layer 0 (conv2d) needs [c, h, w] input, got [10]"), "\(error)")
        }
        XCTAssertThrowsError(try ModelSpec.named("no-such-model")) { error in
            XCTAssertTrue("\(error)".contains("neither a preset (mlp, fmnist-cnn, lenet5, resnet8) nor an existing file"))
        }
    }

    /// --bn none keeps every layer index and the other layers' initial weights.
    func testWithoutBatchNormKeepsIndicesAndInitialWeights() throws {
        let spec = try ModelSpec.named("fmnist-cnn")
        let shape = Shape(n: 1, c: 1, h: 28, w: 28)
        let with = try spec.build(inputShape: shape, maxBatch: 1), without = try spec.withoutBatchNorm().build(inputShape: shape, maxBatch: 1)
        _ = try with.initialize(.default, seed: 4)
        _ = try without.initialize(.default, seed: 4)
        XCTAssertEqual(without.layers.count, with.layers.count)
        XCTAssertTrue(without.layers[1] is Identity)
        XCTAssertTrue(without.bufferViews.isEmpty)
        XCTAssertThrowsError(try ModelSpec.named("resnet8").withoutBatchNorm()) { error in
            XCTAssertTrue("\(error)".contains("batch norm inside its residual blocks"), "\(error)")
        }
        for v in without.parameterViews {
            let w = try XCTUnwrap(with.parameter(named: v.name))
            XCTAssertEqual(Array(UnsafeBufferPointer(start: without.parameters.pointer + v.offset, count: v.count)),
                           Array(UnsafeBufferPointer(start: with.parameters.pointer + w.offset, count: w.count)), v.name)
        }
    }
}

/// Hostile model files and sizes: refused with the file, layer and numbers before anything
/// is allocated or any recursion runs deep.
extension ModelSpecTests {
    /// A path in the temporary folder, removed when the test ends.
    func temporaryPath(_ name: String) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString)-\(name)").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func expectError(_ body: @autoclosure () throws -> Any, _ text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(text), "\(error)", file: file, line: line)
        }
    }

    func testModelFilesAreBoundedRegularFiles() throws {
        let big = temporaryPath("big.yaml")
        try ("layers: [flatten, {type: linear, out: 10}]\n#" + String(repeating: "x", count: 1 << 20)).write(toFile: big, atomically: false, encoding: .utf8)
        expectError(try ModelSpec.named(big), "\(big): the model file is \((1 << 20) + 44) bytes; the limit is 1048576 bytes (1 MiB)")
        let fifo = temporaryPath("fifo.yaml")
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        defer { unlink(fifo) }
        // Would block in open() for a writer that never comes, were it opened blocking.
        expectError(try ModelSpec.named(fifo), "\(fifo): the model file is not a regular file")
        expectError(try ModelSpec.named(FileManager.default.temporaryDirectory.path), "the model file is not a regular file")
    }

    func testNestingAndAliasesAreRefusedBeforeYamsBuildsNodes() {
        // 100000 levels overflowed the stack in Yams' recursive composer.
        expectError(try ModelSpec.parse("layers: " + String(repeating: "[", count: 100_000), source: "m.yaml"),
                    "m.yaml: line 1: lists and maps are nested more than 64 levels deep")
        expectError(try ModelSpec.parse(String(repeating: #"{"layers": ["#, count: 40_000), source: "m.json"),
                    "m.json: line 1: lists and maps are nested more than 64 levels deep")
        var blocks = "layers:\n"
        for depth in 1...70 { blocks += String(repeating: "  ", count: depth) + "- \n" }
        expectError(try ModelSpec.parse(blocks, source: "m.yaml"), "lists and maps are nested more than 64 levels deep")
        expectError(try ModelSpec.parse("layers:\n  - &dense {type: linear, out: 10}\n  - *dense\n", source: "m.yaml"),
                    "m.yaml: line 2: aliases (*name) and anchors (&name) are not supported")
        // Sixty levels are still a (wrong) model, not a structure error.
        expectError(try ModelSpec.parse("layers: " + String(repeating: "[", count: 60) + String(repeating: "]", count: 60), source: "m.yaml"),
                    "m.yaml: layer 0: expected a layer name or a map")
    }

    /// Yams reads YAML 1.1's base-60 integers ("1:30") with unchecked products: twelve
    /// groups, or an explicit !!int on a long one, trapped on overflow (found by fuzzing).
    /// Tags and base-60 numbers have no use in these files: both are refused by line.
    func testTagsAndBaseSixtyNumbersAreRefusedBeforeYamsConstructsThem() {
        let twelveGroups = "1" + String(repeating: ":0", count: 11)
        expectError(try ModelSpec.parse("layers: [{type: linear, out: \(twelveGroups)}]", source: "m.yaml"),
                    "m.yaml: line 1: base-60 numbers (\(twelveGroups)) are not supported; write the number in decimal, or quote it if it is text")
        expectError(try ModelSpec.parse("!!int __::7370955161:440737161:44073:4400955161", source: "m.yaml"),
                    "m.yaml: line 1: tags (!!int) are not supported")
        expectError(try ModelSpec.parse("layers: !!seq [flatten]", source: "m.yaml"), "m.yaml: line 1: tags (!!seq) are not supported")
        expectError(try ModelSpec.parse("layers:\n  - !linear {out: 10}", source: "m.yaml"), "m.yaml: line 2: tags (!linear) are not supported")
        // Quoted, the same characters are text, and a colon in plain text is still text.
        expectError(try ModelSpec.parse("layers: [{type: \"1:30\"}]", source: "m.yaml"), "m.yaml: layer 0: unknown layer type '1:30'")
    }

    /// YAML 1.1 reads "010" as 8 (octal), "0x10" as 16 and "1_0" as 10: a layer of 8 where
    /// the file says 010, without a word. Such numbers are refused by line; decimals, zero
    /// and quoted text pass.
    func testNumbersThatAreNotPlainDecimalAreRefused() throws {
        for text in ["010", "-010", "0x10", "0o10", "0b11", "1_0", "1_000.5", "0_1"] {
            expectError(try ModelSpec.parse("layers: [flatten, {type: linear, out: \(text)}]", source: "m.yaml"),
                        "m.yaml: line 1: \(text) is not a plain decimal number: YAML 1.1 reads a leading 0 as octal (010 is 8)")
        }
        let spec = try ModelSpec.parse("layers: [flatten, {type: linear, out: 10}, {type: dropout, p: 0.5}, {type: linear, out: 10}]", source: "m.yaml")
        XCTAssertEqual(try spec.makeLayers(inputShape: Shape(n: 1, c: 1, h: 28, w: 28)).count, 4)
        for text in ["0", "0.5", "1e5", "-0.25", "0b", "x0_1", "01-baseline", "0xdata", "0bert", "08", "1.10", "2024-01-05", ".5", "-0", "+1"] {
            XCTAssertNoThrow(try SpecFile.checkStructure("value: \(text)", source: "c.yaml"), text)
        }
        expectError(try ModelSpec.parse("layers: [{type: \"010\"}]", source: "m.yaml"), "m.yaml: layer 0: unknown layer type '010'")
    }

    func testFloatSettingsMustFitFloat32() {
        expectError(try ModelSpec.parse("layers: [{type: leakyrelu, slope: 1e39}]", source: "m.yaml"),
                    "m.yaml: layer 0 (leakyrelu): 'slope' must be a finite number (in Float32's range), got 1e+39")
        expectError(try ModelSpec.parse("layers: [{type: elu, alpha: .nan}]", source: "m.yaml"), "'alpha' must be a finite number")
        expectError(try ModelSpec.parse("layers: [{type: batchnorm, eps: 1e-50}]", source: "m.yaml"), "'eps' must be a positive number")
    }

    /// The brief's 8.6e9-parameter model, and sizes that overflow 64 bits, end in an error
    /// with the numbers, before any buffer is allocated.
    func testSizesAreCountedWithOverflowChecksAndAgainstMemory() throws {
        let wide = try ModelSpec.parse("layers: [flatten, {type: linear, out: 65536}, {type: linear, out: 65536}, {type: linear, out: 65536}, {type: linear, out: 10}]",
                                       source: "wide.yaml")
        let mnist = Shape(n: 1, c: 1, h: 28, w: 28)
        let footprint = try wide.footprint(inputShape: mnist, batch: 32)
        XCTAssertEqual(footprint.parameters, 784 * 65536 + 65536 + 2 * (65536 * 65536 + 65536) + 65536 * 10 + 10)
        expectError(try wide.checkMemory(inputShape: mnist, batch: 32, replicas: 1, optimizerSlots: 1, ranksOnNode: 1, available: 16_000_000_000),
                    "model wide needs 103.7 GB per rank (103.7 GB for 8642166794 parameters, gradients and optimizer state; 25.2 MB for the activations of batches of 32); this machine has 16.0 GB available")
        expectError(try wide.checkMemory(inputShape: mnist, batch: 32, replicas: 2, optimizerSlots: 2, ranksOnNode: 4, available: 16_000_000_000),
                    "times 4 ranks on this node")
        // A batch so large that the activation count overflows: an error, not a trap.
        expectError(try wide.checkMemory(inputShape: mnist, batch: Int.max / 1000, replicas: 1, optimizerSlots: 0, ranksOnNode: 1, available: nil),
                    "layer 1 (Linear(in_features=784, out_features=65536, bias=True)): its sizes for batches of 9223372036854775 overflow 64-bit arithmetic")
        // The presets fit anywhere with memory to spare, and so does no limit at all.
        for name in ModelSpec.presetNames {
            XCTAssertNoThrow(try ModelSpec.named(name).checkMemory(inputShape: mnist, batch: 256, replicas: 2, optimizerSlots: 2, ranksOnNode: 8,
                                                                    available: 8_000_000_000))
        }
        XCTAssertNoThrow(try wide.checkMemory(inputShape: mnist, batch: 32, replicas: 1, optimizerSlots: 1, ranksOnNode: 1, available: nil,
                                              processRoom: nil))
        // The process's own limit (ulimit -v) counts per rank, whatever the machine has free.
        let mlp = try ModelSpec.named("mlp")
        let mlpBytes = try mlp.footprint(inputShape: mnist, batch: 64)
        let needed = 4 * (mlpBytes.parameters * 3 + mlpBytes.activations)
        expectError(try mlp.checkMemory(inputShape: mnist, batch: 64, replicas: 1, optimizerSlots: 1, ranksOnNode: 4, available: nil,
                                        processRoom: (needed - 1, "the process's address-space limit (ulimit -v) of 9 bytes leaves \(needed - 1)")),
                    "; the process's address-space limit (ulimit -v) of 9 bytes leaves \(needed - 1): raise the limit or train a smaller model or batch")
        XCTAssertNoThrow(try mlp.checkMemory(inputShape: mnist, batch: 64, replicas: 1, optimizerSlots: 1, ranksOnNode: 4, available: nil,
                                             processRoom: (needed, "exactly enough")))
        // Widths grown by padding until one sample's output no longer fits 32-bit BLAS sizes.
        let growing = "layers: [" + Array(repeating: "{type: conv2d, out: 65536, kernel: 1, padding: 64}", count: 3).joined(separator: ", ") + "]"
        expectError(try ModelSpec.parse(growing, source: "g.yaml").makeLayers(inputShape: mnist),
                    "layer 1 (Conv2d(65536, 65536, kernel_size=(1, 1), stride=(1, 1), padding=(64, 64))): its output [65536, 284, 284] has more than 2147483647 values per sample")
    }
}
