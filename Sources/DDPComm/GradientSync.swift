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
    private var pieceRanges: [Range<Int>] = []
    private var piecesPerRank: [Int] = []

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

    /// The pieces of the shard tree that rank `rank`'s block covers.
    public static func pieces(_ plan: ShardPlan, rank: Int) -> [ShardTree.Node] {
        plan.tree.pieces(of: plan.block(rank: rank))
    }

    private func layout(_ plan: ShardPlan) {
        guard cachedPlan != plan else { return }
        cachedPlan = plan
        pieceRanges = []
        piecesPerRank = []
        for r in 0..<world.size {
            let pieces = Self.pieces(plan, rank: r)
            piecesPerRank.append(pieces.count)
            pieceRanges += pieces.map(\.shards)
        }
    }

    /// Sums the pieces of every rank (`pieces`: this rank's, in order, `count` Floats each)
    /// along the shard tree into `g`, on every rank.
    public func reduce(pieces: [UnsafeMutablePointer<Float>], plan: ShardPlan, into g: UnsafeMutablePointer<Float>) throws {
        layout(plan)
        let size = world.size, rank = world.rank, n = count
        precondition(pieces.count == piecesPerRank[rank], "rank \(rank) hands over \(pieces.count) pieces, the plan has \(piecesPerRank[rank])")
        if size == 1 {
            if pieces[0] != g { g.update(from: pieces[0], count: n) }
            return
        }
        let chunks = (0..<size).map { contiguousPart(0..<n, parts: size, index: $0) }
        let own = pieces.count
        // 1. Chunk d of each piece to rank d: a single piece is sent from where it lies.
        var sendCounts = [Int32](repeating: 0, count: size), sendDisplacements = [Int32](repeating: 0, count: size)
        let source: UnsafePointer<Float>
        if own == 1 {
            source = UnsafePointer(pieces[0])
            for d in 0..<size { sendCounts[d] = Int32(chunks[d].count); sendDisplacements[d] = Int32(chunks[d].lowerBound) }
        } else {
            if send.capacity < own * n { send = FloatBuffer(capacity: own * n) }
            var at = 0
            for d in 0..<size {
                sendDisplacements[d] = Int32(at)
                for piece in pieces {
                    (send.pointer + at).update(from: piece + chunks[d].lowerBound, count: chunks[d].count)
                    at += chunks[d].count
                }
                sendCounts[d] = Int32(at) - sendDisplacements[d]
            }
            source = UnsafePointer(send.pointer)
        }
        let width = chunks[rank].count, total = pieceRanges.count
        if receive.capacity < total * width { receive = FloatBuffer(capacity: total * width) }
        var receiveCounts = [Int32](repeating: 0, count: size), receiveDisplacements = [Int32](repeating: 0, count: size)
        var at = 0
        for r in 0..<size {
            receiveDisplacements[r] = Int32(at)
            receiveCounts[r] = Int32(piecesPerRank[r] * width)
            at += piecesPerRank[r] * width
        }
        try world.alltoall(source, counts: sendCounts, displacements: sendDisplacements,
                           into: receive.pointer, counts: receiveCounts, displacements: receiveDisplacements)
        // 2. This rank's chunk of the whole tree; 3. every chunk to every rank.
        let r = receive.pointer
        let tree = plan.tree
        let top = tree.reduce(tree.root, items: pieceRanges) { i, j in
            let a = r + i * width, b = r + j * width
            for k in 0..<width { a[k] += b[k] }
        }
        (g + chunks[rank].lowerBound).update(from: r + top * width, count: width)
        try world.allgatherInPlace(g, counts: chunks.map { Int32($0.count) }, displacements: chunks.map { Int32($0.lowerBound) })
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
