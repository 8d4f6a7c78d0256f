import DDPKernels

/// DESIGN's steps 5 and 6, in the canonical order of the shard tree (I2): each shard's
/// gradient sum carries its loss sum, correct count and sample count (three Floats right
/// after the gradients: `tailCount`, the room the model leaves there); a rank hands over the
/// pieces of the tree its shards cover, already summed (ComputeReplicas). Then:
///
/// 1. the vector is cut into one chunk per rank; an all-to-all sends chunk d of every piece
///    to rank d;
/// 2. rank d finishes the tree over all pieces on its chunk, in the tree's order;
/// 3. an all-gather gives every rank every finished chunk.
///
/// With one piece per rank (shards that divide evenly into aligned blocks) each rank sends
/// and receives (P-1)/P of the vector twice, what a ring allreduce moves; see
/// docs/INVARIANCE.md for the costs. Then the gradients are divided by the global sample
/// count: the exact gradient of the mean loss over the global batch, empty ranks included
/// (I3).
public final class GradientSync {
    /// Floats after the gradients: loss sum, correct count, sample count.
    public static let tailCount = 3
    public let parameterCount: Int
    private let world: Communicator
    private var send = FloatBuffer(capacity: 0)
    private var receive = FloatBuffer(capacity: 0)
    private var cachedPlan: ShardPlan?

    public init(parameterCount: Int, world: Communicator) {
        self.parameterCount = parameterCount
        self.world = world
    }

    /// Floats a piece holds.
    public var count: Int { parameterCount + Self.tailCount }

    /// Writes a shard's loss sum, correct count and sample count after its gradients.
    public static func pack(_ g: UnsafeMutablePointer<Float>, parameterCount: Int, lossSum: Double, correct: Double, samples: Int) {
        g[parameterCount] = Float(lossSum)
        g[parameterCount + 1] = Float(correct)
        g[parameterCount + 2] = Float(samples)
    }

    /// What a plan fixes for every step that has it: who holds which piece, and the counts
    /// and displacements of the two collectives (computed once per plan, not per step).
    private struct Exchange {
        var pieceRanges: [Range<Int>] = []
        var piecesPerRank: [Int] = []
        /// Chunk d of the vector is finished by rank d.
        var chunkCounts: [Int32] = []
        var chunkStarts: [Int32] = []
        var sendCounts: [Int32] = []
        var sendDisplacements: [Int32] = []
        var receiveCounts: [Int32] = []
        var receiveDisplacements: [Int32] = []
    }
    private var exchange = Exchange()

    private func layout(_ plan: ShardPlan) {
        guard cachedPlan != plan else { return }
        cachedPlan = plan
        let size = world.size, n = count
        var e = Exchange()
        for r in 0..<size {
            let pieces = plan.tree.pieces(of: plan.block(rank: r))
            e.piecesPerRank.append(pieces.count)
            e.pieceRanges += pieces.map(\.shards)
        }
        let chunks = (0..<size).map { contiguousPart(0..<n, parts: size, index: $0) }
        e.chunkCounts = chunks.map { Int32($0.count) }
        e.chunkStarts = chunks.map { Int32($0.lowerBound) }
        // A single piece is sent from where it lies (chunk d at its own offset); several are
        // packed chunk by chunk into `send`.
        let own = e.piecesPerRank[world.rank]
        var at = 0
        for d in 0..<size {
            e.sendCounts.append(Int32(own * chunks[d].count))
            e.sendDisplacements.append(own == 1 ? e.chunkStarts[d] : Int32(at))
            at += own * chunks[d].count
        }
        let width = chunks[world.rank].count
        at = 0
        for r in 0..<size {
            e.receiveDisplacements.append(Int32(at))
            e.receiveCounts.append(Int32(e.piecesPerRank[r] * width))
            at += e.piecesPerRank[r] * width
        }
        if own > 1 && send.capacity < own * n { send = FloatBuffer(capacity: own * n) }
        if receive.capacity < at { receive = FloatBuffer(capacity: at) }
        exchange = e
    }

    /// Sums the pieces of every rank (`pieces`: this rank's, in order, `count` Floats each)
    /// along the shard tree into `g`, on every rank.
    public func reduce(pieces: [UnsafeMutablePointer<Float>], plan: ShardPlan, into g: UnsafeMutablePointer<Float>) throws {
        layout(plan)
        let size = world.size, rank = world.rank, n = count, e = exchange
        precondition(pieces.count == e.piecesPerRank[rank], "rank \(rank) hands over \(pieces.count) pieces, the plan has \(e.piecesPerRank[rank])")
        if size == 1 {
            if pieces[0] != g { g.update(from: pieces[0], count: n) }
            return
        }
        // 1. Chunk d of each piece to rank d.
        let source: UnsafePointer<Float>
        if pieces.count == 1 {
            source = UnsafePointer(pieces[0])
        } else {
            var at = 0
            for d in 0..<size {
                let start = Int(e.chunkStarts[d]), length = Int(e.chunkCounts[d])
                for piece in pieces {
                    (send.pointer + at).update(from: piece + start, count: length)
                    at += length
                }
            }
            source = UnsafePointer(send.pointer)
        }
        try world.alltoall(source, counts: e.sendCounts, displacements: e.sendDisplacements,
                           into: receive.pointer, counts: e.receiveCounts, displacements: e.receiveDisplacements)
        // 2. This rank's chunk of the whole tree; 3. every chunk to every rank.
        let r = receive.pointer, width = Int(e.chunkCounts[rank])
        let tree = plan.tree
        let top = tree.reduce(tree.root, items: e.pieceRanges) { i, j in
            let a = r + i * width, b = r + j * width
            for k in 0..<width { a[k] += b[k] }
        }
        (g + Int(e.chunkStarts[rank])).update(from: r + top * width, count: width)
        try world.allgatherInPlace(g, counts: e.chunkCounts, displacements: e.chunkStarts)
    }

    /// After `reduce`: divides the gradients by the global sample count; returns the mean
    /// loss, the accuracy and that count.
    public func mean(_ g: UnsafeMutablePointer<Float>) -> (loss: Double, accuracy: Double, samples: Float) {
        let samples = g[parameterCount + 2]
        let scale = 1 / samples
        for i in 0..<parameterCount { g[i] *= scale }
        return (Double(g[parameterCount]) / Double(samples), Double(g[parameterCount + 1]) / Double(samples), samples)
    }
}
