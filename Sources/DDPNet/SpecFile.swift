import CYaml
import DDPSystem
import Foundation
import Yams

/// Config and model files: small YAML or JSON texts from users and shared storage
/// (DESIGN: untrusted input). They are read only when they are regular files of at most
/// `maxBytes`, and parsed only after a pass over libyaml's events has bounded their
/// nesting and refused anchors and aliases: Yams builds nodes recursively (deep nesting
/// overflows the stack) and expands aliases when it builds values (a "billion laughs"
/// exhausts memory), and neither kind of file has any use for them. The events come from
/// CYaml, Yams' own copy of libyaml (imported through Yams' dependency), so the check reads
/// the text exactly as Yams then parses it.
public enum SpecFile {
    /// The largest config or model file read: the presets are a few hundred bytes.
    public static let maxBytes = 1 << 20
    /// The deepest nesting of lists and maps: a model file needs 4 levels.
    public static let maxDepth = 64

    /// The text of the file at `path`; `what` (e.g. "config file") names it in errors.
    public static func contents(of path: String, what: String) throws -> String {
        let bytes: [UInt8]
        switch RegularFile.read(path, limit: maxBytes) {
        case .success(let read): bytes = read
        case .failure(.failed(let failure)):
            throw SpecFileError(path, "cannot read the \(what): \(failure.call): \(String(cString: strerror(failure.code)))")
        case .failure(.notRegular): throw SpecFileError(path, "the \(what) is not a regular file")
        case .failure(.tooLarge(let size)): throw tooLarge(path, what: what, size: size.map { "\($0) bytes" } ?? "more than \(maxBytes) bytes")
        }
        guard let text = String(bytes: bytes, encoding: .utf8) else { throw SpecFileError(path, "the \(what) is not UTF-8 text") }
        return text
    }

    private static func tooLarge(_ path: String, what: String, size: String) -> SpecFileError {
        SpecFileError(path, "the \(what) is \(size); the limit is \(maxBytes) bytes (1 MiB)")
    }

    /// `text` parsed as YAML (JSON is YAML) into Yams' values, once `checkStructure` passed.
    public static func load(_ text: String, source: String) throws -> Any? {
        try checkStructure(text, source: source)
        do { return try Yams.load(yaml: text) } catch {
            throw SpecFileError(source, "not valid YAML or JSON: \(error)")
        }
    }

    /// Walks libyaml's event stream (no nodes are built, so nothing recurses) and refuses
    /// nesting deeper than `maxDepth` and any anchor or alias, naming the line.
    public static func checkStructure(_ text: String, source: String) throws {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { throw SpecFileError(source, "yaml_parser_initialize failed (out of memory)") }
        defer { yaml_parser_delete(&parser) }
        var utf8 = Array(text.utf8)
        try utf8.withUnsafeMutableBufferPointer { input in
            yaml_parser_set_input_string(&parser, input.baseAddress, input.count)
            var depth = 0
            // Per open collection: for a map, whether its next node is a key (nil for a list).
            // Yams force-unwraps a key as a string, so a list or map used as a key would crash
            // it (found by fuzzing).
            var nextIsKey: [Bool?] = []
            // Per open collection: a map's keys so far, with their lines. Yams keeps the last
            // of two equal keys without a word, so a repeated key (`lr: 0.1` ... `lr: 0.5`)
            // would silently override the first.
            var keyLines: [[String: Int]] = []
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else {
                    let problem = parser.problem.map { String(cString: $0) } ?? "syntax error"
                    throw SpecFileError(source, "not valid YAML or JSON: \(problem) at line \(parser.problem_mark.line + 1)")
                }
                defer { yaml_event_delete(&event) }
                let line = event.start_mark.line + 1
                let anchor: UnsafeMutablePointer<yaml_char_t>?
                let tag: UnsafeMutablePointer<yaml_char_t>?
                switch event.type {
                case YAML_STREAM_END_EVENT:
                    return
                case YAML_ALIAS_EVENT:
                    throw SpecFileError(source, "line \(line): aliases (*name) and anchors (&name) are not supported")
                case YAML_SCALAR_EVENT:
                    (anchor, tag) = (event.data.scalar.anchor, event.data.scalar.tag)
                case YAML_SEQUENCE_START_EVENT:
                    (anchor, tag) = (event.data.sequence_start.anchor, event.data.sequence_start.tag)
                    depth += 1
                case YAML_MAPPING_START_EVENT:
                    (anchor, tag) = (event.data.mapping_start.anchor, event.data.mapping_start.tag)
                    depth += 1
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    (anchor, tag) = (nil, nil)
                    depth -= 1
                default:
                    (anchor, tag) = (nil, nil)
                }
                if anchor != nil {
                    throw SpecFileError(source, "line \(line): aliases (*name) and anchors (&name) are not supported")
                }
                // A tag makes Yams construct the node as that type whatever it looks like
                // (`!!int` on any text reaches the base-60 reader below); none is needed here.
                if let tag {
                    throw SpecFileError(source, "line \(line): tags (\(shortTag(String(cString: tag)))) are not supported")
                }
                if event.type == YAML_SCALAR_EVENT, event.data.scalar.style == YAML_PLAIN_SCALAR_STYLE, let value = event.data.scalar.value {
                    let text = String(decoding: UnsafeBufferPointer(start: value, count: event.data.scalar.length), as: UTF8.self)
                    if isBaseSixtyNumber(text) {
                        throw SpecFileError(source, "line \(line): base-60 numbers (\(text)) are not supported; "
                                            + "write the number in decimal, or quote it if it is text")
                    }
                    if isNonDecimalNumber(text) {
                        throw SpecFileError(source, "line \(line): \(text) is not a plain decimal number: YAML 1.1 reads a leading 0 as octal "
                                            + "(010 is 8) and 0x, 0o, 0b and '_' in its own ways; write the number in decimal, or quote it if it is text")
                    }
                }
                let startsNode = [YAML_SCALAR_EVENT, YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT].contains(event.type)
                if startsNode, let inMap = nextIsKey.last, let isKey = inMap {
                    if isKey && event.type != YAML_SCALAR_EVENT {
                        throw SpecFileError(source, "line \(line): a key must be a plain name, not a list or a map")
                    }
                    if isKey, let value = event.data.scalar.value {
                        let key = String(decoding: UnsafeBufferPointer(start: value, count: event.data.scalar.length), as: UTF8.self)
                        if let first = keyLines[keyLines.count - 1][key] {
                            throw SpecFileError(source, "line \(line): key '\(key)' is given twice in one map (first at line \(first))")
                        }
                        keyLines[keyLines.count - 1][key] = line
                    }
                    nextIsKey[nextIsKey.count - 1] = !isKey
                }
                switch event.type {
                case YAML_MAPPING_START_EVENT: nextIsKey.append(true); keyLines.append([:])
                case YAML_SEQUENCE_START_EVENT: nextIsKey.append(nil); keyLines.append([:])
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT: _ = nextIsKey.popLast(); _ = keyLines.popLast()
                default: break
                }
                if depth > maxDepth {
                    throw SpecFileError(source, "line \(line): lists and maps are nested more than \(maxDepth) levels deep")
                }
            }
        }
    }
}

/// YAML 1.1's base-60 numbers ("1:30" is 90), which Yams resolves as integers or floats:
/// its integer reader multiplies by powers of 60 unchecked, so twelve groups trap on
/// overflow (found by fuzzing). Only digits, "_", ":", ".", a sign; at least one colon.
private func isBaseSixtyNumber(_ text: String) -> Bool {
    let body = text.utf8.first.map { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") } == true ? text.utf8.dropFirst() : text.utf8[...]
    guard let first = body.first, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first), body.contains(UInt8(ascii: ":")) else { return false }
    return body.allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || ":_.".utf8.contains($0) }
}

/// Numbers YAML 1.1 (Yams) reads otherwise than as decimal: octal with a leading zero
/// ("010" is 8), 0x, 0o and 0b prefixes, and "_" between digits ("1_0" is 10). Only the
/// whole patterns of YAML 1.1's integers and floats: text such as "01-baseline" or "0xdata"
/// stays text.
private func isNonDecimalNumber(_ text: String) -> Bool {
    let patterns: [Regex<Substring>] = [/[-+]?0[0-7_]+/, /[-+]?0x[0-9a-fA-F_]+/, /[-+]?0o[0-7_]+/, /[-+]?0b[01_]+/,
                                        /[-+]?[0-9][0-9_]*_[0-9_]*/, /[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?/]
    for (index, pattern) in patterns.enumerated() where text.wholeMatch(of: pattern) != nil {
        // The last pattern is a decimal number: non-decimal only with a "_" in it.
        if index < patterns.count - 1 || text.contains("_") { return true }
    }
    return false
}

/// "!!int" for libyaml's resolved "tag:yaml.org,2002:int"; other tags as written.
private func shortTag(_ tag: String) -> String {
    let prefix = "tag:yaml.org,2002:"
    return tag.hasPrefix(prefix) ? "!!" + tag.dropFirst(prefix.count) : tag
}

/// A config or model file that cannot be read or parsed; the message starts with its path.
public struct SpecFileError: Error, CustomStringConvertible {
    public var message: String
    public init(_ path: String, _ problem: String) { message = "\(path): \(problem)" }
    public var description: String { message }
}
