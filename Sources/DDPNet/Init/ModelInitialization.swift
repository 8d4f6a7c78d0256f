import DDPKernels

extension Model {
    /// Fills `parameters` from `seed`: each parameter draws from Philox(seed, .initialization)
    /// on a stream named by a hash of its state-dict name ("4.weight"), so a parameter gets
    /// the same values whatever other layers the model has (e.g. with `--bn none`, where
    /// batch norm becomes an identity and every other name stays).
    /// `perLayer` overrides the scheme for the layers it names (by layer index).
    ///
    /// Returns warnings for the caller to log: a constant initialization of a hidden
    /// layer's weights (any but the last layer with weights) leaves its units symmetric.
    public func initialize(_ scheme: Initializer, perLayer: [Int: Initializer] = [:], seed: UInt64) throws -> [String] {
        for index in perLayer.keys.sorted() {
            guard layers.indices.contains(index) else {
                throw InitializerError("initializer override for layer \(index), but the model has layers 0..<\(layers.count)")
            }
            guard parameterViews.contains(where: { $0.layerIndex == index && $0.role == .weight }) else {
                throw InitializerError("initializer override for layer \(index) (\(layers[index].summary)), which has no weights")
            }
        }
        let generator = Philox(seed: seed, purpose: .initialization)
        let lastWeighted = parameterViews.last { $0.role == .weight }?.layerIndex
        var warnings: [String] = []
        for view in parameterViews {
            let chosen = perLayer[view.layerIndex] ?? scheme
            do {
                try chosen.fill(parameters.pointer + view.offset, spec: view.spec, generator: generator, stream: Model.stream(named: view.name))
            } catch let error as InitializerError {
                throw InitializerError("\(view.name): \(error.message)")
            }
            if view.role == .weight, view.layerIndex != lastWeighted, chosen.isConstant {
                warnings.append("\(view.name): '\(chosen)' initialization of a hidden layer's weights leaves its units "
                    + "symmetric: they receive identical gradients and never learn different features")
            }
        }
        return warnings
    }

    /// FNV-1a of a parameter's name: its initialization stream.
    static func stream(named name: String) -> UInt32 { FNV1a.hash32(name) }
}
