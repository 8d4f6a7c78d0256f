import DDPKernels

/// Batch statistics for a rank whose shards are shared among the members of a `ThreadTeam`.
///
/// Each member's batch norm hands over the records of its own shards; they meet here in
/// one array of the rank's shards, in shard order; member 0 passes the whole array to the
/// rank-level reducer (local statistics, or the shard groups' collectives, which only
/// member 0 may call), and every member continues with its shards' results. The reducer
/// combines shards along the shard tree, so the bits do not depend on the thread count.
public final class TeamStatistics: @unchecked Sendable {
    public let team: ThreadTeam
    public let rankReducer: BatchStatisticsReducer
    /// Doubles per shard the exchange holds (the widest batch norm's record).
    private let recordCapacity: Int
    private let maxShards: Int
    /// Two exchanges, used in turn: a member still copying its results out of one while
    /// member 0 already writes the next call's records (of another width, so at other
    /// offsets) into the other.
    private let exchanges: [DoubleBuffer]
    /// Per member, its calls in this pass (every member makes the same calls).
    private let calls: UnsafeMutablePointer<Int>
    private let running: DoubleBuffer
    /// The rank's shards this pass.
    public private(set) var rankFirstShard = 0
    public private(set) var rankShards = 0

    deinit { calls.deallocate() }

    /// Before each pass (no member running): the rank's shards in it.
    public func beginPass(firstShard: Int, shards: Int) {
        rankFirstShard = firstShard
        rankShards = shards
        calls.update(repeating: 0, count: team.size)
    }

    /// `channels`: the widest batch norm's channel count; `maxShards`: the most shards a
    /// rank holds in a step.
    public init(team: ThreadTeam, rankReducer: BatchStatisticsReducer, channels: Int, maxShards: Int) {
        self.team = team
        self.rankReducer = rankReducer
        recordCapacity = ShardMoments.recordSize(channels: max(channels, 1))
        self.maxShards = max(maxShards, 1)
        exchanges = [DoubleBuffer(capacity: recordCapacity * self.maxShards), DoubleBuffer(capacity: recordCapacity * self.maxShards)]
        calls = .allocate(capacity: team.size)
        calls.initialize(repeating: 0, count: team.size)
        running = DoubleBuffer(capacity: recordCapacity)
    }

    /// The reducer for member `index`'s batch norms (each holds on to this exchange).
    public var members: [BatchStatisticsReducer] { (0..<team.size).map { Member(shared: self, index: $0) } }

    private final class Member: BatchStatisticsReducer {
        let shared: TeamStatistics
        let index: Int
        init(shared: TeamStatistics, index: Int) { self.shared = shared; self.index = index }

        func combineMoments(_ moments: ShardMoments) throws { try shared.combineMoments(moments, member: index) }
        func sum(_ records: UnsafeMutablePointer<Double>, width: Int, shards: Int, firstShard: Int) throws {
            try shared.sum(records, width: width, shards: shards, firstShard: firstShard, member: index)
        }
    }

    private func offset(width: Int, shards: Int, firstShard: Int) throws -> Int {
        let first = firstShard - rankFirstShard
        guard width <= recordCapacity, first >= 0, first + shards <= rankShards, rankShards <= maxShards else {
            throw LayerError("batch statistics of shards \(firstShard)..<\(firstShard + shards) (\(width) values each) do not fit the thread team's "
                             + "exchange for shards \(rankFirstShard)..<\(rankFirstShard + rankShards) (\(recordCapacity) values each, at most \(maxShards) shards)")
        }
        return first * width
    }

    /// The exchange of this member's next call.
    private func exchange(_ member: Int) -> DoubleBuffer {
        calls[member] += 1
        return exchanges[calls[member] % 2]
    }

    func combineMoments(_ m: ShardMoments, member: Int) throws {
        let values = exchange(member)
        let size = m.recordSize
        let at = try offset(width: size, shards: m.shards, firstShard: m.firstShard)
        (values.pointer + at).update(from: m.records, count: m.shards * size)
        try team.barrier()
        if member == 0 {
            // Should this throw, the team releases the members waiting below.
            try rankReducer.combineMoments(ShardMoments(records: values.pointer, shards: rankShards, channels: m.channels,
                                                        firstShard: rankFirstShard, running: running.pointer))
        }
        try team.barrier()
        m.records.update(from: values.pointer + at, count: m.shards * size)
        m.running.update(from: running.pointer, count: size)
    }

    func sum(_ records: UnsafeMutablePointer<Double>, width: Int, shards: Int, firstShard: Int, member: Int) throws {
        let values = exchange(member)
        let at = try offset(width: width, shards: shards, firstShard: firstShard)
        (values.pointer + at).update(from: records, count: shards * width)
        try team.barrier()
        if member == 0 {
            try rankReducer.sum(values.pointer, width: width, shards: rankShards, firstShard: rankFirstShard)
        }
        try team.barrier()
        records.update(from: values.pointer + at, count: shards * width)
    }
}
