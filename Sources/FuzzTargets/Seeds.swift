import DDPData
import DDPNet
import DDPTrain
import Foundation
import SafeTensors

extension FuzzTarget {
    /// Writes this target's seed corpus, valid inputs made by the project's own writers, into
    /// `directory` (which must exist). `launch/fuzz --seeds` refreshes Fuzz/corpus with it
    /// after a format changes.
    public func writeSeeds(to directory: String) throws {
        for (name, bytes) in try seeds() {
            guard FileManager.default.createFile(atPath: directory + "/" + name, contents: Data(bytes)) else {
                throw FixtureError("cannot write \(directory)/\(name)")
            }
        }
    }

    private func seeds() throws -> [(String, [UInt8])] {
        switch self {
        case .safetensors:
            let path = ScratchFiles.directory + "/seed.safetensors"
            try SafeTensorsWriter.write([
                .init(name: "weight", shape: [2, 3], values: [Float](repeating: 0.5, count: 6)),
                .init(name: "scale", shape: [2], values: [1.0, -2.0] as [Double]),
                .init(name: "count", shape: [], values: [Int64(7)]),
                .init(name: "index", shape: [2], values: [Int32(1), 2]),
                .init(name: "bytes", shape: [3], values: [UInt8(1), 2, 3]),
                .init(name: "empty", shape: [0, 4], values: [Float]()),
            ], metadata: ["note": "fuzz seed"], to: path)
            // As another writer (Python's safetensors) spells it: no metadata, no checksum.
            var foreign = Array(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.utf8)
            while foreign.count % 8 != 0 { foreign.append(UInt8(ascii: " ")) }
            let prefix = withUnsafeBytes(of: UInt64(foreign.count).littleEndian) { [UInt8]($0) }
            return [("writer.safetensors", try read(path)), ("foreign.safetensors", prefix + foreign + [0, 0, 0x80, 0x3f]),
                    ("checkpoint.safetensors", try checkpoint())]
        case .checkpoint:
            // Zero-padded numbers (which the reader accepts) give mutations room: a digit
            // changed keeps the header's length, and 19 digits reach Int's limits.
            return [("step-00000003.safetensors", try checkpoint()),
                    ("step-padded.safetensors", try checkpoint(digits: 19))]
        case .idx:
            let images = IDXBytes.images(count: 3, rows: 2, cols: 2), labels = IDXBytes.labels([0, 7, 9])
            return [("plain.idx", Self.idxInput(images: images, labels: labels)),
                    ("gzip.idx", Self.idxInput(images: try gzipped(images), labels: try gzipped(labels)))]
        case .cifar10:
            let records = [UInt8]([0, 5, 9]).flatMap { label in [label] + (0..<3072).map { UInt8(($0 + Int(label)) % 256) } }
            return [("batch.bin", records)]
        case .cache:
            return [("mapped.ddpcache", try read(CacheFixture.shared.cacheFile))]
        case .config:
            var config = TrainConfig()
            config.dataset = "synthetic"; config.model = "mlp"; config.steps = 20; config.clipNorm = nil
            config.schedule = "step:10:0.5"; config.perRankBatch = 8
            return [("default.json", Array(TrainConfig().json.utf8)), ("synthetic.json", Array(config.json.utf8)),
                    ("config.yaml", Array("""
                    # a config file names what it changes
                    dataset: fashion-mnist
                    model: lenet5
                    epochs: 2
                    global-batch: 128
                    optimizer: adamw
                    lr: 1.0e-3
                    schedule: cosine:1e-5
                    clip-norm: null
                    bn: local
                    seed: 42
                    shuffle: false
                    threads: 1

                    """.utf8))]
        case .model:
            return [("small-cnn.yaml", Array("""
                    name: small-cnn
                    layers:
                      - {type: conv2d, out: 16, kernel: 3, padding: 1, init: he-normal}
                      - batchnorm
                      - relu
                      - {type: maxpool2d, kernel: 2}
                      - flatten
                      - {type: linear, out: 10}

                    """.utf8)),
                    ("resnet.yaml", Array("""
                    - conv2d: {out: 16, kernel: 3, padding: 1, bias: false}
                    - bn: {eps: 1.0e-5, momentum: 0.1}
                    - relu
                    - residual: {out: 32, stride: 2}
                    - globalavgpool2d
                    - flatten
                    - dropout: {p: 0.25}
                    - dense: {out: 10}

                    """.utf8)),
                    ("mlp.json", Array("""
                    {"name": "mlp", "layers": [{"type": "avgpool2d", "kernel": 2, "stride": 2, "padding": 0}, "flatten",
                     {"type": "linear", "out": 64, "bias": false}, {"type": "leakyrelu", "slope": 0.1},
                     {"type": "elu", "alpha": 1}, "gelu", "selu", "tanh", "sigmoid", "identity",
                     {"type": "linear", "out": 10, "init": "xavier-uniform"}]}

                    """.utf8))]
        }
    }

    /// The idx target's input: the images file's length (4 bytes, little-endian), the
    /// images file, then the labels file.
    public static func idxInput(images: [UInt8], labels: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: UInt32(images.count).littleEndian) { [UInt8]($0) } + images + labels
    }

    /// A checkpoint of `SeedModel` as the trainer writes one, at step 3 (epoch 1 of 2-step
    /// epochs, position 1) of a 2-rank run; `digits`: its numbers zero-padded to that width.
    private func checkpoint(digits: Int = 1) throws -> [UInt8] {
        func number(_ n: Int) -> String { String(repeating: "0", count: max(0, digits - String(n).count)) + String(n) }
        let (model, optimizer) = try SeedModel.make()
        var config = TrainConfig()
        config.dataset = "synthetic"; config.model = "fuzz-seed.yaml"; config.globalBatch = 4
        // CheckpointStore.metadata's keys, spelled out: TrainingPosition has no public initializer.
        let metadata = [
            "format": "ddptrain-checkpoint", "format_version": CheckpointStore.formatVersion,
            "step": number(3), "epoch": number(1), "position_in_epoch": number(1), "steps_per_epoch": number(2),
            "optimizer_steps": number(3), "skipped_steps": number(0), "consecutive_skipped_steps": number(0),
            "world_size": number(2), "global_batch": number(4),
            "seed": "0", "dataset": "synthetic-train", "model": config.model,
            "normalize.mean": "0.0", "normalize.std": "1.0", "config": config.json,
        ]
        let path = ScratchFiles.directory + "/seed-checkpoint.safetensors"
        try StateDict.write(model: model, optimizer: optimizer, metadata: metadata, to: path)
        return try read(path)
    }

    private func read(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else { throw FixtureError("cannot read \(path)") }
        return [UInt8](data)
    }
}
