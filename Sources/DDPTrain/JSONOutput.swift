import Foundation

public extension JSONEncoder {
    /// How ddptrain writes JSON (summaries, metrics.jsonl, config.json, bench and eval
    /// output): keys sorted, so that files diff well; non-finite numbers as the strings
    /// "nan", "inf" and "-inf" rather than an encoding error (a diverged loss is data).
    static func ddptrain() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return encoder
    }
}
