import DDPKernels

/// Batch statistics for a rank whose slice is split over the members of a `ThreadTeam`.
///
/// Each member's batch norm hands over the moments of its part; the members' moments meet
/// here, member 0 merges them in member order (Chan et al., as across ranks), passes the
/// rank's moments to the rank-level reducer (local statistics, or sync-BN's collectives,
/// which only member 0 may call), and every member continues with the result. So batch
/// norm sees the statistics of the rank's whole slice however many threads share it.
public final class TeamStatistics: @unchecked Sendable {
    public let team: ThreadTeam
    public let rankReducer: BatchStatisticsReducer
    private let capacity: Int
    private let counts: DoubleBuffer
    /// Member m's values at [m * capacity, (m + 1) * capacity); the merged result after them.
    private let values: DoubleBuffer
    private var result: UnsafeMutablePointer<Double> { values.pointer + team.size * capacity }
    private var resultCount = 0.0

    /// `channels`: the widest batch norm's channel count.
    public init(team: ThreadTeam, rankReducer: BatchStatisticsReducer, channels: Int) {
        self.team = team
        self.rankReducer = rankReducer
        capacity = 2 * max(channels, 1)
        counts = DoubleBuffer(capacity: team.size)
        values = DoubleBuffer(capacity: (team.size + 1) * capacity)
    }

    /// The reducer for member `index`'s batch norms (each holds on to this exchange).
    public var members: [BatchStatisticsReducer] { (0..<team.size).map { Member(shared: self, index: $0) } }

    private final class Member: BatchStatisticsReducer {
        let shared: TeamStatistics
        let index: Int
        init(shared: TeamStatistics, index: Int) { self.shared = shared; self.index = index }

        func combineMoments(count: inout Double, mean: UnsafeMutablePointer<Double>, m2: UnsafeMutablePointer<Double>, channels: Int) throws {
            try shared.combineMoments(member: index, count: &count, mean: mean, m2: m2, channels: channels)
        }
        func sum(_ values: UnsafeMutablePointer<Double>, count: Int) throws {
            try shared.sum(member: index, values, count: count)
        }
    }

    private func check(_ needed: Int) throws {
        guard needed <= capacity else {
            throw LayerError("batch norm with \(needed / 2) channels is wider than the \(capacity / 2) the thread team was sized for")
        }
    }

    func combineMoments(member: Int, count: inout Double, mean: UnsafeMutablePointer<Double>, m2: UnsafeMutablePointer<Double>, channels: Int) throws {
        try check(2 * channels)
        let mine = values.pointer + member * capacity
        counts.pointer[member] = count
        mine.update(from: mean, count: channels)
        (mine + channels).update(from: m2, count: channels)
        try team.barrier()
        if member == 0 {
            let mu = result, sq = result + channels
            var n = 0.0
            for m in 0..<team.size {
                let nb = counts.pointer[m]
                if nb == 0 { continue }
                let part = values.pointer + m * capacity
                if n == 0 {
                    mu.update(from: part, count: channels)
                    sq.update(from: part + channels, count: channels)
                } else {
                    mergeMoments(mean: mu, m2: sq, count: n, partMean: part, partM2: part + channels, partCount: nb, channels: channels)
                }
                n += nb
            }
            if n == 0 {
                mu.update(repeating: 0, count: channels)
                sq.update(repeating: 0, count: channels)
            }
            resultCount = n
            // Should this throw, the team releases the members waiting below.
            try rankReducer.combineMoments(count: &resultCount, mean: mu, m2: sq, channels: channels)
        }
        try team.barrier()
        count = resultCount
        mean.update(from: result, count: channels)
        m2.update(from: result + channels, count: channels)
    }

    func sum(member: Int, _ input: UnsafeMutablePointer<Double>, count: Int) throws {
        try check(count)
        (values.pointer + member * capacity).update(from: input, count: count)
        try team.barrier()
        if member == 0 {
            result.update(from: values.pointer, count: count)
            for m in 1..<team.size {
                let part = values.pointer + m * capacity
                for i in 0..<count { result[i] += part[i] }
            }
            try rankReducer.sum(result, count: count)
        }
        try team.barrier()
        input.update(from: result, count: count)
    }
}
