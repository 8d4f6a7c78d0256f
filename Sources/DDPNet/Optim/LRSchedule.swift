#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How the learning rate decays with the global step (counted from 0).
///
/// Warm-up composes with any schedule by multiplication: for step < W the rate is the
/// scheduled one times (step + 1) / W, so it reaches the schedule at step W - 1 without
/// a jump. The schedule's own clock starts at step 0, warm-up included.
public enum LRSchedule: Equatable, Sendable, CustomStringConvertible {
    case constant
    /// PyTorch's StepLR: base · gamma^(step / every), integer division.
    case step(every: Int, gamma: Float)
    /// PyTorch's CosineAnnealingLR: minLR + (base - minLR)(1 + cos(π step / totalSteps)) / 2,
    /// held at minLR after totalSteps (PyTorch would climb again).
    case cosine(totalSteps: Int, minLR: Float = 0)

    public static let spellings = ["constant", "step:<every>:<gamma>", "cosine[:<min_lr>]"]

    /// Parses "constant", "step:30:0.1" or "cosine" (optionally "cosine:1e-5" for the
    /// minimum rate); `totalSteps` is the run's length, which cosine anneals over.
    public init(parsing text: String, totalSteps: Int) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        func bad(_ why: String) -> OptimizerError {
            OptimizerError("learning-rate schedule '\(text)': \(why); valid: \(LRSchedule.spellings.joined(separator: ", "))")
        }
        switch parts[0].lowercased() {
        case "constant":
            guard parts.count == 1 else { throw bad("constant takes no argument") }
            self = .constant
        case "step":
            guard parts.count == 3 else { throw bad("step needs every and gamma, e.g. step:30:0.1") }
            guard let every = Int(parts[1]), every > 0 else { throw bad("every '\(parts[1])' is not a positive integer") }
            guard let gamma = Float(parts[2]), gamma > 0, gamma.isFinite else { throw bad("gamma '\(parts[2])' is not a positive number") }
            self = .step(every: every, gamma: gamma)
        case "cosine":
            guard parts.count <= 2 else { throw bad("cosine takes at most a minimum rate") }
            guard totalSteps > 0 else { throw bad("cosine needs a positive number of total steps, got \(totalSteps)") }
            var minLR: Float = 0
            if parts.count == 2 {
                guard let value = Float(parts[1]), value >= 0, value.isFinite else { throw bad("min_lr '\(parts[1])' is not a number >= 0") }
                minLR = value
            }
            self = .cosine(totalSteps: totalSteps, minLR: minLR)
        default:
            throw bad("unknown schedule '\(parts[0])'")
        }
    }

    /// The spelling `init(parsing:totalSteps:)` reads back (cosine's length is not in it).
    public var description: String {
        switch self {
        case .constant: return "constant"
        case .step(let every, let gamma): return "step:\(every):\(gamma)"
        case .cosine(_, let minLR): return minLR == 0 ? "cosine" : "cosine:\(minLR)"
        }
    }

    /// The learning rate of global step `step` (from 0), with `warmupSteps` of linear warm-up.
    public func learningRate(base: Float, step: Int, warmupSteps: Int = 0) -> Float {
        let base = Double(base)
        var lr: Double
        switch self {
        case .constant:
            lr = base
        case .step(let every, let gamma):
            lr = base * pow(Double(gamma), Double(every > 0 ? step / every : 0))
        case .cosine(let total, let minLR):
            let progress = total > 0 ? Double(min(step, total)) / Double(total) : 1
            lr = Double(minLR) + (base - Double(minLR)) * (1 + cos(Double.pi * progress)) / 2
        }
        if step < warmupSteps { lr *= Double(step + 1) / Double(warmupSteps) }
        return Float(lr)
    }
}
