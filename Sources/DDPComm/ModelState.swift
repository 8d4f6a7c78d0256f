import DDPNet

/// Rank 0 sets the model's state (`setUp` runs there only: a seed's initialization, a file's
/// weights); every rank learns whether that worked (agreeOnSuccess), then receives rank 0's
/// state, so that every replica starts from the same bits (I1). Returns rank 0's result on
/// rank 0, nil elsewhere.
@discardableResult
public func setModelStateOnRankZero<Result>(_ model: Model, world: Communicator, _ setUp: () throws -> Result) throws -> Result? {
    let result = try agreeOnSuccess(world) { world.rank == 0 ? try setUp() : nil }
    try broadcastModelState(model, world: world)
    return result
}

/// Rank 0's parameters, batch-norm buffers and counters, on every rank.
public func broadcastModelState(_ model: Model, world: Communicator) throws {
    try world.broadcast(model.parameters.pointer, count: model.parameterCount, root: 0)
    try world.broadcast(model.buffers.pointer, count: model.buffers.capacity, root: 0)
    try world.broadcast(model.counters, count: model.counterCount, root: 0)
}

/// Local batch norm's running statistics, averaged over the ranks that normalized samples
/// (`samplesNormalized` > 0) since the replicas last held equal statistics: a rank whose
/// slices were all empty holds the statistics of then and is left out, so that the average
/// is that of the ranks that had data; when every rank had data it is the plain mean.
/// Returns false, touching nothing, when no rank normalized a sample.
@discardableResult
public func averageRunningStatistics(_ model: Model, samplesNormalized: Int, world: Communicator) throws -> Bool {
    let normalized = try world.allgather([Int64(samplesNormalized)])
    let contributors = normalized.filter { $0 > 0 }.count
    guard contributors > 0 else { return false }
    if samplesNormalized == 0 { model.buffers.zero() }
    try world.allreduce(model.buffers.pointer, count: model.buffers.capacity)
    let size = Float(contributors)
    for i in 0..<model.buffers.capacity { model.buffers.pointer[i] /= size }
    return true
}
