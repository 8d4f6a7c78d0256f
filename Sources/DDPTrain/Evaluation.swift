import DDPComm
import DDPData
import DDPKernels
import DDPNet
import Foundation

/// Evaluation of the model on `dataset`, sharded over the world: rank r takes a contiguous
/// part (and its compute threads parts of each batch); loss sum, correct and sample counts
/// are summed in Float64 by one allreduce; per-class counts (the confusion matrix, for up to
/// `Evaluation.maxConfusionClasses` classes) by a second.
public func evaluateModel(_ replicas: ComputeReplicas, on dataset: Dataset, normalization: Normalization, world: Communicator,
                          x: FloatBuffer, labels: UnsafeMutablePointer<Int32>, ids: UnsafeMutablePointer<Int32>,
                          batch: Int) throws -> Evaluation {
    // `batch` samples at a time go into `x`, `labels`, `ids` and the replicas.
    let perSample = dataset.shape(batch: 1).perSample
    guard batch >= 1 else { throw TrainingError("evaluation batch must be at least 1, got \(batch)") }
    let capacity = min(replicas.maxBatch, x.capacity / max(perSample, 1))
    guard batch <= capacity else { throw LayerError.batchTooLarge("evaluation", batch: batch, capacity: capacity) }
    let slice = Sampler.evaluationSlice(count: dataset.count, worldSize: world.size, rank: world.rank)
    var sums = [0.0, 0.0, 0.0]
    // Per class: correct and total counts, then the confusion matrix (true class x predicted class).
    let classes = dataset.classes
    let matrixClasses = classes <= Evaluation.maxConfusionClasses ? classes : 0
    var counts = [Double](repeating: 0, count: 2 * classes + matrixClasses * matrixClasses)
    let predictions = UnsafeMutablePointer<Int32>.allocate(capacity: batch)
    defer { predictions.deallocate() }
    var start = slice.lowerBound
    while start < slice.upperBound {
        let n = min(batch, slice.upperBound - start)
        for i in 0..<n { ids[i] = Int32(start + i) }
        dataset.gather(indices: UnsafeBufferPointer(start: ids, count: n), normalization: normalization, into: x.pointer, labels: labels)
        let r = try replicas.evaluationPass(x: x.pointer, sampleShape: dataset.shape(batch: 1), labels: labels, count: n,
                                            predictions: predictions)
        for i in 0..<n {
            let label = Int(labels[i]), predicted = Int(predictions[i])
            if label == predicted { counts[label] += 1 }
            counts[classes + label] += 1
            if matrixClasses > 0 { counts[2 * classes + label * classes + predicted] += 1 }
        }
        sums[0] += r.lossSum
        sums[1] += Double(r.correct)
        sums[2] += Double(n)
        start += n
    }
    try world.allreduce(&sums)
    try world.allreduce(&counts)
    let classAccuracy = (0..<classes).map { c in counts[classes + c] > 0 ? counts[c] / counts[classes + c] : nil }
    let matrix = matrixClasses == 0 ? nil : (0..<classes).map { t in (0..<classes).map { p in Int(counts[2 * classes + t * classes + p]) } }
    return Evaluation(loss: sums[0] / sums[2], accuracy: sums[1] / sums[2], correct: Int(sums[1]), samples: Int(sums[2]),
                      classAccuracy: classAccuracy, confusionMatrix: matrix)
}

public struct Evaluation: Codable, Sendable {
    public var loss: Double
    public var accuracy: Double
    public var correct: Int
    public var samples: Int
    /// Per class (by label): the share of its samples predicted right; nil for a class without samples.
    public var classAccuracy: [Double?]
    /// Counts of samples by true class (row) and predicted class (column); nil above
    /// `maxConfusionClasses` classes.
    public var confusionMatrix: [[Int]]?

    /// Up to this many classes, the matrix (8 bytes per cell in the allreduce) is computed.
    public static let maxConfusionClasses = 256

    public init(loss: Double, accuracy: Double, correct: Int, samples: Int, classAccuracy: [Double?], confusionMatrix: [[Int]]?) {
        self.loss = loss; self.accuracy = accuracy; self.correct = correct; self.samples = samples
        self.classAccuracy = classAccuracy; self.confusionMatrix = confusionMatrix
    }

    enum CodingKeys: String, CodingKey {
        case loss, accuracy, correct, samples, confusionMatrix = "confusion_matrix", classAccuracy = "class_accuracy"
    }
}
