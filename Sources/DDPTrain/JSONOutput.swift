import Foundation

public extension JSONEncoder {
    /// How ddptrain writes JSON (summaries, metrics.jsonl, config.json, bench and eval
    /// output): keys in snake_case, every file alike (`parameterHashes` is written
    /// `parameter_hashes`; keys spelled out in CodingKeys are already snake_case); keys
    /// sorted, so that files diff well; paths as typed ("runs/x", not "runs\/x");
    /// non-finite numbers as the strings "nan", "inf" and "-inf" rather than an encoding
    /// error (a diverged loss is data).
    static func ddptrain() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return encoder
    }
}

public extension JSONDecoder {
    /// Reads what `JSONEncoder.ddptrain()` writes, and the camelCase keys of earlier
    /// versions' files (a compare's summary.json): converting from snake_case leaves a key
    /// without underscores as it is.
    static func ddptrain() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return decoder
    }
}

/// "1 step", "2 steps": counts in messages.
public func plural(_ count: Int, _ noun: String) -> String {
    "\(count) \(noun)\(count == 1 ? "" : "s")"
}
