import DDPNet
import Foundation
import SafeTensors

/// Model state as safetensors with PyTorch's state-dict names ("0.weight",
/// "1.running_mean", "1.num_batches_tracked" as int64), so a PyTorch nn.Sequential of the
/// same layers loads it with load_state_dict(strict=True). Optimizer state rides along as
/// "optim.<parameter>.<slot>" entries, which PyTorch users leave out.
public enum StateDict {
    public static let optimizerPrefix = "optim."

    /// The tensors of `model` (and of `optimizer`), borrowing the model's flat buffers:
    /// valid only while `model` and `optimizer` live and are not modified.
    static func tensors(of model: Model, optimizer: Optimizer?) -> [SafeTensorsWriter.Tensor] {
        // The int64 counters go first so that they sit 8-byte aligned in the data section;
        // then parameters and buffers in the module order of PyTorch's state_dict.
        var out: [SafeTensorsWriter.Tensor] = model.bufferViews.filter(\.isCounter).map { v in
            .init(name: v.name, dtype: .i64, shape: v.shape, bytes: UnsafeRawBufferPointer(start: model.counters + v.offset, count: v.count * 8))
        }
        for layer in 0..<model.layers.count {
            for v in model.parameterViews where v.layerIndex == layer {
                out.append(.init(name: v.name, dtype: .f32, shape: v.shape,
                                 bytes: UnsafeRawBufferPointer(start: model.parameters.pointer + v.offset, count: v.count * 4)))
            }
            for v in model.bufferViews where v.layerIndex == layer && !v.isCounter {
                out.append(.init(name: v.name, dtype: .f32, shape: v.shape,
                                 bytes: UnsafeRawBufferPointer(start: model.buffers.pointer + v.offset, count: v.count * 4)))
            }
        }
        if let optimizer {
            for (slot, slotName) in optimizer.slotNames.enumerated() {
                for v in model.parameterViews {
                    let start = optimizer.state.pointer + slot * model.parameterCount + v.offset
                    out.append(.init(name: "\(optimizerPrefix)\(v.name).\(slotName)", dtype: .f32, shape: v.shape,
                                     bytes: UnsafeRawBufferPointer(start: start, count: v.count * 4)))
                }
            }
        }
        return out
    }

    /// Writes model (and optimizer) state atomically to `path`.
    public static func write(model: Model, optimizer: Optimizer?, metadata: [String: String], to path: String) throws {
        try SafeTensorsWriter.write(tensors(of: model, optimizer: optimizer), metadata: metadata, to: path)
    }

    /// Checks, without copying anything, that `file` holds every tensor of `model` (and of
    /// `optimizer`) with the right shape and dtype, and nothing else but optimizer state;
    /// and that every value is finite (counters and variances not negative): a NaN or
    /// infinity in a weight, a running statistic or the optimizer state is damage, named
    /// with the tensor and the index of its first such value (`valueProblem`).
    public static func check(_ file: SafeTensorsFile, fits model: Model, optimizer: Optimizer? = nil) throws {
        var expected = Set<String>()
        var floats: [String] = []
        for v in model.parameterViews {
            expected.insert(v.name)
            try require(file, v.name, v.shape, .f32)
            floats.append(v.name)
        }
        for v in model.bufferViews {
            expected.insert(v.name)
            try require(file, v.name, v.shape, v.isCounter ? .i64 : .f32)
            if !v.isCounter { floats.append(v.name) }
        }
        let unexpected = file.tensors.map(\.name).filter { !expected.contains($0) && !$0.hasPrefix(optimizerPrefix) }
        if !unexpected.isEmpty {
            throw CheckpointError(file.path, "unexpected tensor(s) for this model: \(unexpected.prefix(5).joined(separator: ", "))"
                                  + (unexpected.count > 5 ? " and \(unexpected.count - 5) more" : ""))
        }
        if let optimizer {
            for slotName in optimizer.slotNames {
                for v in model.parameterViews {
                    let name = "\(optimizerPrefix)\(v.name).\(slotName)"
                    try require(file, name, v.shape, .f32)
                    floats.append(name)
                }
            }
        }
        for name in floats {
            if let problem = valueProblem(in: file, name) { throw CheckpointError.damaged(file.path, "damaged: \(problem)") }
        }
        for v in model.bufferViews where v.isCounter {
            if let index = try file.values(of: v.name, as: Int64.self).firstIndex(where: { $0 < 0 }) {
                throw CheckpointError.damaged(file.path, "damaged: tensor \(v.name) holds a negative count at index \(index)")
            }
        }
    }

    /// What is wrong with tensor `name`'s values, if anything: a NaN or an infinity, or in a
    /// tensor of variances (batch norm's running_var, Adam's exp_avg_sq) a negative value,
    /// which no training writes and which turns every output it scales into NaN.
    public static func valueProblem(in file: SafeTensorsFile, _ name: String) -> String? {
        if let (index, value) = file.firstNonFinite(in: name) {
            return "tensor \(name) holds a non-finite value (\(value)) at index \(index)"
        }
        if name.hasSuffix(".running_var") || name.hasSuffix(".exp_avg_sq"), let (index, value) = file.firstNegative(in: name) {
            return "tensor \(name) holds a negative variance (\(value)) at index \(index)"
        }
        return nil
    }

    /// Copies every parameter and buffer of `model` from `file` after `check` passed, so a
    /// file that does not fit, or holds a non-finite value, leaves the model untouched. Strict like PyTorch: a missing or
    /// unexpected entry (other than optimizer state) is an error naming it.
    public static func load(_ file: SafeTensorsFile, into model: Model) throws {
        try check(file, fits: model)
        for v in model.parameterViews {
            try file.copyValues(of: v.name, shape: v.shape,
                                into: UnsafeMutableBufferPointer(start: model.parameters.pointer + v.offset, count: v.count))
        }
        for v in model.bufferViews {
            if v.isCounter {
                try file.copyValues(of: v.name, shape: v.shape, into: UnsafeMutableBufferPointer(start: model.counters + v.offset, count: v.count))
            } else {
                try file.copyValues(of: v.name, shape: v.shape,
                                    into: UnsafeMutableBufferPointer(start: model.buffers.pointer + v.offset, count: v.count))
            }
        }
    }

    /// Optimizer state from "optim.<parameter>.<slot>" entries, after
    /// `check(_:fits:optimizer:)` passed (which also checks the values are finite).
    public static func loadOptimizer(_ file: SafeTensorsFile, into optimizer: Optimizer, model: Model) throws {
        for (slot, slotName) in optimizer.slotNames.enumerated() {
            for v in model.parameterViews {
                let name = "\(optimizerPrefix)\(v.name).\(slotName)"
                try require(file, name, v.shape, .f32)
                try file.copyValues(of: name, shape: v.shape,
                                    into: UnsafeMutableBufferPointer(start: optimizer.state.pointer + slot * model.parameterCount + v.offset, count: v.count))
            }
        }
    }

    private static func require(_ file: SafeTensorsFile, _ name: String, _ shape: [Int], _ dtype: SafeTensorsDType) throws {
        guard let t = file.tensor(named: name) else {
            throw CheckpointError(file.path, "tensor \(name) is missing (the model has it with shape \(shape)); was it saved from another model?")
        }
        guard t.shape == shape else {
            throw CheckpointError(file.path, "tensor \(name) has shape \(t.shape), the model needs \(shape); was it saved from another model?")
        }
        guard t.dtype == dtype else {
            throw CheckpointError(file.path, "tensor \(name) is \(t.dtype.rawValue), the model needs \(dtype.rawValue)")
        }
    }
}

/// A checkpoint or weights file that is damaged (`isDamage`: read, but its metadata or
/// values are wrong), or sound but not for this run (another model, dataset, ...).
public struct CheckpointError: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    public var isDamage = false
    public init(_ path: String, _ problem: String) { self.path = path; self.problem = problem }
    public var description: String { "\(path): \(problem)" }

    static func damaged(_ path: String, _ problem: String) -> CheckpointError {
        var error = CheckpointError(path, problem)
        error.isDamage = true
        return error
    }
}

/// --init-from: a file of weights (ours or PyTorch's), read on rank 0.
func loadStateDict(path: String, into model: Model) throws {
    let file = try SafeTensorsFile(path: path)
    try StateDict.load(file, into: model)
}
