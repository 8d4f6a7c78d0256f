/// How `ddptrain` ends, so that a launcher (launch/train, a Slurm script) can tell a
/// failure that a restart with `--resume auto` may cure from one that would only repeat.
/// docs/FAILURES.md lists what the user sees for each.
public enum ExitStatus {
    /// A rank failed or was lost while training (an MPI error, a crash, an injected fault):
    /// resuming from the newest checkpoint may well succeed. Restartable.
    public static let runtimeFailure: Int32 = 1
    /// MPI could not start on this rank. Restartable.
    public static let mpiStartFailure: Int32 = 3
    /// Bad command-line arguments (ArgumentParser's EX_USAGE). Would repeat.
    public static let usage: Int32 = 64
    /// Bad input or configuration found before training: data files, config or model file,
    /// a checkpoint of another run, a run dir that cannot be written. Would repeat.
    public static let inputError: Int32 = 65
    /// Training stopped after --max-skipped-steps consecutive non-finite steps: resuming
    /// from the last checkpoint would diverge the same way (the run is deterministic).
    public static let diverged: Int32 = 70
    /// A checkpoint or a line of metrics.jsonl could not be written (disk full, permissions):
    /// would repeat until the disk is fixed.
    public static let checkpointWriteFailed: Int32 = 74
    /// A training step took longer than --collective-timeout: a rank or a host is probably
    /// lost. Restartable.
    public static let collectiveTimeout: Int32 = 75
    /// Stopped on request (SIGTERM, SIGINT or SIGUSR1 to any rank): every rank agreed at a
    /// step boundary and rank 0 wrote a checkpoint of that step. Resumable with `--resume
    /// auto`, but not a failure: a launcher does not restart on its own (StopRequest).
    public static let stoppedOnRequest: Int32 = 79

    /// Exit statuses after which running the same command again would fail the same way.
    public static let permanent: Set<Int32> = [usage, inputError, diverged, checkpointWriteFailed]
}
