import DDPSystem

/// Replaces a file atomically (DDPSystem's AtomicFile: a new hidden temporary file
/// `.<name>.tmp.<16 random hex digits>`, created exclusively and never through a link,
/// flushed and renamed over the final name, then the directory flushed), with its failures
/// worded as `SafeTensorsError`s naming the call and the file it acted on.
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
    public static func randomSuffix() -> String { TemporaryFile.randomSuffix() }

    /// Lets `body` write the temporary file, then publishes it under `path`.
    static func replace(_ path: String, temporarySuffix: () -> String = randomSuffix,
                        writing body: (OpenFile) throws(SafeTensorsError) -> Void) throws(SafeTensorsError) {
        try DDPSystem.AtomicFile.replace(path, temporarySuffix: temporarySuffix,
                                         failure: { failure in .systemCall(failure, path: path, operand: failure.path ?? path) }) {
            descriptor, temporary throws(SafeTensorsError) in
            try body(OpenFile(descriptor: descriptor, path: temporary, reportedPath: path, owning: false))
        }
    }
}
