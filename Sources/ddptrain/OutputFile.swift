import ArgumentParser
import DDPSystem
import Foundation
import SafeTensors

/// A file a command writes where the user says (`plot --out`, `init --out`, `bench
/// --step-log`). It is written atomically, a temporary file renamed over the path, which
/// replaces whatever is there: so a device, a FIFO, a directory or a link at the path is
/// refused, and an existing regular file is replaced only when the command itself wrote it
/// (it can write it again) or with --force. A mistyped path never costs a checkpoint, a
/// run's metrics or /dev/null.
struct OutputFile {
    let path: String
    /// The option that named it, for errors ("--out").
    let option: String
    /// What the command writes, for errors ("a plot page ddptrain wrote").
    let kind: String
    /// Whether the regular file at `path` is one the command wrote.
    let isOwnKind: (String) -> Bool

    func check(force: Bool) throws {
        switch OutputTarget.at(path) {
        case .absent, .unreadable:
            // Nothing there, or nothing to tell (a folder that is not one, no permission):
            // the command's own checks or its write report it, with their status.
            break
        case .other(let what):
            throw ValidationError("\(option) \(path) is \(what); the output may replace only a regular file")
        case .regularFile:
            guard force || isOwnKind(path) else {
                throw ValidationError("\(option) \(path) exists and is not \(kind); give --force to replace it")
            }
        }
    }

    /// Whether the first bytes of the regular file at `path` satisfy `test`.
    static func starts(_ path: String, within count: Int, _ test: ([UInt8]) -> Bool) -> Bool {
        guard case .success(let bytes) = RegularFile.prefix(path, count: count) else { return false }
        return test(bytes)
    }
}
