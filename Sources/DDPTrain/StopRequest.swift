import CStopSignal
import DDPComm
import DDPSystem
import Foundation

/// Stopping on request: SIGTERM, SIGINT or SIGUSR1 (what Slurm, a launcher or Ctrl-C send).
///
/// `train` installs the graceful handler: the first signal only sets an atomic flag (the
/// handler is C, async-signal-safe, SA_RESTART so no call fails with EINTR). In every step
/// every rank contributes its flag to one allreduce of one integer, started just before the
/// gradient allreduce and completed after it (`startVote`, `finishVote`: it rides along, no
/// rank waits for it), so all ranks learn the same answer in the same collective and none
/// is left inside a collective the others never enter; once before the first step and after
/// a step's evaluation or checkpoint they ask again. At the end of the step (its boundary)
/// rank 0 writes the checkpoint of that step through the normal atomic path and every rank
/// exits with ExitStatus.stoppedOnRequest. Stop signals within 2 s of the first (or of the
/// agreement to stop, if that came first) are that same request reaching the rank again:
/// Slurm and systemd signal every process of a job, ranks and launchers alike, and each
/// launcher passes the stop on. A signal after that is a second request and ends the
/// process at once with 128 + the signal's number, after removing the temporary file it was
/// writing (if any): files in place are the previous ones, intact.
///
/// Every other command installs the immediate handler: a signal ends it at once in the same
/// way (128 + signal), leaving no temporary file behind.
public enum StopRequest {
    /// `graceful`: the handler of `train` (see above); else every signal ends at once.
    /// `announce`: the first signal says so on stderr (rank 0 of a launch, so the line is
    /// printed once per job).
    public static func install(graceful: Bool, announce: Bool) {
        if ddp_stop_install(graceful ? 1 : 0, announce ? 1 : 0) != 0 {
            writeToStandardError("ddptrain: warning: cannot install the stop-signal handler: sigaction failed: \(String(cString: strerror(errno)))\n")
        }
    }

    /// A stop request that reached launch/mpirun before mpirun had started this rank (mpirun
    /// passes SIGUSR1 only to the ranks it has) is left as the file DDPTRAIN_STOP_FILE names:
    /// taken as a SIGUSR1 to this process. Asked once the command is known (train: just
    /// before the first step, where the ranks agree on a stop anyway).
    public static func takeLauncherRequest() {
        guard ddp_stop_requested() == 0, let path = ProcessInfo.processInfo.environment["DDPTRAIN_STOP_FILE"], !path.isEmpty,
              access(path, F_OK) == 0 else { return }
        raise(SIGUSR1)
    }

    /// Whether the handler is still the one installed (MPI_Init could have replaced it).
    public static var isInstalled: Bool { ddp_stop_is_installed() == 1 }

    /// The first stop signal this process received, or 0.
    public static var localSignal: Int32 { ddp_stop_requested() }

    /// Every rank in the same collective: the stop signal if any rank received one (the
    /// largest signal number), else 0. One allreduce of one Int64, in `scratch`.
    static func agree(_ world: Communicator, scratch: UnsafeMutablePointer<Int64>) throws -> Int32 {
        var vote = try startVote(world, scratch: scratch)
        return try finishVote(world, &vote, scratch: scratch)
    }

    /// `agree` in two halves, so that the vote can travel with the gradient allreduce: this
    /// rank's flag as it is now goes into a nonblocking allreduce...
    static func startVote(_ world: Communicator, scratch: UnsafeMutablePointer<Int64>) throws -> PendingCollective {
        scratch.pointee = Int64(ddp_stop_requested())
        return try world.startAllreduce(scratch, count: 1, op: .max)
    }

    /// ...whose result every rank then reads.
    static func finishVote(_ world: Communicator, _ vote: inout PendingCollective, scratch: UnsafeMutablePointer<Int64>) throws -> Int32 {
        try world.wait(&vote)
        if scratch.pointee != 0 { ddp_stop_set_stopping() }
        return Int32(scratch.pointee)
    }

    /// For tests: raise `signal` in this process while it writes its next temporary file.
    static func raiseInNextTemporaryFile(_ signal: Int32) { ddp_stop_raise_in_next_temporary_file(signal) }

    public static func name(of signal: Int32) -> String {
        switch signal {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        case SIGUSR1: "SIGUSR1"
        default: "signal \(signal)"
        }
    }
}
