import DDPKernels
import DDPNet
import XCTest

/// Every entry point that takes a batch checks it against the batch its buffers were sized
/// for, once per call, and throws an error naming the layer, the batch and the capacity
/// (release builds used to write past the buffers instead).
final class BatchCapacityTests: XCTestCase {
    func assertRefused(_ body: @autoclosure () throws -> Any, naming what: String, batch: Int, capacity: Int,
                       file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(what), "\(text) does not name \(what)", file: file, line: line)
            XCTAssertTrue(text.contains("a batch of \(batch) samples is larger than the \(capacity) its buffers were sized for"), text,
                          file: file, line: line)
        }
    }

    func testEveryLayerRefusesABatchLargerThanItsBuffers() throws {
        let image = Shape(n: 1, c: 2, h: 6, w: 6), flat = Shape(n: 1, features: 8)
        let layers: [(Layer, Shape)] = [
            (Linear(8, 3), flat), (Conv2d(inChannels: 2, outChannels: 3, kernel: 3, padding: 1), image),
            (Conv2d(inChannels: 2, outChannels: 3, kernel: 1), image),
            (BatchNorm(features: 2), image), (BatchNorm(features: 8), flat), (ReLU(), flat), (Dropout(p: 0.5), flat),
            (MaxPool2d(kernel: 2), image), (AvgPool2d(kernel: 2), image), (GlobalAvgPool2d(), image),
            (ResidualBlock(inChannels: 2, outChannels: 4, stride: 2), image),
            (ELU(), flat), (GELU(), flat), (LeakyReLU(), flat), (SELU(), flat), (Sigmoid(), flat), (Tanh(), flat),
        ]
        for (layer, shape) in layers {
            let model = try Model(layers: [layer], inputShape: shape, maxBatch: 3, fuseLayers: false)
            let x = FloatBuffer(capacity: 4 * shape.perSample)
            let big = x.tensor(shape.withBatch(4))
            let name = String(layer.summary.prefix(while: { $0 != "(" }))
            assertRefused(try layer.forward(big, ForwardContext(training: true)), naming: name, batch: 4, capacity: 3)
            // A fitting batch goes through; then backward refuses a gradient of a larger batch.
            let y = try model.forward(x.tensor(shape.withBatch(3)), ForwardContext(training: true))
            let dy = FloatBuffer(capacity: 4 * y.shape.perSample)
            assertRefused(try layer.backward(dy.tensor(y.shape.withBatch(4)), ForwardContext(training: true)),
                          naming: name, batch: 4, capacity: 3)
        }
    }

    func testModelRefusesABatchLargerThanItsBuffers() throws {
        let spec = try XCTUnwrap(ModelSpec.preset("mlp"))
        let shape = Shape(n: 1, c: 1, h: 28, w: 28)
        let model = try spec.build(inputShape: shape, maxBatch: 5)
        let x = FloatBuffer(capacity: 6 * shape.perSample)
        assertRefused(try model.forward(x.tensor(shape.withBatch(6)), ForwardContext(training: false)), naming: "the model", batch: 6, capacity: 5)
        let dLogits = FloatBuffer(capacity: 6 * 10)
        assertRefused(try model.backward(dLogits.tensor(Shape(n: 6, features: 10)), ForwardContext(training: true)),
                      naming: "the model", batch: 6, capacity: 5)
    }
}
