import DDPKernels
import DDPNet
import XCTest

final class InitializerTests: XCTestCase {
    let generator = Philox(seed: 2024, purpose: .initialization)
    /// A Linear weight [512, 1024]: fan_in 1024, fan_out 512.
    let linear = ParameterSpec(name: "weight", shape: [512, 1024], role: .weight, fanIn: 1024, fanOut: 512)
    /// A convolution weight [256, 128, 3, 3]: the fans include the kernel area.
    let conv = ParameterSpec(name: "weight", shape: [256, 128, 3, 3], role: .weight, fanIn: 128 * 9, fanOut: 256 * 9)

    func sample(_ initializer: Initializer, _ spec: ParameterSpec, stream: UInt32 = 0) throws -> [Float] {
        var values = [Float](repeating: .nan, count: spec.count)
        try values.withUnsafeMutableBufferPointer {
            try initializer.fill($0.baseAddress!, spec: spec, generator: generator, stream: stream)
        }
        return values
    }

    /// Tolerances from the sample size n: the sample mean has standard error σ/sqrt(n), so
    /// we allow |mean - μ| <= 6σ/sqrt(n). The sample variance has relative standard error
    /// sqrt((κ - 1)/n) for kurtosis κ; κ <= 3 for the normal, uniform (1.8) and truncated
    /// normal alike, so we allow a relative error of 6·sqrt(2/n).
    func assertMoments(_ values: [Float], mean mu: Double, variance: Double, file: StaticString = #filePath, line: UInt = #line) {
        let n = Double(values.count)
        let mean = values.reduce(0.0) { $0 + Double($1) } / n
        let sampleVariance = values.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / n
        XCTAssertEqual(mean, mu, accuracy: 6 * variance.squareRoot() / n.squareRoot(), "mean", file: file, line: line)
        XCTAssertEqual(sampleVariance / variance, 1, accuracy: 6 * (2 / n).squareRoot(), "variance", file: file, line: line)
    }

    func assertBounded(_ values: [Float], _ bound: Double, file: StaticString = #filePath, line: UInt = #line) {
        let largest = Double(values.map(abs).max()!)
        XCTAssertLessThanOrEqual(largest, bound * (1 + 1e-6), file: file, line: line)
        // With 10^5 or more draws the extremes come within 0.1% of the bound.
        XCTAssertGreaterThan(largest, bound * 0.999, file: file, line: line)
    }

    func testUniformSchemesMatchTheirBounds() throws {
        let cases: [(Initializer, ParameterSpec, Double)] = [
            (.default, linear, 1 / 1024.0.squareRoot()),
            (.default, conv, 1 / 1152.0.squareRoot()),
            (.xavierUniform(gain: 1), linear, (6 / 1536.0).squareRoot()),
            (.xavierUniform(gain: 2), conv, 2 * (6 / (1152.0 + 2304)).squareRoot()),
            (.kaimingUniform(mode: .fanIn), linear, (6 / 1024.0).squareRoot()),
            (.kaimingUniform(mode: .fanOut), linear, (6 / 512.0).squareRoot()),
            (.kaimingUniform(mode: .fanIn), conv, (6 / 1152.0).squareRoot()),
            (.lecunUniform, linear, (3 / 1024.0).squareRoot()),
        ]
        for (initializer, spec, bound) in cases {
            let values = try sample(initializer, spec)
            assertBounded(values, bound)
            assertMoments(values, mean: 0, variance: bound * bound / 3)
        }
        let shifted = try sample(.uniform(-0.1, 0.3), linear)
        XCTAssertTrue(shifted.allSatisfy { $0 >= -0.1 && $0 <= 0.3 })
        assertMoments(shifted, mean: 0.1, variance: 0.4 * 0.4 / 12)
    }

    func testNormalSchemesMatchTheirStd() throws {
        let cases: [(Initializer, ParameterSpec, Double, Double)] = [
            (.normal(mean: 0.5, std: 0.02), linear, 0.5, 0.02),
            (.xavierNormal(gain: 1), linear, 0, (2 / 1536.0).squareRoot()),
            (.xavierNormal(gain: 3), conv, 0, 3 * (2 / 3456.0).squareRoot()),
            (.kaimingNormal(mode: .fanIn), conv, 0, (2 / 1152.0).squareRoot()),
            (.kaimingNormal(mode: .fanOut), conv, 0, (2 / 2304.0).squareRoot()),
            (.lecunNormal, linear, 0, (1 / 1024.0).squareRoot()),
        ]
        for (initializer, spec, mean, std) in cases {
            assertMoments(try sample(initializer, spec), mean: mean, variance: std * std)
        }
    }

    func testTruncatedNormalStaysWithinTwoStd() throws {
        let mean = 0.1, std = 0.02
        let values = try sample(.truncatedNormal(mean: Float(mean), std: Float(std)), linear)
        XCTAssertTrue(values.allSatisfy { abs(Double($0) - mean) <= 2 * std * (1 + 1e-5) })
        // Variance of N(0, 1) cut at ±2: 1 - 2·2φ(2) / (2Φ(2) - 1) ≈ 0.7737.
        let phi2 = exp(-2.0) / (2 * Double.pi).squareRoot()
        let mass = erf(2 / 2.0.squareRoot())
        assertMoments(values, mean: mean, variance: std * std * (1 - 4 * phi2 / mass))
    }

    func testConstantSchemesAreExact() throws {
        XCTAssertTrue(try sample(.zeros, conv).allSatisfy { $0 == 0 })
        XCTAssertTrue(try sample(.ones, conv).allSatisfy { $0 == 1 })
        XCTAssertTrue(try sample(.constant(0.25), linear).allSatisfy { $0 == 0.25 })
    }

    func testRolesDecideBiasAndBatchNorm() throws {
        let bias = ParameterSpec(name: "bias", shape: [65536], role: .bias, fanIn: 100, fanOut: 65536)
        let defaultBias = try sample(.default, bias)
        assertBounded(defaultBias, 0.1)
        XCTAssertTrue(try sample(.xavierUniform(gain: 1), bias).allSatisfy { $0 == 0 })
        XCTAssertTrue(try sample(.ones, bias).allSatisfy { $0 == 0 })
        let gamma = ParameterSpec(name: "weight", shape: [64], role: .normWeight, fanIn: 64, fanOut: 64)
        let beta = ParameterSpec(name: "bias", shape: [64], role: .normBias, fanIn: 64, fanOut: 64)
        for scheme in [Initializer.default, .zeros, .orthogonal(gain: 1), .normal(mean: 3, std: 1)] {
            XCTAssertTrue(try sample(scheme, gamma).allSatisfy { $0 == 1 })
            XCTAssertTrue(try sample(scheme, beta).allSatisfy { $0 == 0 })
        }
    }

    /// max |W·Wᵀ - gain²·I| (or WᵀW when W is tall), in Float64.
    func orthogonalityError(_ w: [Float], rows: Int, cols: Int, gain: Double) -> Double {
        let wide = rows <= cols
        let size = wide ? rows : cols, inner = wide ? cols : rows
        var worst = 0.0
        for a in 0..<size {
            for b in 0..<size {
                var dot = 0.0
                for k in 0..<inner {
                    dot += wide ? Double(w[a * cols + k]) * Double(w[b * cols + k]) : Double(w[k * cols + a]) * Double(w[k * cols + b])
                }
                worst = max(worst, abs(dot - (a == b ? gain * gain : 0)))
            }
        }
        return worst
    }

    func testOrthogonalGivesOrthonormalRowsOrColumns() throws {
        let wide = ParameterSpec(name: "weight", shape: [96, 256], role: .weight, fanIn: 256, fanOut: 96)
        XCTAssertLessThan(orthogonalityError(try sample(.orthogonal(gain: 1), wide), rows: 96, cols: 256, gain: 1), 1e-4)
        let tall = ParameterSpec(name: "weight", shape: [256, 96], role: .weight, fanIn: 96, fanOut: 256)
        XCTAssertLessThan(orthogonalityError(try sample(.orthogonal(gain: 1), tall), rows: 256, cols: 96, gain: 1), 1e-4)
        let square = ParameterSpec(name: "weight", shape: [128, 128], role: .weight, fanIn: 128, fanOut: 128)
        XCTAssertLessThan(orthogonalityError(try sample(.orthogonal(gain: 2), square), rows: 128, cols: 128, gain: 2), 4e-4)
        let convWeight = ParameterSpec(name: "weight", shape: [32, 16, 3, 3], role: .weight, fanIn: 144, fanOut: 288)
        XCTAssertLessThan(orthogonalityError(try sample(.orthogonal(gain: 1), convWeight), rows: 32, cols: 144, gain: 1), 1e-4)
        let vector = ParameterSpec(name: "weight", shape: [8], role: .weight, fanIn: 1, fanOut: 8)
        XCTAssertThrowsError(try sample(.orthogonal(gain: 1), vector))
    }

    func testIdentityAndDiracAreExact() throws {
        let square = ParameterSpec(name: "weight", shape: [5, 5], role: .weight, fanIn: 5, fanOut: 5)
        let eye = try sample(.identity, square)
        for i in 0..<5 { for j in 0..<5 { XCTAssertEqual(eye[i * 5 + j], i == j ? 1 : 0) } }

        let convWeight = ParameterSpec(name: "weight", shape: [4, 3, 3, 3], role: .weight, fanIn: 27, fanOut: 36)
        let dirac = try sample(.identity, convWeight)
        for o in 0..<4 {
            for i in 0..<3 {
                for y in 0..<3 {
                    for x in 0..<3 {
                        let expected: Float = (o == i && y == 1 && x == 1) ? 1 : 0
                        XCTAssertEqual(dirac[((o * 3 + i) * 3 + y) * 3 + x], expected)
                    }
                }
            }
        }
        let vector = ParameterSpec(name: "weight", shape: [8], role: .weight, fanIn: 1, fanOut: 8)
        XCTAssertThrowsError(try sample(.identity, vector)) { error in
            XCTAssertTrue("\(error)".contains("identity"), "\(error)")
        }
    }

    func mlp() throws -> Model {
        try Model(layers: [Linear(20, 16), ReLU(), Linear(16, 16), ReLU(), Linear(16, 3)], inputShape: Shape(n: 1, features: 20), maxBatch: 4)
    }

    func testConstantHiddenLayersWarnAboutSymmetry() throws {
        let model = try mlp()
        let warnings = try model.initialize(.zeros, seed: 1)
        XCTAssertEqual(warnings.count, 2)
        XCTAssertTrue(warnings[0].contains("0.weight") && warnings[0].contains("symmetric"), warnings[0])
        XCTAssertTrue(warnings[1].contains("2.weight"), warnings[1])

        // The output layer may start at zero; overrides are checked layer by layer.
        XCTAssertEqual(try model.initialize(.kaimingUniform(mode: .fanIn), perLayer: [4: .zeros], seed: 1), [])
        let overridden = try model.initialize(.xavierUniform(gain: 1), perLayer: [2: .constant(0.1)], seed: 1)
        XCTAssertEqual(overridden.count, 1)
        XCTAssertTrue(overridden[0].contains("2.weight"), overridden[0])
        let weight = model.parameter(named: "2.weight")!
        XCTAssertTrue((0..<weight.count).allSatisfy { model.parameters.pointer[weight.offset + $0] == 0.1 })

        XCTAssertThrowsError(try model.initialize(.default, perLayer: [1: .zeros], seed: 1))
        XCTAssertThrowsError(try model.initialize(.default, perLayer: [9: .zeros], seed: 1))
    }

    func testBiasesFollowTheScheme() throws {
        let model = try mlp()
        let bias = model.parameter(named: "0.bias")!
        let values = { (0..<bias.count).map { model.parameters.pointer[bias.offset + $0] } }
        _ = try model.initialize(.default, seed: 3)
        let bound = Float(1 / 20.0.squareRoot())
        XCTAssertTrue(values().allSatisfy { abs($0) <= bound })
        XCTAssertTrue(values().contains { $0 != 0 })
        _ = try model.initialize(.kaimingNormal(mode: .fanIn), seed: 3)
        XCTAssertTrue(values().allSatisfy { $0 == 0 })
    }

    func testSameSeedSameBitsOtherSeedOtherBits() throws {
        func bits(_ seed: UInt64, _ scheme: Initializer) throws -> [UInt32] {
            let model = try mlp()
            _ = try model.initialize(scheme, seed: seed)
            return withExtendedLifetime(model) { model.parameterBuffer.map(\.bitPattern) }
        }
        for scheme in [Initializer.default, .truncatedNormal(mean: 0, std: 0.02), .orthogonal(gain: 1)] {
            XCTAssertEqual(try bits(7, scheme), try bits(7, scheme))
            XCTAssertNotEqual(try bits(7, scheme), try bits(8, scheme))
        }
        // Distinct parameters draw from distinct streams.
        let model = try mlp()
        _ = try model.initialize(.normal(mean: 0, std: 1), seed: 7)
        let a = model.parameter(named: "2.weight")!, b = model.parameter(named: "4.weight")!
        withExtendedLifetime(model) { XCTAssertNotEqual(model.parameters.pointer[a.offset], model.parameters.pointer[b.offset]) }
    }

    func testParsingRoundTripsAndAcceptsAliases() throws {
        let all: [Initializer] = [
            .default, .zeros, .ones, .constant(0.1), .uniform(-0.1, 0.1), .normal(mean: 0, std: 0.02),
            .truncatedNormal(mean: 0, std: 0.02), .xavierUniform(gain: 1), .xavierUniform(gain: 1.414),
            .xavierNormal(gain: 1), .xavierNormal(gain: 0.5), .kaimingUniform(mode: .fanIn), .kaimingUniform(mode: .fanOut),
            .kaimingNormal(mode: .fanIn), .kaimingNormal(mode: .fanOut), .lecunUniform, .lecunNormal,
            .orthogonal(gain: 1), .orthogonal(gain: 2), .identity,
        ]
        for initializer in all {
            XCTAssertEqual(try Initializer(parsing: initializer.description), initializer, initializer.description)
        }
        XCTAssertEqual(Initializer.normal(mean: 0, std: 0.02).description, "normal:0.0,0.02")
        XCTAssertEqual(Initializer.kaimingNormal(mode: .fanOut).description, "kaiming-normal:fan_out")
        let aliases: [(String, Initializer)] = [
            ("glorot-uniform", .xavierUniform(gain: 1)), ("glorot-normal:2", .xavierNormal(gain: 2)),
            ("he-uniform", .kaimingUniform(mode: .fanIn)), ("he-normal:fan_out", .kaimingNormal(mode: .fanOut)),
            ("kaiming-uniform:fan_in", .kaimingUniform(mode: .fanIn)), ("normal:0,0.02", .normal(mean: 0, std: 0.02)),
            ("truncated-normal:0,0.02", .truncatedNormal(mean: 0, std: 0.02)), ("constant:0.1", .constant(0.1)),
            ("uniform:-0.1,0.1", .uniform(-0.1, 0.1)), ("Xavier-Uniform", .xavierUniform(gain: 1)),
        ]
        for (text, expected) in aliases { XCTAssertEqual(try Initializer(parsing: text), expected, text) }
    }

    func testParsingRejectsJunkNamingIt() {
        let junk: [(String, String)] = [
            ("gaussian", "gaussian"), ("constant:abc", "abc"), ("uniform:0.1", "uniform"), ("uniform:1,0", "above"),
            ("normal:0,-1", "negative"), ("kaiming-normal:fan_sideways", "fan_sideways"), ("zeros:3", "3"),
            ("xavier-uniform:nan", "nan"), ("", "valid"),
        ]
        for (text, needle) in junk {
            XCTAssertThrowsError(try Initializer(parsing: text), text) { error in
                XCTAssertTrue("\(error)".contains(needle), "\(error)")
            }
        }
        XCTAssertThrowsError(try Initializer(parsing: "gaussian")) { error in
            XCTAssertTrue("\(error)".contains("xavier-uniform") && "\(error)".contains("orthogonal"), "\(error)")
        }
    }
}
