import Foundation

/// What a finished run reports.
public struct TrainSummary: Codable, Sendable {
    public var worldSize: Int
    public var globalBatch: Int
    public var steps: Int
    public var epochs: Double
    public var skippedSteps: Int
    public var finalTrainLoss: Double
    public var testLoss: Double?
    public var testAccuracy: Double?
    public var bestTestAccuracy: Double?
    public var bestEpoch: Int?
    public var wallSeconds: Double
    public var samplesPerSecond: Double
    public var communicationShare: Double
    public var parameterHashes: [String]
    /// Test accuracy at each evaluation, and the epoch it followed (--eval-every may skip
    /// epochs; a resumed run reports the epochs it ran).
    public var accuracyPerEpoch: [Double]
    public var evaluatedEpochs: [Int]
    /// Seconds from process start (the kernel's start time of the process) to the start of
    /// the first training step, the largest over ranks; nil when no step ran.
    public var secondsToFirstStep: Double?
    /// Unix time (seconds) at which the last rank started its first training step, so that a
    /// launcher can measure launch to first step on its own clock; nil when no step ran.
    public var firstStepUnixTime: Double?
    /// Where config, metrics and checkpoints went (nil in summaries of earlier versions).
    public var runDir: String?
}
