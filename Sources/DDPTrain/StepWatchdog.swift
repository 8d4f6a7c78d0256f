import DDPSystem
import Foundation

/// `--collective-timeout SECONDS`: ends this rank when one training step takes longer than
/// that. A step is forward, the collectives (sync batch norm, the gradient allreduce), the
/// optimizer, and at times an evaluation or a checkpoint; a step that takes minutes means
/// a peer is lost or stuck and MPI would wait for it forever. The rank says so on stderr and
/// exits with ExitStatus.collectiveTimeout without calling MPI (it may be inside an MPI call);
/// mpirun then ends the other ranks. A thread checks a few times per second; the training
/// thread only stores the time a step starts (no allocation, no system call but the clock).
/// Time this process spends stopped does not count (a stopped rank's peers, which wait,
/// are the ones that find it stuck).
public final class StepWatchdog: @unchecked Sendable {
    public let seconds: Double
    let rank: Int
    private let lock = NSLock()
    private var step = 0
    private var started = 0.0
    private var running = true

    public init(seconds: Double, rank: Int) {
        self.seconds = seconds
        self.rank = rank
        started = Self.now()
        let thread = Thread { [self] in watch() }
        thread.name = "ddptrain-watchdog"
        thread.start()
    }

    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }

    /// The training loop is starting `step` (0-based).
    public func begin(step: Int) {
        let now = Self.now()
        lock.lock()
        self.step = step
        started = now
        lock.unlock()
    }

    /// Training is over: the watchdog stops looking.
    public func stop() {
        lock.lock()
        running = false
        lock.unlock()
    }

    private func watch() {
        let poll = min(max(seconds / 10, 0.05), 1)
        var lastWake = Self.now()
        while true {
            Thread.sleep(forTimeInterval: poll)
            let now = Self.now()
            // A wake far later than asked: this process itself was stopped (SIGSTOP, Ctrl-Z,
            // a suspended Slurm job, a paused VM), and with it the whole job, most likely.
            // That time is nobody's step running long: it does not count.
            let overslept = now - lastWake - poll
            lastWake = now
            lock.lock()
            // (Never past now: a step that began after the stop starts from its own start.)
            if overslept > max(1, poll) { started = min(started + overslept, now) }
            let (active, step, elapsed) = (running, self.step, now - started)
            lock.unlock()
            if !active { return }
            if elapsed > seconds {
                let text = "ddptrain: error on rank \(rank): step \(step) has run for \(String(format: "%.0f", elapsed)) s, "
                    + "more than --collective-timeout \(String(format: "%g", seconds)) s: a rank or host is probably lost or stuck; ending the job\n"
                writeToStandardError(text)
                _exit(ExitStatus.collectiveTimeout)
            }
        }
    }
}
