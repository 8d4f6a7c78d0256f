import DDPKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How parameters start: PyTorch's `torch.nn.init` schemes, named as on the command line.
///
/// The scheme fills parameters with role `.weight`. Biases start at zero, except under
/// `default`, where they get PyTorch's U(±1/sqrt(fan_in)). Batch-norm gamma always starts
/// at 1 and beta at 0.
public enum Initializer: Equatable, Sendable, CustomStringConvertible {
    /// PyTorch's per-layer default: weight U(±1/sqrt(fan_in)), which is
    /// kaiming_uniform(a = sqrt(5)), and bias U(±1/sqrt(fan_in)).
    case `default`
    case zeros
    case ones
    case constant(Float)
    /// U(low, high).
    case uniform(Float, Float)
    case normal(mean: Float, std: Float)
    /// N(mean, std²) cut at mean ± 2 std, as `trunc_normal_(mean, std, mean - 2 std, mean + 2 std)`.
    case truncatedNormal(mean: Float, std: Float)
    /// U(±gain·sqrt(6 / (fan_in + fan_out))).
    case xavierUniform(gain: Float)
    /// N(0, (gain·sqrt(2 / (fan_in + fan_out)))²).
    case xavierNormal(gain: Float)
    /// U(±sqrt(6 / fan)): PyTorch's kaiming_uniform_ for ReLU.
    case kaimingUniform(mode: FanMode)
    /// N(0, 2 / fan): PyTorch's kaiming_normal_ for ReLU.
    case kaimingNormal(mode: FanMode)
    /// U(±sqrt(3 / fan_in)).
    case lecunUniform
    /// N(0, 1 / fan_in).
    case lecunNormal
    /// A (semi-)orthogonal matrix of shape [shape[0], product of the rest], times gain.
    case orthogonal(gain: Float)
    /// Linear: the identity matrix (PyTorch's eye_); convolution: PyTorch's dirac_, which
    /// passes channel d through to channel d for d < min(out, in).
    case identity

    public enum FanMode: String, Sendable {
        case fanIn = "fan_in"
        case fanOut = "fan_out"
    }

    /// The accepted spellings, for help texts and error messages.
    public static let spellings = [
        "default", "zeros", "ones", "constant:<value>", "uniform:<low>,<high>", "normal:<mean>,<std>",
        "truncated-normal:<mean>,<std>", "xavier-uniform[:<gain>]", "xavier-normal[:<gain>]",
        "glorot-uniform[:<gain>]", "glorot-normal[:<gain>]", "kaiming-uniform[:fan_in|fan_out]",
        "kaiming-normal[:fan_in|fan_out]", "he-uniform[:fan_in|fan_out]", "he-normal[:fan_in|fan_out]",
        "lecun-uniform", "lecun-normal", "orthogonal[:<gain>]", "identity",
    ]

    public init(parsing text: String) throws {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        let name = parts[0].lowercased()
        let argument = parts.count > 1 ? String(parts[1]) : nil

        func numbers(_ count: Int, _ usage: String) throws -> [Float] {
            guard let argument else { throw InitializerError("'\(text)': \(name) needs \(usage)") }
            let fields = argument.split(separator: ",", omittingEmptySubsequences: false)
            guard fields.count == count else { throw InitializerError("'\(text)': \(name) needs \(usage)") }
            return try fields.map { field in
                guard let value = Float(field), value.isFinite else {
                    throw InitializerError("'\(text)': '\(field)' is not a finite number")
                }
                return value
            }
        }
        func noArgument() throws {
            if let argument { throw InitializerError("'\(text)': \(name) takes no argument, got '\(argument)'") }
        }
        func gain() throws -> Float { try argument == nil ? 1 : numbers(1, "a gain, e.g. \(name):1.414")[0] }
        func mode() throws -> FanMode {
            guard let argument else { return .fanIn }
            guard let mode = FanMode(rawValue: argument.lowercased()) else {
                throw InitializerError("'\(text)': mode '\(argument)' is not fan_in or fan_out")
            }
            return mode
        }
        func meanStd() throws -> (Float, Float) {
            let v = try numbers(2, "a mean and a std, e.g. \(name):0,0.02")
            guard v[1] >= 0 else { throw InitializerError("'\(text)': std \(v[1]) is negative") }
            return (v[0], v[1])
        }

        switch name {
        case "default": try noArgument(); self = .default
        case "zeros": try noArgument(); self = .zeros
        case "ones": try noArgument(); self = .ones
        case "constant": self = .constant(try numbers(1, "a value, e.g. constant:0.1")[0])
        case "uniform":
            let v = try numbers(2, "low and high bounds, e.g. uniform:-0.1,0.1")
            guard v[0] <= v[1] else { throw InitializerError("'\(text)': low \(v[0]) is above high \(v[1])") }
            self = .uniform(v[0], v[1])
        case "normal": let (m, s) = try meanStd(); self = .normal(mean: m, std: s)
        case "truncated-normal": let (m, s) = try meanStd(); self = .truncatedNormal(mean: m, std: s)
        case "xavier-uniform", "glorot-uniform": self = .xavierUniform(gain: try gain())
        case "xavier-normal", "glorot-normal": self = .xavierNormal(gain: try gain())
        case "kaiming-uniform", "he-uniform": self = .kaimingUniform(mode: try mode())
        case "kaiming-normal", "he-normal": self = .kaimingNormal(mode: try mode())
        case "lecun-uniform": try noArgument(); self = .lecunUniform
        case "lecun-normal": try noArgument(); self = .lecunNormal
        case "orthogonal": self = .orthogonal(gain: try gain())
        case "identity": try noArgument(); self = .identity
        default:
            throw InitializerError("unknown initializer '\(text)'; valid: \(Initializer.spellings.joined(separator: ", "))")
        }
    }

    /// The canonical spelling, which `init(parsing:)` reads back.
    public var description: String {
        func withGain(_ name: String, _ gain: Float) -> String { gain == 1 ? name : "\(name):\(gain)" }
        func withMode(_ name: String, _ mode: FanMode) -> String { mode == .fanIn ? name : "\(name):\(mode.rawValue)" }
        switch self {
        case .default: return "default"
        case .zeros: return "zeros"
        case .ones: return "ones"
        case .constant(let value): return "constant:\(value)"
        case .uniform(let low, let high): return "uniform:\(low),\(high)"
        case .normal(let mean, let std): return "normal:\(mean),\(std)"
        case .truncatedNormal(let mean, let std): return "truncated-normal:\(mean),\(std)"
        case .xavierUniform(let gain): return withGain("xavier-uniform", gain)
        case .xavierNormal(let gain): return withGain("xavier-normal", gain)
        case .kaimingUniform(let mode): return withMode("kaiming-uniform", mode)
        case .kaimingNormal(let mode): return withMode("kaiming-normal", mode)
        case .lecunUniform: return "lecun-uniform"
        case .lecunNormal: return "lecun-normal"
        case .orthogonal(let gain): return withGain("orthogonal", gain)
        case .identity: return "identity"
        }
    }

    /// True when every weight gets the same value, so a hidden layer's units stay symmetric.
    var isConstant: Bool {
        switch self {
        case .zeros, .ones, .constant: return true
        case .uniform(let low, let high): return low == high
        case .normal(_, let std), .truncatedNormal(_, let std): return std == 0
        default: return false
        }
    }

    /// Fills one parameter following the role rules above. Random numbers come from
    /// `generator` on `stream`, so the result depends only on (key, stream, spec).
    public func fill(_ p: UnsafeMutablePointer<Float>, spec: ParameterSpec, generator: Philox, stream: UInt32) throws {
        let n = spec.count
        switch spec.role {
        case .normWeight: p.update(repeating: 1, count: n); return
        case .normBias: p.update(repeating: 0, count: n); return
        case .bias:
            if self == .default {
                let bound = try 1 / fan(spec.fanIn, "fan_in", spec).squareRoot()
                fillUniform(p, n, -bound, bound, generator, stream)
            } else {
                p.update(repeating: 0, count: n)
            }
            return
        case .weight: break
        }

        switch self {
        case .default:
            let bound = try 1 / fan(spec.fanIn, "fan_in", spec).squareRoot()
            fillUniform(p, n, -bound, bound, generator, stream)
        case .zeros: p.update(repeating: 0, count: n)
        case .ones: p.update(repeating: 1, count: n)
        case .constant(let value): p.update(repeating: value, count: n)
        case .uniform(let low, let high): fillUniform(p, n, Double(low), Double(high), generator, stream)
        case .normal(let mean, let std): fillNormal(p, n, Double(mean), Double(std), generator, stream)
        case .truncatedNormal(let mean, let std):
            fillTruncatedNormal(p, n, Double(mean), Double(std), generator, stream)
        case .xavierUniform(let gain):
            let fans = try fan(spec.fanIn, "fan_in", spec) + fan(spec.fanOut, "fan_out", spec)
            let bound = Double(gain) * (6 / fans).squareRoot()
            fillUniform(p, n, -bound, bound, generator, stream)
        case .xavierNormal(let gain):
            let fans = try fan(spec.fanIn, "fan_in", spec) + fan(spec.fanOut, "fan_out", spec)
            fillNormal(p, n, 0, Double(gain) * (2 / fans).squareRoot(), generator, stream)
        case .kaimingUniform(let mode):
            let bound = try (6 / fan(spec, mode)).squareRoot()
            fillUniform(p, n, -bound, bound, generator, stream)
        case .kaimingNormal(let mode):
            try fillNormal(p, n, 0, (2 / fan(spec, mode)).squareRoot(), generator, stream)
        case .lecunUniform:
            let bound = try (3 / fan(spec.fanIn, "fan_in", spec)).squareRoot()
            fillUniform(p, n, -bound, bound, generator, stream)
        case .lecunNormal:
            try fillNormal(p, n, 0, (1 / fan(spec.fanIn, "fan_in", spec)).squareRoot(), generator, stream)
        case .orthogonal(let gain):
            try fillOrthogonal(p, spec, Double(gain), generator, stream)
        case .identity:
            try fillIdentity(p, spec)
        }
    }

    private func fan(_ spec: ParameterSpec, _ mode: FanMode) throws -> Double {
        try mode == .fanIn ? fan(spec.fanIn, "fan_in", spec) : fan(spec.fanOut, "fan_out", spec)
    }

    private func fan(_ value: Int, _ name: String, _ spec: ParameterSpec) throws -> Double {
        guard value > 0 else { throw InitializerError("\(self) needs a positive \(name) for '\(spec.name)' \(spec.shape), got \(value)") }
        return Double(value)
    }
}

public struct InitializerError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

private func fillUniform(_ p: UnsafeMutablePointer<Float>, _ n: Int, _ low: Double, _ high: Double,
                         _ generator: Philox, _ stream: UInt32) {
    generator.fillUniform(p, count: n, stream: stream)
    let offset = Float(low), width = Float(high - low)
    for i in 0..<n { p[i] = offset + width * p[i] }
}

private func fillNormal(_ p: UnsafeMutablePointer<Float>, _ n: Int, _ mean: Double, _ std: Double,
                        _ generator: Philox, _ stream: UInt32) {
    let z = UnsafeMutablePointer<Double>.allocate(capacity: max(n, 1))
    defer { z.deallocate() }
    generator.fillNormal(z, count: n, stream: stream)
    for i in 0..<n { p[i] = Float(mean + std * z[i]) }
}

/// Rejection sampling: element i draws two normals per attempt from counter
/// (i, stream, attempt) until one lies within ±2 (95% of draws do), so every element is
/// independent of the others and of the tensor size.
private func fillTruncatedNormal(_ p: UnsafeMutablePointer<Float>, _ n: Int, _ mean: Double, _ std: Double,
                                 _ generator: Philox, _ stream: UInt32) {
    for i in 0..<n {
        var attempt: UInt32 = 0
        var z = 0.0
        while true {
            let r = generator.block(UInt32(truncatingIfNeeded: i), stream, attempt, UInt32(truncatingIfNeeded: i >> 32))
            let (z0, z1) = Philox.boxMuller(r.0, r.1)
            if abs(z0) <= 2 { z = z0; break }
            if abs(z1) <= 2 { z = z1; break }
            attempt += 1
        }
        p[i] = Float(mean + std * z)
    }
}

/// PyTorch's orthogonal_: QR of a Gaussian [rows, cols] matrix (its transpose when rows <
/// cols, so that the factored matrix is tall), Q's columns multiplied by the signs of R's
/// diagonal, transposed back.
private func fillOrthogonal(_ p: UnsafeMutablePointer<Float>, _ spec: ParameterSpec, _ gain: Double,
                            _ generator: Philox, _ stream: UInt32) throws {
    guard spec.shape.count >= 2 else {
        throw InitializerError("orthogonal needs a parameter of 2 or more dimensions; '\(spec.name)' is \(spec.shape)")
    }
    let rows = spec.shape[0], cols = spec.count / max(rows, 1)
    guard rows > 0, cols > 0 else { return }
    let transposed = rows < cols
    let m = max(rows, cols), n = min(rows, cols)
    var gaussian = [Double](repeating: 0, count: rows * cols)
    gaussian.withUnsafeMutableBufferPointer { generator.fillNormal($0.baseAddress!, count: rows * cols, stream: stream) }
    var a = gaussian
    if transposed {
        for i in 0..<rows { for j in 0..<cols { a[j * rows + i] = gaussian[i * cols + j] } }
    }
    let q = orthonormalFactor(&a, rows: m, cols: n)
    for i in 0..<rows {
        for j in 0..<cols {
            p[i * cols + j] = Float(gain * (transposed ? q[j * n + i] : q[i * n + j]))
        }
    }
}

/// Q of the reduced QR factorization A = QR of a tall row-major m×n matrix (m >= n), by
/// Householder reflections in Float64, with Q's columns multiplied by sign(diag(R)). The
/// sign correction makes R's diagonal positive, which makes the factorization unique
/// (independent of the reflector sign convention), as PyTorch does. Overwrites `a` with R.
private func orthonormalFactor(_ a: inout [Double], rows m: Int, cols n: Int) -> [Double] {
    var reflectors: [[Double]] = []
    var signs = [Double](repeating: 1, count: n)
    var dots = [Double](repeating: 0, count: n)

    // Applies H = I - 2 v vᵀ (|v| = 1, v living on rows k..<m) to columns k..<n of x.
    func reflect(_ x: inout [Double], _ v: [Double], _ k: Int) {
        for j in k..<n { dots[j] = 0 }
        for i in 0..<v.count {
            let row = (k + i) * n
            for j in k..<n { dots[j] += v[i] * x[row + j] }
        }
        for i in 0..<v.count {
            let row = (k + i) * n, twoV = 2 * v[i]
            for j in k..<n { x[row + j] -= twoV * dots[j] }
        }
    }

    for k in 0..<n {
        var v = (k..<m).map { a[$0 * n + k] }
        let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        // R[k, k] takes the sign opposite to the pivot, so v[0] suffers no cancellation.
        let alpha = v[0] >= 0 ? -norm : norm
        v[0] -= alpha
        let length = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        if length > 0 {
            for i in 0..<v.count { v[i] /= length }
            reflect(&a, v, k)
        } else {
            v = [Double](repeating: 0, count: v.count)
        }
        signs[k] = alpha < 0 ? -1 : 1
        reflectors.append(v)
    }

    // Q = H_0 ⋯ H_{n-1} applied to the first n columns of the identity. Columns j < k are
    // still e_j when H_k is applied (it only mixes rows >= k), so it only touches k..<n.
    var q = [Double](repeating: 0, count: m * n)
    for j in 0..<n { q[j * n + j] = 1 }
    for k in stride(from: n - 1, through: 0, by: -1) { reflect(&q, reflectors[k], k) }
    for i in 0..<m { for j in 0..<n { q[i * n + j] *= signs[j] } }
    return q
}

/// eye_ for matrices, dirac_ for convolution weights [out, in, k...]: 1 at the kernel
/// centre of channel pair (d, d) for d < min(out, in).
private func fillIdentity(_ p: UnsafeMutablePointer<Float>, _ spec: ParameterSpec) throws {
    let shape = spec.shape
    guard (2...5).contains(shape.count) else {
        throw InitializerError("identity needs a matrix or a convolution weight; '\(spec.name)' is \(shape)")
    }
    p.update(repeating: 0, count: spec.count)
    let kernel = shape.dropFirst(2).reduce(1, *)
    var centre = 0
    for size in shape.dropFirst(2) { centre = centre * size + size / 2 }
    for d in 0..<min(shape[0], shape[1]) { p[(d * shape[1] + d) * kernel + centre] = 1 }
}
