import ArgumentParser
import DDPComm
import DDPData
import DDPKernels
import DDPSystem
import DDPTrain
import Foundation

@main
struct DDPTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ddptrain",
        abstract: "Data-parallel training of MLPs and small CNNs on CPUs, over MPI.",
        discussion: "Run under mpirun: every rank holds a replica and trains on its own slice of each global batch.",
        version: DDPTrainVersion.current,
        subcommands: [Train.self, Compare.self, Eval.self, Plot.self, Inspect.self, Summary.self, Init.self, Doctor.self, Bench.self, Microbench.self])

    /// Argument errors happen before MPI starts, identically on every rank started with
    /// rank 0's command line: only the rank that the launcher numbered 0 prints them and
    /// exits with their status; the others exit quietly with 0 (see below). A rank started
    /// with a command line of its own (an MPMD launch) reports its errors itself: rank 0 may
    /// have none and would wait for it in MPI_Init. (Files named by the arguments are read
    /// once MPI runs, under agreeOnSuccess.)
    static func main() {
        openClosedStandardDescriptors()
        // A file-size limit (`ulimit -f`, which Slurm passes on to jobs) makes a write past
        // it fail with EFBIG, reported like a full disk (74, the temporary file removed),
        // instead of SIGXFSZ ending the process without a word mid-file.
        signal(SIGXFSZ, SIG_IGN)
        // A buffer the kernel refuses (OutOfMemory): the rank says so and the whole job ends.
        // (_exit: no atexit handlers or destructors while other threads may still run.)
        OutOfMemory.handler = { message in
            let world = Communicator.current
            let limit = MemoryInfo.processRoom().map { "; \($0.limit)" } ?? ""
            writeToStandardError("ddptrain: error on rank \(world?.rank ?? launchRank)\(world.map { " of \($0.size)" } ?? ""): \(message)\(limit)\n")
            if let world, world.size > 1 { world.abort(exitCode: ExitStatus.inputError) }
            _exit(ExitStatus.inputError)
        }
        BLASCore.chooseByFeatures()
        // Every command but `train` (which stops gracefully) ends at once on SIGTERM, SIGINT
        // or SIGUSR1, with 128 + the signal's number and no temporary file left behind.
        StopRequest.install(graceful: false, announce: false)
        do {
            if let problem = nonUTF8Argument() { throw ValidationError(problem) }
            var command = try parseAsRoot()
            parsed = command
            if !(command is Train) { StopRequest.takeLauncherRequest() }
            try command.run()
            try finishStandardOutput()
        } catch {
            // Commands that never start MPI report their own errors on every process: a
            // rank variable left in the environment must not silence them.
            let startsMPI = parsed.map { $0 is Train || $0 is Compare || $0 is Eval || $0 is Doctor || $0 is Bench } ?? true
            if launchRank == 0 || !startsMPI { exit(withError: error) }
            if hasOwnCommandLine {
                writeToStandardError("ddptrain: error on rank \(launchRank), which has a command line of its own:\n")
                exit(withError: error)
            }
            // Rank 0 reports and carries the status. Were this rank to exit non-zero first,
            // mpirun could end rank 0 before it printed the message.
            Foundation.exit(0)
        }
    }
}

/// Why an argument cannot be taken, when one is not UTF-8: Swift reads arguments as text and
/// replaces bytes that are not UTF-8 with U+FFFD, so `run\xff` would quietly name another
/// folder (`run\u{FFFD}`) than the one given. Such an argument is refused, shown with escapes.
func nonUTF8Argument() -> String? {
    for index in 1..<max(Int(CommandLine.argc), 1) {
        guard let raw = CommandLine.unsafeArgv[index] else { continue }
        let bytes = UnsafeBufferPointer(start: UnsafeRawPointer(raw).assumingMemoryBound(to: UInt8.self), count: strlen(raw))
        guard String(validating: bytes, as: UTF8.self) == nil else { continue }
        let shown = bytes.map { (32..<127).contains($0) ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined()
        return "argument \(index), '\(shown)', is not UTF-8 text: ddptrain takes paths and values as UTF-8 (rename the file or folder)"
    }
    return nil
}

/// The command parsed from the command line, once it is (nil while parsing).
nonisolated(unsafe) private var parsed: ParsableCommand?

/// Flushes standard output and fails if anything written there was lost (a full disk, an
/// I/O error): the output is what the command was run for, so a lost one is an error, 74,
/// not a success with an empty file. (A pipe closed by its reader ends the process by
/// SIGPIPE, status 141, as it ends other tools.)
func finishStandardOutput() throws {
    guard let reason = standardOutputFailure() else { return }
    writeToStandardError("ddptrain: cannot write the standard output: \(reason)\n")
    throw ExitCode(ExitStatus.checkpointWriteFailed)
}

/// This process's rank as the launcher numbered it, read before MPI starts (0 when alone):
/// a rank variable counts only with a size variable of its launcher beside it, larger than
/// the rank (a SLURM_PROCID left in a shell alone does not make a process a hushed rank).
/// A rank variable without one is passed over for the next: srun --mpi=pmix sets PMIX_RANK
/// but no PMIX_SIZE, and SLURM_PROCID with SLURM_STEP_NUM_TASKS.
let launchRank: Int = {
    let env = ProcessInfo.processInfo.environment
    for (key, sizes) in [("OMPI_COMM_WORLD_RANK", ["OMPI_COMM_WORLD_SIZE"]), ("PMI_RANK", ["PMI_SIZE"]),
                         ("PMIX_RANK", ["PMIX_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"]),
                         ("SLURM_PROCID", ["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"])] {
        guard let value = env[key], let rank = Int(value),
              let size = sizes.lazy.compactMap({ env[$0].flatMap { Int($0) } }).first, rank >= 0, rank < size else { continue }
        return rank
    }
    return 0
}()

/// True when this process may have been started with another command line than rank 0's:
/// a later app context of an Open MPI MPMD launch (`mpirun -n 1 A : -n 1 B`).
let hasOwnCommandLine: Bool = {
    let env = ProcessInfo.processInfo.environment
    guard let contexts = env["OMPI_NUM_APP_CTX"].flatMap({ Int($0) }), contexts > 1 else { return false }
    return env["OMPI_MCA_orte_app_num"].flatMap { Int($0) } != 0
}()

/// Runs `body` with the world communicator. An error on any rank is printed with the rank
/// and ends the whole job (MPI_Abort), so ranks waiting in a collective do not hang (I5).
/// The exit status says whether running again could help (ExitStatus, docs/FAILURES.md).
func withWorld(_ body: (Communicator) throws -> Void) throws {
    let world: Communicator
    do {
        world = try Communicator.world()
    } catch {
        writeToStandardError("ddptrain: \(error)\n")
        throw ExitCode(ExitStatus.mpiStartFailure)
    }
    do {
        try body(world)
    } catch let failure as CollectiveFailure {
        // Every rank knows; rank 0 reports once, and all leave together.
        if world.rank == 0 { writeToStandardError("ddptrain: \(failure.message)\n") }
        throw ExitCode(failure.exitCode)
    } catch let exit as ExitCode {
        if world.size > 1 && exit != .success { world.abort(exitCode: exit.rawValue) }
        throw exit
    } catch {
        writeToStandardError("ddptrain: error on rank \(world.rank) of \(world.size): \(error)\n")
        let code = exitStatus(for: error)
        if world.size > 1 { world.abort(exitCode: code) }
        throw ExitCode(code)
    }
}

/// Errors in the input or configuration would repeat on a restart; anything else (an MPI
/// error, a failed rank) might not.
func exitStatus(for error: Error) -> Int32 {
    switch error {
    case let error as TrainingError: return error.exitCode
    case let error as CollectiveFailure: return error.exitCode
    case is ConfigError, is DataError, is CheckpointError: return ExitStatus.inputError
    default: return ExitStatus.runtimeFailure
    }
}

/// Runs the set-up part of a command (reading data, model, checkpoint; preparing the run
/// dir): a failure there is an input error that a restart would repeat, unless MPI itself failed.
func inputPhase<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as MPIError {
        throw error
    } catch let error as CollectiveFailure {
        throw error
    } catch let error as TrainingError where error.exitCode != ExitStatus.runtimeFailure {
        throw error
    } catch {
        throw TrainingError("\(error)", exitCode: ExitStatus.inputError)
    }
}

