import ArgumentParser
import DDPComm
import DDPTrain
import Foundation

@main
struct DDPTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ddptrain",
        abstract: "Data-parallel training of MLPs and small CNNs on CPUs, over MPI.",
        discussion: "Run under mpirun: every rank holds a replica and trains on its own slice of each global batch.",
        subcommands: [Train.self, Compare.self, Eval.self, Inspect.self, Summary.self, Init.self, Doctor.self, Bench.self])

    /// Argument errors happen before MPI starts, identically on every rank: only the rank
    /// that mpirun numbered 0 prints them, the others exit with the same code quietly.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            if launchRank == 0 { exit(withError: error) }
            Foundation.exit(exitCode(for: error).rawValue)
        }
    }
}

/// This process's rank as the launcher numbered it, read before MPI starts (0 when alone).
let launchRank: Int = {
    let env = ProcessInfo.processInfo.environment
    for key in ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"] {
        if let value = env[key], let rank = Int(value) { return rank }
    }
    return 0
}()

/// Runs `body` with the world communicator. An error on any rank is printed with the rank
/// and ends the whole job (MPI_Abort), so ranks waiting in a collective do not hang (I5).
func withWorld(_ body: (Communicator) throws -> Void) throws {
    let world: Communicator
    do {
        world = try Communicator.world()
    } catch {
        FileHandle.standardError.write("ddptrain: \(error)\n")
        throw ExitCode(3)
    }
    do {
        try body(world)
    } catch let failure as CollectiveFailure {
        // Every rank knows; rank 0 reports once, and all leave together.
        if world.rank == 0 { FileHandle.standardError.write("ddptrain: error on \(failure.message)\n") }
        throw ExitCode.failure
    } catch let exit as ExitCode {
        if world.size > 1 && exit != .success { world.abort(exitCode: exit.rawValue) }
        throw exit
    } catch {
        FileHandle.standardError.write("ddptrain: error on rank \(world.rank) of \(world.size): \(error)\n")
        if world.size > 1 { world.abort(exitCode: 1) }
        throw ExitCode.failure
    }
}

extension FileHandle {
    func write(_ text: String) { write(text.data(using: .utf8)!) }
}
