import DDPNet

/// The optimizer and learning-rate schedule a configuration asks for.
struct LearningRatePlan {
    let schedule: LRSchedule
    let warmupSteps: Int
    let totalSteps: Int
    func learningRate(base: Float, step: Int) -> Float {
        schedule.learningRate(base: base, step: step, warmupSteps: warmupSteps)
    }

    /// The run's highest rate and the step that first trains with it, counted from 1 as
    /// metrics.jsonl counts (its `lr` for step k is the rate of step index k - 1). Past the
    /// warm-up every schedule is monotone, so the peak lies in the warm-up, just after it, or
    /// at the last step: no need to walk a long run. A warm-up of more than a million steps
    /// is sampled a million times (the figure is for the first line).
    func peak(base: Float) -> (rate: Float, step: Int) {
        let last = max(totalSteps - 1, 0)
        let window = min(warmupSteps, last)
        var best = (rate: learningRate(base: base, step: 0), step: 1)
        func consider(_ index: Int) {
            let rate = learningRate(base: base, step: index)
            if rate > best.rate || (rate == best.rate && index + 1 < best.step) { best = (rate, index + 1) }
        }
        for index in stride(from: 1, through: window, by: max(window / 1_000_000, 1)) { consider(index) }
        consider(window)
        consider(last)
        return best
    }
}

func makeOptimizerAndSchedule(config: TrainConfig, model: Model, totalSteps: Int) throws -> (Optimizer, LearningRatePlan) {
    guard let kind = OptimizerKind(rawValue: config.optimizer) else {
        throw ConfigError("--optimizer must be one of \(OptimizerKind.allCases.map(\.rawValue).joined(separator: ", ")); got '\(config.optimizer)'")
    }
    let optimizer = try makeOptimizer(OptimizerConfig(kind: kind, momentum: Float(config.momentum), nesterov: config.nesterov,
                                                      weightDecay: Float(config.weightDecay)), for: model)
    let schedule: LRSchedule
    do { schedule = try LRSchedule(parsing: config.schedule, totalSteps: totalSteps) } catch {
        throw ConfigError("--schedule: \(error)")
    }
    let warmup = config.warmupSteps ?? TrainConfig.defaultWarmupSteps(totalSteps: totalSteps)
    return (optimizer, LearningRatePlan(schedule: schedule, warmupSteps: warmup, totalSteps: totalSteps))
}
