import Foundation

/// The training flags of a command line (`--lr 0.05`, `--lr=0.05`, `--nesterov`), read by the
/// table of options (`TrainConfig.options`). A value may start with "-" (`--lr -1` reaches
/// the check, which says what is wrong with -1); a repeated flag's last value wins.
public struct TrainFlags: Sendable {
    public struct Given: Sendable {
        public let option: TrainOption
        /// nil for a switch.
        public let text: String?
    }

    public private(set) var given: [Given] = []

    public init(parsing arguments: [String]) throws {
        var rest = arguments[...]
        while let argument = rest.popFirst() {
            guard argument.hasPrefix("--"), argument.count > 2 else { throw ConfigError("unexpected argument '\(argument)'") }
            var name = String(argument.dropFirst(2)), text: String?
            if let equals = name.firstIndex(of: "=") {
                text = String(name[name.index(after: equals)...])
                name = String(name[..<equals])
            }
            guard let option = TrainConfig.options.first(where: { $0.name == name }) else {
                throw ConfigError("unknown option '--\(name)'" + (TrainFlags.nearest(to: name).map { "; did you mean '--\($0)'?" } ?? ""))
            }
            if let valueName = option.valueName {
                if text == nil {
                    guard let next = rest.first, !next.hasPrefix("--") else { throw ConfigError("--\(name) needs a value (\(valueName))") }
                    text = next
                    rest.removeFirst()
                }
            } else if text != nil {
                throw ConfigError("--\(name) takes no value")
            }
            given.append(Given(option: option, text: text))
        }
        let names = Set(given.map(\.option.name))
        if let both = given.first(where: { $0.option.conflicts.map(names.contains) ?? false }), let other = both.option.conflicts {
            throw ConfigError("give --\(other) or --\(both.option.name), not both")
        }
    }

    /// The text of the last `--name` given.
    public func text(of name: String) -> String? { given.last { $0.option.name == name }?.text }

    /// `base` (the defaults or a config file) with these flags on top. A flag that overrides
    /// another option resets that one unless it is given too (then validate() says not both).
    public func apply(to base: TrainConfig) throws -> TrainConfig {
        var config = base
        let names = Set(given.map(\.option.name))
        for flag in given {
            if let other = flag.option.overrides, !names.contains(other), let overridden = TrainConfig.option(named: other) {
                overridden.reset(&config)
            }
            try flag.option.parse(&config, flag.text ?? "")
        }
        return config
    }

    /// The option whose name is closest to a mistyped one, for the error: at most 1 edit
    /// away for names of up to 4 letters, 2 for longer ones.
    static func nearest(to name: String) -> String? {
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            var row = Array(0...b.count)
            for (i, x) in a.enumerated() {
                var next = [i + 1]
                for (j, y) in b.enumerated() { next.append(min(row[j] + (x == y ? 0 : 1), row[j + 1] + 1, next[j] + 1)) }
                row = next
            }
            return row[b.count]
        }
        let typed = Array(name)
        let most = typed.count <= 4 ? 1 : 2
        return TrainConfig.options.map { ($0.name, distance(typed, Array($0.name))) }.filter { $0.1 <= most }.min { $0.1 < $1.1 }?.0
    }

    /// The options' help, for the commands' `--help`: each flag, then its help and default
    /// indented below it, in lines short enough that the argument parser keeps them.
    public static func help(width: Int = 78) -> String {
        TrainConfig.options.map { option in
            let flag = "  --\(option.name)" + (option.valueName.map { " <\($0)>" } ?? "")
            var text = option.help
            if let value = option.defaultText, !text.contains("(default") {
                text = (text.hasSuffix(".") ? String(text.dropLast()) : text) + " (default \(value))."
            }
            return flag + "\n" + wrap(text, indent: 6, width: width)
        }.joined(separator: "\n")
    }

    static func wrap(_ text: String, indent: Int, width: Int) -> String {
        var lines: [String] = [], line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty && indent + line.count + 1 + word.count > width { lines.append(line); line = "" }
            line += (line.isEmpty ? "" : " ") + word
        }
        if !line.isEmpty { lines.append(line) }
        return lines.map { String(repeating: " ", count: indent) + $0 }.joined(separator: "\n")
    }
}
