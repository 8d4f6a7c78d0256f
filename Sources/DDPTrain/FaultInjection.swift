import DDPKernels
import DDPSystem
import Foundation

/// Places in a run where a test acts on it, called by the trainer on the rank's training
/// thread; they allocate nothing. The trainer knows these places, not what is done there:
/// `FaultInjection` is the one implementation (`fromEnvironment`, nil when no test asks).
public protocol StepHooks: AnyObject {
    /// Before the stop vote that precedes the first step.
    func runWillStart(step: Int)
    /// Before forward: the slice's input, `count` samples (maybe 0).
    func beforeForward(step: Int, input: UnsafeMutablePointer<Float>, count: Int)
    /// After forward and backward, before the gradient allreduce: this rank's gradients.
    func afterBackward(step: Int, gradients: UnsafeMutablePointer<Float>) throws
    /// After the optimizer step.
    func afterUpdate(step: Int, parameters: UnsafeMutablePointer<Float>)
    /// Just before the evaluation after `step` steps.
    func beforeEvaluation(step: Int)
    /// While the checkpoint of `step` is written (rank 0).
    func beforeCheckpoint(step: Int)
}

/// For the I5 tests: DDPTRAIN_INJECT_FAULT="rank:step" makes that rank fail at that step,
/// after its forward and backward, just before the gradient allreduce the others wait in.
/// DDPTRAIN_INJECT_NAN="rank:step" (or "rank:step+" for every step from then on) puts a
/// NaN into that rank's local gradient, to test that all ranks skip the same steps;
/// DDPTRAIN_INJECT_NAN_INPUT="rank:step" puts a NaN into that rank's input instead, so that
/// the forward (batch statistics, loss) goes non-finite as with a bad sample.
/// DDPTRAIN_INJECT_STOP="rank:step" makes that rank stop itself (SIGSTOP) at that step, in
/// a run that did not resume, so that a test can act on a job at a known step however fast
/// the machine is (a restart resumes past the stop and is not stopped again).
/// DDPTRAIN_INJECT_HOLD="rank:step" makes that rank wait at that step, just before its stop
/// vote (in a run that did not resume), until a stop signal has reached it: then the ranks
/// agree to stop after exactly that step. A stopped rank would not do: a signal sent to a
/// stopped process may be taken by any of its threads once it continues, and that thread's
/// handler can run after the main thread has voted; a waiting main thread is the one the
/// kernel gives a process-directed signal to.
/// DDPTRAIN_INJECT_SIGNAL="rank:step:place[:SIGNAL][,...]" makes that rank send itself
/// SIGTERM (or SIGNAL: TERM, INT, USR1, HUP), in a run that did not resume: `start` before the loop (step: the first step),
/// `step` after forward and backward of step index `step` (0-based, as above), `eval` just
/// before the evaluation after `step` steps, `checkpoint` while the checkpoint of `step` is
/// being written (its temporary file open).
/// The hooks of a run as the DDPTRAIN_INJECT_* variables ask, for this rank; the places
/// that only apply to a run that did not resume are left out of a resumed one.
public final class FaultInjection: StepHooks {
    struct Target { var rank: Int; var step: Int; var onwards: Bool; var signal: Int32 = SIGTERM }

    static func parse(_ variable: String) -> Target? {
        guard var text = ProcessInfo.processInfo.environment[variable] else { return nil }
        let onwards = text.hasSuffix("+")
        if onwards { text.removeLast() }
        let parts = text.split(separator: ":").compactMap { Int($0) }
        return parts.count == 2 ? Target(rank: parts[0], step: parts[1], onwards: onwards) : nil
    }

    enum SignalPlace: String { case start, step, evaluation = "eval", checkpoint }

    static func parseSignals() -> [SignalPlace: [Target]] {
        guard let text = ProcessInfo.processInfo.environment["DDPTRAIN_INJECT_SIGNAL"] else { return [:] }
        let entries = text.split(separator: ",").compactMap { entry -> (SignalPlace, Target)? in
            let parts = entry.split(separator: ":")
            let names: [Substring: Int32] = ["TERM": SIGTERM, "INT": SIGINT, "USR1": SIGUSR1, "HUP": SIGHUP]
            guard parts.count == 3 || parts.count == 4, let rank = Int(parts[0]), let step = Int(parts[1]),
                  let place = SignalPlace(rawValue: String(parts[2])), let signal = parts.count == 4 ? names[parts[3]] : SIGTERM else { return nil }
            return (place, Target(rank: rank, step: step, onwards: false, signal: signal))
        }
        return Dictionary(grouping: entries, by: \.0).mapValues { $0.map(\.1) }
    }

    let rank: Int
    let resumed: Bool
    let fault = parse("DDPTRAIN_INJECT_FAULT")
    let nan = parse("DDPTRAIN_INJECT_NAN")
    let nanInput = parse("DDPTRAIN_INJECT_NAN_INPUT")
    /// DDPTRAIN_INJECT_DIVERGENCE="rank:step": that rank nudges a parameter after that step.
    let divergence = parse("DDPTRAIN_INJECT_DIVERGENCE")
    let stop = parse("DDPTRAIN_INJECT_STOP")
    let hold = parse("DDPTRAIN_INJECT_HOLD")
    /// The DDPTRAIN_INJECT_SIGNAL targets by place (parsed once: the step allocates nothing).
    let signalTargets = parseSignals()

    init(rank: Int, resumed: Bool) {
        self.rank = rank
        self.resumed = resumed
    }

    /// The hooks the environment asks for, or nil (the usual case: no DDPTRAIN_INJECT_*).
    public static func fromEnvironment(rank: Int, resumed: Bool) -> FaultInjection? {
        ProcessInfo.processInfo.environment.keys.contains { $0.hasPrefix("DDPTRAIN_INJECT_") } ? FaultInjection(rank: rank, resumed: resumed) : nil
    }

    func hits(_ target: Target?, step: Int) -> Bool {
        guard let target, target.rank == rank else { return false }
        return target.onwards ? step >= target.step : step == target.step
    }

    /// The signal DDPTRAIN_INJECT_SIGNAL asks for at `place`, in a run that did not resume.
    func signal(at place: SignalPlace, step: Int) -> Int32? {
        resumed ? nil : signalTargets[place]?.first { hits($0, step: step) }?.signal
    }

    public func runWillStart(step: Int) {
        if let signal = signal(at: .start, step: step) { raise(signal) }
    }

    public func beforeForward(step: Int, input: UnsafeMutablePointer<Float>, count: Int) {
        if count > 0 && hits(nanInput, step: step) { input[0] = .nan }
    }

    public func afterBackward(step: Int, gradients: UnsafeMutablePointer<Float>) throws {
        if !resumed, hits(stop, step: step) { raise(SIGSTOP) }
        if !resumed, hits(hold, step: step) { holdUntilStopSignal(step: step) }
        if hits(fault, step: step) { throw TrainingError("injected fault at step \(step) (DDPTRAIN_INJECT_FAULT)") }
        if let signal = signal(at: .step, step: step) { raise(signal) }
        if hits(nan, step: step) { gradients[0] = .nan }
    }

    public func afterUpdate(step: Int, parameters: UnsafeMutablePointer<Float>) {
        if hits(divergence, step: step) { parameters[0] += 1e-3 }
    }

    public func beforeEvaluation(step: Int) {
        if let signal = signal(at: .evaluation, step: step) { raise(signal) }
    }

    public func beforeCheckpoint(step: Int) {
        if let signal = signal(at: .checkpoint, step: step) { StopRequest.raiseInNextTemporaryFile(signal) }
    }

    /// Waits (DDPTRAIN_INJECT_HOLD) until this process has a stop signal, at most 300 s;
    /// says so first, with the pid, so that a test knows when and whom to signal.
    func holdUntilStopSignal(step: Int) {
        writeToStandardError("ddptrain: rank \(rank) (pid \(getpid())) holds at step index \(step) until a stop signal reaches it (DDPTRAIN_INJECT_HOLD)\n")
        let deadline = Date().addingTimeInterval(300)
        while StopRequest.localSignal == 0 && Date() < deadline { usleep(1000) }
        if StopRequest.localSignal == 0 {
            writeToStandardError("ddptrain: rank \(rank): no stop signal within 300 s of the hold; going on\n")
        }
    }
}
