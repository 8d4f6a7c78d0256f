import DDPKernels
import DDPNet

/// Cross-rank batch statistics for sync-BN. Moments travel by one allgather of
/// (count, means, M2s) and are merged in rank order with Chan et al.'s pairwise formula,
/// so every rank computes the same bits and the variance stays exact when the mean is
/// large against the spread (raw sums of squares would cancel). Gradient sums for the
/// backward pass are one allreduce. Time spent here is communication.
public final class SyncBatchStatistics: BatchStatisticsReducer {
    private let world: Communicator
    private var send: [Double] = []
    private var gathered: [Double] = []
    /// Seconds spent in collectives since the last `takeSeconds()`.
    private var seconds = 0.0

    public init(world: Communicator) { self.world = world }

    /// Sizes the exchange buffers once for the widest layer, so steps allocate nothing.
    public func reserve(channels: Int) {
        let record = 1 + 2 * channels
        if send.count < record {
            send = [Double](repeating: 0, count: record)
            gathered = [Double](repeating: 0, count: record * world.size)
        }
    }

    public func combineMoments(count: inout Double, mean: UnsafeMutablePointer<Double>, m2: UnsafeMutablePointer<Double>, channels: Int) throws {
        reserve(channels: channels)
        let record = 1 + 2 * channels
        send[0] = count
        for c in 0..<channels { send[1 + c] = mean[c]; send[1 + channels + c] = m2[c] }
        let start = Clock.seconds()
        try send.withUnsafeBufferPointer { s in
            try gathered.withUnsafeMutableBufferPointer { g in
                try world.allgather(s.baseAddress!, count: record, into: g.baseAddress!)
            }
        }
        seconds += Clock.seconds() - start
        // Chan's merge of (nA, meanA, M2A) with (nB, meanB, M2B), in rank order.
        var n = 0.0
        for c in 0..<channels { mean[c] = 0; m2[c] = 0 }
        gathered.withUnsafeBufferPointer { g in
            for r in 0..<world.size {
                let part = g.baseAddress! + r * record
                let nb = part[0]
                if nb == 0 { continue }
                mergeMoments(mean: mean, m2: m2, count: n, partMean: part + 1, partM2: part + 1 + channels, partCount: nb, channels: channels)
                n += nb
            }
        }
        count = n
    }

    public func sum(_ values: UnsafeMutablePointer<Double>, count: Int) throws {
        let start = Clock.seconds()
        try world.allreduce(values, count: count)
        seconds += Clock.seconds() - start
    }

    public func takeSeconds() -> Double {
        defer { seconds = 0 }
        return seconds
    }
}
