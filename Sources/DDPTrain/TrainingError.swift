import DDPSystem

public struct TrainingError: Error, CustomStringConvertible {
    public var message: String
    /// The process's exit status when this ends the run (ExitStatus).
    public var exitCode: Int32
    public init(_ message: String, exitCode: Int32 = ExitStatus.runtimeFailure) {
        self.message = message
        self.exitCode = exitCode
    }
    public var description: String { message }
}
