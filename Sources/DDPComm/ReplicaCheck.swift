import DDPKernels
import DDPNet

/// FNV-1a over the bytes of the parameters and buffers: equal hashes on every rank mean
/// bitwise-identical replicas (I1).
/// With local batch norm the running statistics legitimately differ between ranks until
/// they are averaged, so mid-run checks leave buffers out (`includeBuffers: false`).
public func replicaHash(_ model: Model, includeBuffers: Bool = true) -> UInt64 {
    var hash = FNV1a()
    hash.add(UnsafeRawBufferPointer(start: model.parameters.pointer, count: model.parameterCount * 4))
    if includeBuffers {
        hash.add(UnsafeRawBufferPointer(start: model.buffers.pointer, count: model.buffers.capacity * 4))
        hash.add(UnsafeRawBufferPointer(start: model.counters, count: model.counterCount * 8))
    }
    return hash.value
}

public struct ReplicaDivergence: Error, CustomStringConvertible {
    public var step: Int
    public var hashes: [UInt64]
    public var description: String {
        let groups = Dictionary(grouping: hashes.indices, by: { hashes[$0] })
        let detail = groups.map { hash, ranks in "ranks \(ranks.map(String.init).joined(separator: ",")): \(String(hash, radix: 16))" }
            .sorted().joined(separator: "; ")
        return "replicas diverged at step \(step): parameter hashes differ (\(detail))"
    }
}

/// Every rank's hash, in rank order; throws when they differ.
@discardableResult
public func checkReplicas(_ model: Model, world: Communicator, step: Int, includeBuffers: Bool = true) throws -> [UInt64] {
    let hashes = try world.allgather([Int64(bitPattern: replicaHash(model, includeBuffers: includeBuffers))]).map { UInt64(bitPattern: $0) }
    if Set(hashes).count > 1 { throw ReplicaDivergence(step: step, hashes: hashes) }
    return hashes
}
