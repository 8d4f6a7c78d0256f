import DDPKernels

/// Floating-point operations of the matrix work, the usual way of stating a model's cost:
/// a k x k convolution costs 2·k·k·Cin·Cout·Hout·Wout per sample in forward, a linear
/// layer 2·in·out (a multiply and an add per weight use); element-wise layers (batch norm,
/// activations, pooling) are not counted. Backward is taken as twice forward (one GEMM for
/// the weight gradient, one for the input gradient), so forward plus backward is 3x forward.
public extension Model {
    /// Forward FLOPs of one sample.
    var forwardFlopsPerSample: Double {
        var shape = inputShape
        var total = 0.0
        for (layer, output) in zip(layers, layerOutputShapes) {
            total += forwardFlops(of: layer, input: shape, output: output)
            shape = output
        }
        return total
    }

    /// Forward plus backward FLOPs of one sample (backward ≈ 2x forward).
    var flopsPerSample: Double { 3 * forwardFlopsPerSample }
}

/// Forward FLOPs of one sample through `layer`, for per-sample shapes `input` -> `output`.
func forwardFlops(of layer: Layer, input: Shape, output: Shape) -> Double {
    switch layer {
    case let conv as Conv2d:
        return 2 * Double(conv.kernel * conv.kernel * conv.inChannels * conv.outChannels * output.spatial)
    case let linear as Linear:
        return 2 * Double(linear.inFeatures * linear.outFeatures)
    case let block as ResidualBlock:
        // Every convolution of the block produces the block's output size.
        return block.convolutions.reduce(0) { $0 + forwardFlops(of: $1, input: input, output: output) }
    default:
        return 0
    }
}
