import CYaml
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
        // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw SpecFileError(path, "cannot read the \(what): open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SpecFileError(path, "cannot read the \(what): fstat: \(String(cString: strerror(errno)))") }
        guard info.st_mode & S_IFMT == S_IFREG else { throw SpecFileError(path, "the \(what) is not a regular file") }
        guard info.st_size <= maxBytes else { throw tooLarge(path, what: what, size: "\(info.st_size) bytes") }
        // Read at most one byte more than allowed: a file that grew since fstat is refused too.
        var bytes = [UInt8](repeating: 0, count: maxBytes + 1)
        var count = 0
        while count < bytes.count {
            let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw SpecFileError(path, "cannot read the \(what): read: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            count += n
        }
        guard count <= maxBytes else { throw tooLarge(path, what: what, size: "more than \(maxBytes) bytes") }
        guard let text = String(bytes: bytes[..<count], encoding: .utf8) else { throw SpecFileError(path, "the \(what) is not UTF-8 text") }
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
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else {
                    let problem = parser.problem.map { String(cString: $0) } ?? "syntax error"
                    throw SpecFileError(source, "not valid YAML or JSON: \(problem) at line \(parser.problem_mark.line + 1)")
                }
                defer { yaml_event_delete(&event) }
                let line = event.start_mark.line + 1
                let anchor: UnsafeMutablePointer<yaml_char_t>?
                switch event.type {
                case YAML_STREAM_END_EVENT:
                    return
                case YAML_ALIAS_EVENT:
                    throw SpecFileError(source, "line \(line): aliases (*name) and anchors (&name) are not supported")
                case YAML_SCALAR_EVENT:
                    anchor = event.data.scalar.anchor
                case YAML_SEQUENCE_START_EVENT:
                    anchor = event.data.sequence_start.anchor
                    depth += 1
                case YAML_MAPPING_START_EVENT:
                    anchor = event.data.mapping_start.anchor
                    depth += 1
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    anchor = nil
                    depth -= 1
                default:
                    anchor = nil
                }
                if anchor != nil {
                    throw SpecFileError(source, "line \(line): aliases (*name) and anchors (&name) are not supported")
                }
                if depth > maxDepth {
                    throw SpecFileError(source, "line \(line): lists and maps are nested more than \(maxDepth) levels deep")
                }
            }
        }
    }
}

/// A config or model file that cannot be read or parsed; the message starts with its path.
public struct SpecFileError: Error, CustomStringConvertible {
    public var message: String
    public init(_ path: String, _ problem: String) { message = "\(path): \(problem)" }
    public var description: String { message }
}
