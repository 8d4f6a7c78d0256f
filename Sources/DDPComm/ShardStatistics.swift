import DDPKernels
import DDPNet

/// Batch statistics over groups of shards, the same bits at any world size (DESIGN I2):
/// `--bn sync` (one group, the whole global batch) and `--bn group:G` (G consecutive
/// shards; group:1 is ghost batch norm). Each rank sums its shards of each group along that
/// group's shard tree as far as its own shards go (its pieces), one allgather brings every
/// rank's pieces to every rank, and every rank finishes each group's tree itself, in the
/// same order, so every rank computes the same bits. Moments are (count, means, M2s) merged
/// with Chan et al.'s pairwise formula, which keeps the variance exact when the mean is
/// large against the spread; the backward pass's two sums per channel go the same way,
/// added. The running statistics follow the whole global batch's moments (with group:G,
/// the groups' merged along the tree over groups). Time spent in collectives is
/// communication.
public final class ShardStatistics: BatchStatisticsReducer {
    /// Shards per statistics group; nil: the whole global batch.
    public let groupSize: Int?
    private let world: Communicator
    /// This step's shards: set by the trainer before each forward.
    public var plan: ShardPlan { didSet { if plan != oldValue { layout = nil } } }
    private var layout: Layout?
    private var send: [Double] = []
    private var gathered: [Double] = []
    private var seconds = 0.0
    /// Per group, the index in `gathered` of its combined record (sized with the layout).
    private var tops: [Int] = []

    public init(world: Communicator, groupSize: Int?, plan: ShardPlan) {
        self.world = world
        self.groupSize = groupSize
        self.plan = plan
    }

    /// Who holds which piece of which group, the same on every rank.
    struct Layout {
        /// Statistics groups, as shard ranges, in order.
        var groups: [Range<Int>]
        /// Every rank's pieces, rank after rank (so in shard order), with their group.
        var pieces: [(shards: Range<Int>, group: Int)]
        var piecesPerRank: [Int]
        /// Index in `pieces` of this rank's first piece.
        var firstOwnPiece: Int
        /// Per group, its pieces' ranges and the index of the first in `pieces`.
        var groupItems: [(ranges: [Range<Int>], first: Int)]
        /// This rank's pieces as nodes of their group's tree.
        var ownNodes: [ShardTree.Node]
    }

    private func makeLayout() -> Layout {
        let count = plan.shardCount
        let size = groupSize ?? max(count, 1)
        let groups = stride(from: 0, to: count, by: size).map { $0 ..< min($0 + size, count) }
        var pieces: [(shards: Range<Int>, group: Int)] = []
        var perRank: [Int] = []
        var firstOwn = 0
        for r in 0..<world.size {
            let block = plan.block(rank: r)
            if r == world.rank { firstOwn = pieces.count }
            var n = 0
            if !block.isEmpty {
                for g in (block.lowerBound / size)...((block.upperBound - 1) / size) {
                    let part = max(block.lowerBound, groups[g].lowerBound) ..< min(block.upperBound, groups[g].upperBound)
                    for node in ShardTree(span: groups[g]).pieces(of: part) { pieces.append((node.shards, g)); n += 1 }
                }
            }
            perRank.append(n)
        }
        var items = groups.map { _ in (ranges: [Range<Int>](), first: 0) }
        for (i, piece) in pieces.enumerated() {
            if items[piece.group].ranges.isEmpty { items[piece.group].first = i }
            items[piece.group].ranges.append(piece.shards)
        }
        let ownNodes = (0..<perRank[world.rank]).map { p -> ShardTree.Node in
            let piece = pieces[firstOwn + p]
            return ShardTree(span: groups[piece.group]).pieces(of: piece.shards)[0]
        }
        tops = [Int](repeating: 0, count: groups.count)
        return Layout(groups: groups, pieces: pieces, piecesPerRank: perRank, firstOwnPiece: firstOwn, groupItems: items, ownNodes: ownNodes)
    }

    /// Combines this rank's shard records (`width` Doubles each, shards of `block`) into
    /// every group's combined record, written back to each of this rank's shards; returns
    /// the layout and the gathered records (one per piece, each group's total at the index
    /// `reduceGroup` reported).
    private func exchange(_ records: UnsafeMutablePointer<Double>, width: Int, shards: Int, firstShard: Int,
                          _ combine: (UnsafeMutablePointer<Double>, UnsafePointer<Double>) -> Void) throws -> Layout {
        if layout == nil { layout = makeLayout() }
        let layout = layout!
        let block = plan.block(rank: world.rank)
        guard firstShard == block.lowerBound, shards == block.count else {
            throw LayerError("batch statistics for shards \(firstShard)..<\(firstShard + shards), but this rank holds \(block) of this step's \(plan.shardCount)")
        }
        // This rank's pieces, each summed along its group's tree.
        let own = layout.piecesPerRank[world.rank]
        let total = layout.pieces.count
        if send.count < max(own, 1) * width { send = [Double](repeating: 0, count: max(own, 1) * width) }
        if gathered.count < total * width { gathered = [Double](repeating: 0, count: total * width) }
        for p in 0..<own {
            let piece = layout.pieces[layout.firstOwnPiece + p]
            let tree = ShardTree(span: layout.groups[piece.group])
            let top = tree.reduceShards(layout.ownNodes[p]) { i, j in
                combine(records + (i - firstShard) * width, records + (j - firstShard) * width)
            }
            let result = records + (top - firstShard) * width
            send.withUnsafeMutableBufferPointer { s in (s.baseAddress! + p * width).update(from: result, count: width) }
        }
        if world.size > 1 {
            let start = Clock.seconds()
            let counts = layout.piecesPerRank.map { Int32($0 * width) }
            try send.withUnsafeBufferPointer { s in
                try gathered.withUnsafeMutableBufferPointer { g in
                    try world.allgather(s.baseAddress!, count: own * width, into: g.baseAddress!, counts: counts)
                }
            }
            seconds += Clock.seconds() - start
        } else {
            for i in 0..<own * width { gathered[i] = send[i] }
        }
        // Every group's tree, finished the same way on every rank.
        gathered.withUnsafeMutableBufferPointer { g in
            let base = g.baseAddress!
            for (index, group) in layout.groups.enumerated() {
                let items = layout.groupItems[index]
                let tree = ShardTree(span: group)
                let top = tree.reduce(tree.root, items: items.ranges) { i, j in
                    combine(base + (items.first + i) * width, base + (items.first + j) * width)
                }
                tops[index] = items.first + top
            }
            for j in 0..<shards {
                let group = (firstShard + j) / (groupSize ?? max(plan.shardCount, 1))
                (records + j * width).update(from: base + tops[group] * width, count: width)
            }
        }
        return layout
    }

    public func combineMoments(_ m: ShardMoments) throws {
        let size = m.recordSize, channels = m.channels
        let layout = try exchange(m.records, width: size, shards: m.shards, firstShard: m.firstShard) { a, b in
            mergeMomentRecord(into: a, b, channels: channels)
        }
        // The running statistics follow the whole batch: the groups merged along their tree.
        gathered.withUnsafeMutableBufferPointer { g in
            let base = g.baseAddress!
            let tree = ShardTree(span: 0..<layout.groups.count)
            let top = tree.reduceShards(tree.root) { i, j in
                mergeMomentRecord(into: base + tops[i] * size, base + tops[j] * size, channels: channels)
            }
            m.running.update(from: base + tops[top] * size, count: size)
        }
    }

    public func sum(_ records: UnsafeMutablePointer<Double>, width: Int, shards: Int, firstShard: Int) throws {
        _ = try exchange(records, width: width, shards: shards, firstShard: firstShard) { a, b in
            for k in 0..<width { a[k] += b[k] }
        }
    }

    /// Seconds spent in collectives since the last call.
    public func takeSeconds() -> Double {
        defer { seconds = 0 }
        return seconds
    }
}
