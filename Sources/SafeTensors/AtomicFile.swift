#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Replaces a file atomically: the bytes go to a new hidden temporary file in the same
/// directory, `.<name>.tmp.<16 random hex digits>`, created exclusively and never through
/// a link (so a link planted there cannot make us write elsewhere), which is flushed and
/// renamed over the final name; then the directory is flushed. A reader sees the old file
/// or the complete new one, never a partial file. On failure the temporary file is removed
/// and an existing file at the final name is untouched, except when only the final fsync
/// of the directory fails: the new file is then in place but may not survive a power
/// loss, and the error says so by naming fsync.
public enum AtomicFile {
    /// Writes `bytes` to `path` atomically. `temporarySuffix` names the temporary file;
    /// only tests pass anything but the random default.
    public static func write(_ bytes: [UInt8], to path: String,
                             temporarySuffix: () -> String = randomSuffix) throws(SafeTensorsError) {
        try replace(path, temporarySuffix: temporarySuffix) { file throws(SafeTensorsError) in
            try bytes.span.withUnsafeBytes { buffer throws(SafeTensorsError) in try file.writeAll(buffer) }
        }
    }

    /// 16 lowercase hex digits from the system's random source.
    public static func randomSuffix() -> String {
        let digits = String(UInt64.random(in: .min ... .max), radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// Creates the temporary file, lets `body` write it, then publishes it under `path`.
    static func replace(_ path: String, temporarySuffix: () -> String = randomSuffix,
                        writing body: (OpenFile) throws(SafeTensorsError) -> Void) throws(SafeTensorsError) {
        let file = try OpenFile.createTemporary(nextTo: path, suffix: temporarySuffix)
        do throws(SafeTensorsError) {
            try body(file)
            try file.sync()
            try file.close()
            guard rename(file.path, path) == 0 else {
                throw .systemCall("rename", path: path, operand: file.path)
            }
        } catch {
            unlink(file.path)
            throw error
        }
        // The rename is durable only once the directory entry is flushed too.
        let directory = try OpenFile.open(splitPath(path).directory, flags: O_RDONLY | O_DIRECTORY, reportedPath: path)
        try directory.sync()
        try directory.close()
    }
}
