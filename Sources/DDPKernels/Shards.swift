/// Virtual shards (DESIGN I2): a global batch of B samples is cut into shards of m
/// consecutive samples (the last one shorter when m does not divide B). Shards, not ranks or
/// threads, are the units of every sum over samples: each shard's contribution is computed
/// from its own samples alone, and contributions are combined along `ShardTree`, whose
/// shape depends only on shard indices. So the numbers a step produces do not depend on how
/// many ranks or threads computed it.
public struct ShardPlan: Equatable, Sendable {
    /// Samples in this global batch.
    public let samples: Int
    public let shardSize: Int
    public let worldSize: Int

    public init(samples: Int, shardSize: Int, worldSize: Int) {
        precondition(samples >= 0 && shardSize >= 1 && worldSize >= 1, "shard plan of \(samples) samples, shards of \(shardSize), \(worldSize) ranks")
        self.samples = samples; self.shardSize = shardSize; self.worldSize = worldSize
    }

    public var shardCount: Int { (samples + shardSize - 1) / shardSize }

    /// The shards rank `rank` owns: a contiguous block, block sizes differing by at most one
    /// (the first ones longer); empty when there are fewer shards than ranks.
    public func block(rank: Int) -> Range<Int> {
        contiguousPart(0..<shardCount, parts: worldSize, index: rank)
    }

    /// Positions in the global batch of the samples of `shards`.
    public func samples(ofShards shards: Range<Int>) -> Range<Int> {
        min(shards.lowerBound * shardSize, samples) ..< min(shards.upperBound * shardSize, samples)
    }

    /// The canonical tree over all shards of this batch.
    public var tree: ShardTree { ShardTree(span: 0..<shardCount) }
}

/// Where shard j of a batch lies when a batch is cut into shards of `size` samples; nil
/// size: the whole batch is one shard (evaluation, single-layer tests).
@inline(__always)
public func shardCount(batch n: Int, shardSize size: Int?) -> Int {
    guard let size else { return 1 }
    return (n + size - 1) / size
}

@inline(__always)
public func shardRange(_ j: Int, batch n: Int, shardSize size: Int?) -> Range<Int> {
    guard let size else { return 0..<n }
    return j * size ..< min((j + 1) * size, n)
}

/// The fixed binary tree over the shards of `span`, relative to its start: node (lo, size)
/// covers shards lo ..< lo + size (size a power of two, lo a multiple of it) clipped to the
/// span; its value is its left child's plus its right child's, or its left child's alone
/// when the right one lies past the span. Floating-point addition is commutative but not
/// associative: fixing this shape (not who adds, nor where) fixes the bits of a sum.
public struct ShardTree: Sendable {
    public let span: Range<Int>
    /// The root's size: the smallest power of two at least the span's length.
    public let rootSize: Int

    public init(span: Range<Int>) {
        self.span = span
        var size = 1
        while size < span.count { size *= 2 }
        rootSize = size
    }

    /// A node of the tree, with the shards it covers (clipped to the span).
    public struct Node: Equatable, Sendable {
        public let lo: Int
        public let size: Int
        public let shards: Range<Int>
    }

    public var root: Node { node(lo: 0, size: rootSize) }

    func node(lo: Int, size: Int) -> Node {
        let base = span.lowerBound
        return Node(lo: lo, size: size, shards: (base + min(lo, span.count)) ..< (base + min(lo + size, span.count)))
    }

    /// `range` (within the span) as the fewest nodes of the tree, in order: the pieces a
    /// rank or thread holding those shards can sum on its own. One node when `range` is an
    /// aligned block (the whole span, or a power-of-two block at a multiple of its size).
    public func pieces(of range: Range<Int>) -> [Node] {
        precondition(range.isEmpty || (range.lowerBound >= span.lowerBound && range.upperBound <= span.upperBound),
                     "shards \(range) outside \(span)")
        var nodes: [Node] = []
        var lo = range.lowerBound - span.lowerBound
        let end = range.upperBound - span.lowerBound
        while lo < end {
            var size = lo == 0 ? rootSize : lo & -lo
            while min(lo + size, span.count) > end { size /= 2 }
            nodes.append(node(lo: lo, size: size))
            lo = min(lo + size, span.count)
        }
        return nodes
    }

    /// Combines `items` along the tree under `node`: `items` are shard ranges, in order,
    /// tiling `node.shards`, each one a node of this tree (single shards, or pieces).
    /// `combine(i, j)` must fold item j into item i (j's shards follow i's); returns the
    /// index of the item that then holds the node's value.
    @discardableResult
    public func reduce(_ node: Node, items: [Range<Int>], _ combine: (Int, Int) throws -> Void) rethrows -> Int {
        precondition(!node.shards.isEmpty, "reduce over an empty node")
        guard let index = try reduceNode(lo: node.lo, size: node.size, items: items, combine) else {
            preconditionFailure("no items under node \(node.shards)")
        }
        return index
    }

    /// `reduce` with every shard its own item: combines the shards under `node` (which
    /// `combine(i, j)` folds by shard index, j's shard after i's) and returns the shard that
    /// holds the node's value. Allocates nothing.
    @discardableResult
    public func reduceShards(_ node: Node, _ combine: (Int, Int) throws -> Void) rethrows -> Int {
        precondition(!node.shards.isEmpty, "reduce over an empty node")
        return try reduceShardNode(lo: node.lo, size: node.size, combine)!
    }

    private func reduceShardNode(lo: Int, size: Int, _ combine: (Int, Int) throws -> Void) rethrows -> Int? {
        let shards = node(lo: lo, size: size).shards
        if shards.isEmpty { return nil }
        if shards.count == 1 { return shards.lowerBound }
        let half = size / 2
        let left = try reduceShardNode(lo: lo, size: half, combine)!
        if let right = try reduceShardNode(lo: lo + half, size: half, combine) { try combine(left, right) }
        return left
    }

    private func reduceNode(lo: Int, size: Int, items: [Range<Int>], _ combine: (Int, Int) throws -> Void) rethrows -> Int? {
        let shards = node(lo: lo, size: size).shards
        if shards.isEmpty { return nil }
        if let i = Self.item(startingAt: shards.lowerBound, in: items), items[i].upperBound == shards.upperBound { return i }
        precondition(size > 1, "items \(items) do not tile the tree's nodes at shard \(shards.lowerBound)")
        let half = size / 2
        let left = try reduceNode(lo: lo, size: half, items: items, combine)!
        if let right = try reduceNode(lo: lo + half, size: half, items: items, combine) { try combine(left, right) }
        return left
    }

    /// Binary search: the item whose range starts at `shard`.
    static func item(startingAt shard: Int, in items: [Range<Int>]) -> Int? {
        var lo = 0, hi = items.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if items[mid].lowerBound < shard { lo = mid + 1 } else { hi = mid }
        }
        return lo < items.count && items[lo].lowerBound == shard ? lo : nil
    }
}
