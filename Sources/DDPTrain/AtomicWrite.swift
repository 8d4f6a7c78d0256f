import DDPSystem
import SafeTensors

/// Writes a small text file atomically (SafeTensors' `AtomicFile`): a new temporary file
/// created exclusively under a random name, never through a link, flushed and renamed over
/// `path`; so it is never seen half-written and a link planted in the directory is never
/// written through. A failure is a write failure (exit status 74: disk full, permissions).
public func writeAtomically(_ text: String, to path: String) throws {
    do {
        try AtomicFile.write(Array(text.utf8), to: path)
    } catch {
        throw TrainingError("\(error)", exitCode: ExitStatus.checkpointWriteFailed)
    }
}
