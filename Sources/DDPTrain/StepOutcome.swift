import Foundation

/// Per-step timings in seconds. Forward includes the loss; sync-BN's collectives inside
/// forward and backward are counted as communication, not as forward or backward.
public struct StepTimes: Codable, Sendable {
    public var data = 0.0
    public var forward = 0.0
    public var backward = 0.0
    public var communication = 0.0
    public var optimizer = 0.0
    public init() {}
    public var compute: Double { forward + backward }
    public var total: Double { data + forward + backward + communication + optimizer }

    public static func += (a: inout StepTimes, b: StepTimes) {
        a.data += b.data; a.forward += b.forward; a.backward += b.backward
        a.communication += b.communication; a.optimizer += b.optimizer
    }
}

/// What one training step did (DESIGN's steps 1 to 8): what the loop logs and acts on, and
/// what an observer (a benchmark's timer) sees.
public struct StepOutcome: Sendable {
    /// Steps done, this one included; the epoch (from 1) it belongs to.
    public var step: Int
    public var epoch: Int
    /// Mean loss and accuracy over the global batch, and its sample count.
    public var loss: Double
    public var accuracy: Double
    public var samples: Int
    public var learningRate: Double
    /// Global gradient norm before clipping (NaN for a skipped step).
    public var gradientNorm: Double
    public var clipped: Bool
    /// Non-finite gradient or loss: nothing was updated.
    public var skipped: Bool
    public var times: StepTimes
    /// When the optimizer step ended, on `Clock.seconds()`.
    public var endTime: Double
    /// The stop vote that rode with this step's allreduce: a signal number, or 0.
    var stopSignal: Int32
}

extension StepRecord {
    /// The metrics.jsonl row of a step.
    init(_ outcome: StepOutcome) {
        self.init(step: outcome.step, epoch: outcome.epoch, loss: outcome.loss, accuracy: outcome.accuracy, lr: outcome.learningRate,
                  gradNorm: outcome.gradientNorm, clipped: outcome.clipped, skipped: outcome.skipped, samples: outcome.samples,
                  dataSeconds: outcome.times.data, forwardSeconds: outcome.times.forward, backwardSeconds: outcome.times.backward,
                  communicationSeconds: outcome.times.communication, optimizerSeconds: outcome.times.optimizer)
    }
}

/// Watches a run from outside its loop (a benchmark's timer): called before the first step
/// and after each step, on the training thread; it must not allocate in `stepDidEnd`.
public protocol TrainingObserver: AnyObject {
    func runWillStart()
    func stepDidEnd(_ outcome: StepOutcome)
}
