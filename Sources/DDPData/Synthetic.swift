import DDPKernels
import DDPSystem

extension Dataset {
    /// A learnable classification set for tests: each class has a random prototype image,
    /// and a sample is its class's prototype plus uniform noise in -64...63 per pixel, clamped
    /// to 0...255. Prototypes lie far apart compared with the noise, so a small MLP (even a
    /// linear model) can fit it to near-zero loss. Every byte is a pure function of (seed,
    /// split, sample index) through Philox. Train and test share the prototypes and draw
    /// different samples.
    ///
    /// Sizes are checked before anything is allocated: a count or shape whose bytes overflow,
    /// exceed 32-bit sample indices or the memory available throws a DataError named after
    /// the dataset ("synthetic-train").
    public static func synthetic(count: Int, channels: Int, height: Int, width: Int, classes: Int,
                                 seed: UInt64, split: Split = .train) throws -> Dataset {
        let name = "synthetic-\(split.rawValue)"
        let layout = Layout(count: count, channels: channels, height: height, width: width, classes: classes, key: [])
        guard count >= 1 else { throw DataError(name, "needs at least 1 sample, got \(count)") }
        if let problem = layout.problem { throw DataError(name, problem) }
        let n = layout.samplePixels
        guard let prototypeBytes = checkedProduct([classes, n]) else {
            throw DataError(name, "\(classes) class prototypes of \(layout.shapeText) are too large (the size in bytes overflows)")
        }
        try MemoryBudget.check(prototypeBytes, for: "\(classes) class prototypes of \(layout.shapeText)", path: name)
        let storage = try Storage(allocating: layout, path: name, what: "\(count) samples of \(layout.shapeText)")
        let random = Philox(seed: seed, purpose: .synthetic)
        // Streams (counter word 1): 0 prototypes; 1, 2 labels; 3, 4 noise (train, test).
        let labelStream: UInt32 = split == .train ? 1 : 2, noiseStream = labelStream + 2

        let labels = (storage.base + storage.layout.labelsOffset).assumingMemoryBound(to: Int32.self)
        let pixels = (storage.base + storage.layout.pixelsOffset).assumingMemoryBound(to: UInt8.self)
        let prototypes = UnsafeMutablePointer<UInt8>.allocate(capacity: classes * n)
        defer { prototypes.deallocate() }
        for k in 0..<classes { randomBytes(random, into: prototypes + k * n, count: n, stream: 0, UInt32(k)) }

        for i in 0..<count {
            let label = random.below(classes, index: UInt64(i), stream: labelStream)
            labels[i] = Int32(label)
            let sample = pixels + i * n, prototype = prototypes + label * n
            randomBytes(random, into: sample, count: n, stream: noiseStream, UInt32(truncatingIfNeeded: i))
            for j in 0..<n { sample[j] = UInt8(clamping: Int(prototype[j]) + Int(sample[j] >> 1) - 64) }
        }
        return Dataset(storage: storage, name: name, firstN: nil, cacheStatus: .disabled)
    }

    /// `count` random bytes of stream (a, b): the 16 bytes of each Philox block in turn.
    private static func randomBytes(_ random: Philox, into out: UnsafeMutablePointer<UInt8>, count: Int,
                                    stream a: UInt32, _ b: UInt32) {
        var block: UInt32 = 0
        for start in stride(from: 0, to: count, by: 16) {
            let r = random.block(block, a, b, 0)
            for t in 0..<min(16, count - start) {
                let word = t < 4 ? r.0 : t < 8 ? r.1 : t < 12 ? r.2 : r.3
                out[start + t] = UInt8(truncatingIfNeeded: word >> UInt32(8 * (t & 3)))
            }
            block += 1
        }
    }
}
