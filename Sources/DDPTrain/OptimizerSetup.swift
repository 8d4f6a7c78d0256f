import DDPNet

/// The optimizer and learning-rate schedule a configuration asks for.
struct LearningRatePlan {
    let schedule: LRSchedule
    let warmupSteps: Int
    func learningRate(base: Float, step: Int) -> Float {
        schedule.learningRate(base: base, step: step, warmupSteps: warmupSteps)
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
    return (optimizer, LearningRatePlan(schedule: schedule, warmupSteps: config.warmupSteps))
}
