import DDPKernels

/// Updates the flat parameter buffer from the flat (already averaged and clipped) gradient
/// buffer in one pass, allocating nothing.
///
/// State layout: all state is one Float32 buffer of `slotNames.count * parameterCount`
/// elements. Slot `s` of parameter view `v` is the `v.count` elements starting at
/// `state[s * parameterCount + v.offset]`; a checkpoint saves it as
/// `optim.<v.name>.<slotNames[s]>` (`stateName(slot:of:)`).
public protocol Optimizer: AnyObject {
    var parameterCount: Int { get }
    /// PyTorch's state names: ["momentum_buffer"], ["exp_avg", "exp_avg_sq"], or [].
    var slotNames: [String] { get }
    var state: FloatBuffer { get }
    /// Steps taken (Adam's bias correction depends on it); saved and restored with the state.
    var stepCount: Int64 { get set }
    func step(parameters: UnsafeMutablePointer<Float>, gradients: UnsafeMutablePointer<Float>, learningRate: Float)
}

extension Optimizer {
    /// Slot `s` of a parameter view inside `state`.
    public func slot(_ s: Int, of view: ParameterView) -> UnsafeMutablePointer<Float> {
        state.pointer + s * parameterCount + view.offset
    }

    /// The checkpoint name of slot `s` of a parameter view: "optim.0.weight.exp_avg".
    public func stateName(slot s: Int, of view: ParameterView) -> String { "optim.\(view.name).\(slotNames[s])" }
}

public enum OptimizerKind: String, Sendable, CaseIterable {
    case sgd, adam, adamw
}

/// Hyper-parameters other than the learning rate, which the schedule gives each step.
public struct OptimizerConfig: Equatable, Sendable {
    public var kind: OptimizerKind
    /// SGD only.
    public var momentum: Float
    public var nesterov: Bool
    /// L2 penalty for SGD and Adam, decoupled decay for AdamW; weights only.
    public var weightDecay: Float
    /// Adam and AdamW only.
    public var beta1: Float
    public var beta2: Float
    public var eps: Float

    public init(kind: OptimizerKind, momentum: Float = 0, nesterov: Bool = false, weightDecay: Float = 0,
                beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8) {
        self.kind = kind; self.momentum = momentum; self.nesterov = nesterov; self.weightDecay = weightDecay
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps
    }
}

public struct OptimizerError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// An optimizer over a buffer of `parameterCount` elements described by `views`.
public func makeOptimizer(_ config: OptimizerConfig, views: [ParameterView], parameterCount: Int) throws -> Optimizer {
    switch config.kind {
    case .sgd:
        return try SGD(views: views, parameterCount: parameterCount, momentum: config.momentum,
                       nesterov: config.nesterov, weightDecay: config.weightDecay)
    case .adam, .adamw:
        return try Adam(views: views, parameterCount: parameterCount, beta1: config.beta1, beta2: config.beta2,
                        eps: config.eps, weightDecay: config.weightDecay, decoupledWeightDecay: config.kind == .adamw)
    }
}

/// An optimizer for a model's parameters.
public func makeOptimizer(_ config: OptimizerConfig, for model: Model) throws -> Optimizer {
    try makeOptimizer(config, views: model.parameterViews, parameterCount: model.parameterCount)
}

/// Where weight decay applies: the merged offset ranges of views whose role is decayed
/// (weights; never biases or batch-norm gamma and beta), found once at construction.
struct DecayRanges {
    let ranges: [Range<Int>]

    init(views: [ParameterView], parameterCount: Int) throws {
        var merged: [Range<Int>] = []
        for view in views.sorted(by: { $0.offset < $1.offset }) {
            let range = view.offset..<(view.offset + view.count)
            guard range.lowerBound >= 0, range.upperBound <= parameterCount else {
                throw OptimizerError("parameter \(view.name) at \(range) lies outside the \(parameterCount) parameters")
            }
            guard view.role.isDecayed, !range.isEmpty else { continue }
            if let last = merged.last, last.upperBound == range.lowerBound {
                merged[merged.count - 1] = last.lowerBound..<range.upperBound
            } else {
                merged.append(range)
            }
        }
        ranges = merged
    }

    /// Calls `body` for consecutive segments covering 0..<count, each decayed or not.
    func forEachSegment(count: Int, _ body: (Range<Int>, Bool) -> Void) {
        var start = 0
        for range in ranges {
            if start < range.lowerBound { body(start..<range.lowerBound, false) }
            body(range, true)
            start = range.upperBound
        }
        if start < count { body(start..<count, false) }
    }
}
