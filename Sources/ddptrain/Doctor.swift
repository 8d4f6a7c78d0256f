import ArgumentParser
import DDPComm
import DDPData
import DDPKernels
import Foundation

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check MPI, OpenBLAS and the data on every rank, and measure sgemm and allreduce.")

    @Option(help: "Folder with the Fashion-MNIST IDX files.")
    var dataDir = "/usr/share/datasets/fashion-mnist"

    @Flag(help: "Skip the sgemm and allreduce measurements.")
    var noBench = false

    @Option(help: .hidden)
    var injectFault: String?

    @Option(parsing: .unconditional, help: .hidden)
    var faultRank = 0

    func validate() throws {
        if let fault = injectFault, fault != "bad-broadcast-root" {
            throw ValidationError("--inject-fault takes bad-broadcast-root, got '\(fault)'")
        }
    }

    func run() throws {
        try withWorld { world in
            var failures: [String] = []
            let report = DoctorReport()

            if injectFault != nil && world.rank == faultRank {
                // For the fault test: a broadcast from a root that does not exist.
                var x: [Float] = [0]
                try world.broadcast(&x, root: world.size + 3)
            }

            // Who is where.
            let hosts = try world.allgather(string: try world.hostName())
            let cores = ProcessInfo.processInfo.activeProcessorCount
            let coresByHost = try world.allgather([Int64(cores)])
            var ranksPerHost: [String: Int] = [:]
            for host in hosts { ranksPerHost[host, default: 0] += 1 }
            report.line("world size", "\(world.size)")
            for host in ranksPerHost.keys.sorted() {
                let ranks = hosts.indices.filter { hosts[$0] == host }
                let hostCores = Int(coresByHost[ranks[0]])
                let over = ranksPerHost[host]! > hostCores
                report.line("host \(host)", "ranks \(ranks.map(String.init).joined(separator: ",")); \(hostCores) cores"
                            + (over ? "; ranks outnumber cores (oversubscribed)" : ""))
            }
            report.line("MPI", Communicator.libraryVersion())
            let coreNote = BLASCore.replacedPrescott ? "; chosen by the CPU's features: this OpenBLAS does not know the CPU and took Prescott" : ""
            report.line("OpenBLAS", "\(BLASThreads.configuration) (core \(BLASThreads.coreName)\(coreNote))")
            let threads = try world.allgather([Int64(BLASThreads.current)])
            report.line("BLAS threads per rank", threads.map { String($0) }.joined(separator: ","))

            // Data: read and checked as train reads it (through the cache), not only found:
            // a folder, a FIFO or a sparse file of zeros under a data file's name is no data.
            var problem: String?
            do {
                for split in [Split.train, .test] { _ = try Dataset.load(try DataSource.idx(directory: dataDir, split: split)) }
            } catch {
                problem = "\(error)"
            }
            let bad = try world.allgather([Int64(problem == nil ? 0 : 1)])
            let badRanks = bad.indices.filter { bad[$0] != 0 }
            if badRanks.isEmpty {
                report.line("Fashion-MNIST", "read and checked in \(dataDir) on every rank")
            } else {
                let ranks = badRanks.map(String.init).joined(separator: ",")
                report.line("Fashion-MNIST", "FAILED on rank\(badRanks.count == 1 ? "" : "s") \(ranks)" + (problem.map { ": \($0)" } ?? ""))
                failures.append("Fashion-MNIST in \(dataDir) cannot be read on rank\(badRanks.count == 1 ? "" : "s") \(ranks)")
            }

            // Collectives on known patterns: results must be exact.
            if try !checkAllreduce(world) { failures.append("allreduce returned wrong values") }
            if try !checkBroadcast(world) { failures.append("broadcast returned wrong values") }
            report.line("allreduce check", failures.contains { $0.hasPrefix("allreduce") } ? "FAILED" : "exact (Float32, Float64, Int64; sum, max, min)")
            report.line("broadcast check", failures.contains { $0.hasPrefix("broadcast") } ? "FAILED" : "exact")

            if !noBench {
                let gflops = sgemmPeakGFLOPS(threads: 1)
                let all = try world.allgather([gflops])
                report.line("sgemm 1 thread", String(format: "%.1f GFLOP/s on rank 0 (min over ranks %.1f)", gflops, all.min() ?? 0))
                for (bytes, busBandwidth) in try measureAllreduce(world) {
                    let size = bytes >= 1 << 20 ? "\(bytes >> 20) MiB" : "\(bytes >> 10) KiB"
                    report.line("allreduce \(size)", world.size == 1 ? "1 rank: no traffic"
                                : String(format: "bus bandwidth %.2f GB/s", busBandwidth / 1e9))
                }
            }

            if world.rank == 0 {
                print(report.text, terminator: "")
                if failures.isEmpty {
                    print("doctor: all checks passed")
                } else {
                    print("doctor: FAILED: " + failures.joined(separator: "; "))
                }
            }
            if !failures.isEmpty { throw ExitCode(2) }
        }
    }

    /// Each rank contributes a pattern whose sum, max and min are exact in every type.
    private func checkAllreduce(_ world: Communicator) throws -> Bool {
        let n = 1000, p = world.size, r = world.rank
        var ok = true
        var f = (0..<n).map { Float(r + 1) + Float($0 % 7) }
        try world.allreduce(&f)
        ok = ok && f.enumerated().allSatisfy { $1 == Float(p * (p + 1) / 2 + p * ($0 % 7)) }
        var d = (0..<n).map { Double(r) * 0.5 + Double($0) }
        try world.allreduce(&d, op: .max)
        ok = ok && d.enumerated().allSatisfy { $1 == Double(p - 1) * 0.5 + Double($0) }
        var i = (0..<n).map { Int64(r) * 1_000_000_007 + Int64($0) }
        try world.allreduce(&i, op: .min)
        ok = ok && i.enumerated().allSatisfy { $1 == Int64($0) }
        // Every rank must agree that every rank passed.
        return try world.allreduce(Int64(ok ? 0 : 1), op: .max) == 0
    }

    private func checkBroadcast(_ world: Communicator) throws -> Bool {
        let root = world.size - 1
        var x = (0..<4096).map { world.rank == root ? Float($0) * 0.25 - 7 : 0 }
        try world.broadcast(&x, root: root)
        let ok = x.enumerated().allSatisfy { $1 == Float($0) * 0.25 - 7 }
        return try world.allreduce(Int64(ok ? 0 : 1), op: .max) == 0
    }

    /// Bus bandwidth (NCCL's convention: algorithm bandwidth x 2(p-1)/p) per message size.
    private func measureAllreduce(_ world: Communicator) throws -> [(Int, Double)] {
        var results: [(Int, Double)] = []
        for bytes in [4 << 10, 256 << 10, 4 << 20, 16 << 20] {
            let count = bytes / 4
            let buffer = FloatBuffer(capacity: count)
            try world.allreduce(buffer.pointer, count: count)
            try world.barrier()
            let reps = bytes >= 4 << 20 ? 5 : 20
            let start = Clock.seconds()
            for _ in 0..<reps { try world.allreduce(buffer.pointer, count: count) }
            var elapsed = [(Clock.seconds() - start) / Double(reps)]
            try world.allreduce(&elapsed, op: .max)
            let p = Double(world.size)
            results.append((bytes, Double(bytes) / elapsed[0] * 2 * (p - 1) / p))
        }
        return results
    }
}

/// Aligned "name: value" lines.
final class DoctorReport {
    private var lines: [(String, String)] = []
    func line(_ name: String, _ value: String) { lines.append((name, value)) }
    var text: String {
        let width = (lines.map { $0.0.count }.max() ?? 0) + 2
        return lines.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + $0.1 + "\n" }.joined()
    }
}
