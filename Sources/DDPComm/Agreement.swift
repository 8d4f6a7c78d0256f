import DDPSystem
import Foundation

/// An error that every rank knows about, to be reported once (by rank 0): ranks leave
/// together with a non-zero exit, no MPI_Abort needed. Such errors are found the same way
/// on every rank, so by default they would repeat (ExitStatus.inputError).
public struct CollectiveFailure: Error, CustomStringConvertible {
    public var message: String
    public var exitCode: Int32 = ExitStatus.inputError
    public var description: String { message }

    public init(message: String, exitCode: Int32 = ExitStatus.inputError) {
        self.message = message
        self.exitCode = exitCode
    }
}

/// Runs `body` on every rank, then agrees on the outcome: if it failed on any rank, rank 0
/// prints each distinct error once with the ranks it happened on, and every rank throws
/// `CollectiveFailure`. Used before training starts (I5: validate before the first
/// collective of the step loop, so a bad file never leaves ranks waiting for each other).
/// `exitCode` is the status the process ends with when it fails (ExitStatus).
public func agreeOnSuccess<T>(_ world: Communicator, exitCode: Int32 = ExitStatus.inputError, _ body: () throws -> T) throws -> T {
    var result: T?
    var message = ""
    do { result = try body() } catch { message = "\(error)" }
    let messages = try world.allgather(string: message)
    if messages.allSatisfy({ $0.isEmpty }), let result { return result }
    var byMessage: [(String, [Int])] = []
    for (rank, text) in messages.enumerated() where !text.isEmpty {
        if let i = byMessage.firstIndex(where: { $0.0 == text }) { byMessage[i].1.append(rank) } else { byMessage.append((text, [rank])) }
    }
    let report = byMessage.map { text, ranks in
        "error on " + (ranks.count == 1 ? "rank \(ranks[0])" : "ranks \(ranks.map(String.init).joined(separator: ","))") + ": " + text
    }.joined(separator: "\n")
    throw CollectiveFailure(message: report, exitCode: exitCode)
}

/// Rank 0 decides (`decide` runs there only: it reads a file, picks a folder) and every rank
/// gets the decision, one broadcast of its JSON text; a failure on rank 0 ends every rank
/// as `agreeOnSuccess` does. Ranks that looked for themselves might see a shared folder
/// differently.
public func decideOnRankZero<Decision: Codable>(_ world: Communicator, exitCode: Int32 = ExitStatus.inputError,
                                                _ decide: () throws -> Decision) throws -> Decision {
    let encoder = JSONEncoder(), decoder = JSONDecoder()
    encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    let text = try agreeOnSuccess(world, exitCode: exitCode) { () throws -> String in
        world.rank == 0 ? String(decoding: try encoder.encode(try decide()), as: UTF8.self) : ""
    }
    let shared = try world.broadcast(string: text, root: 0)
    do {
        return try decoder.decode(Decision.self, from: Data(shared.utf8))
    } catch {
        throw CollectiveFailure(message: "rank \(world.rank) cannot read rank 0's decision: \(error)", exitCode: ExitStatus.runtimeFailure)
    }
}

/// Fails on every rank unless every rank holds the same `settings` (name, value). Inputs each
/// rank reads for itself (a config or model file on a node's own disk) must agree: ranks that
/// resolved different step counts or layers would go on to different collectives and hang.
/// The error names the ranks that differ from rank 0 and the first settings that differ.
public func agreeOnSettings(_ world: Communicator, what: String, _ settings: [(name: String, value: String)]) throws {
    let encoded = String(decoding: (try? JSONEncoder().encode(settings.map { [$0.name, $0.value] })) ?? Data(), as: UTF8.self)
    let all = try world.allgather(string: encoded)
    let differing = all.indices.filter { all[$0] != all[0] }
    guard let other = differing.first else { return }
    func decode(_ text: String) -> [String: String] {
        let pairs = (try? JSONDecoder().decode([[String]].self, from: Data(text.utf8))) ?? []
        return Dictionary(pairs.compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil }, uniquingKeysWith: { first, _ in first })
    }
    let base = decode(all[0]), theirs = decode(all[other])
    let names = Set(base.keys).union(theirs.keys).sorted().filter { base[$0] != theirs[$0] }
    let shown = names.prefix(4).map { "\($0) is \(base[$0] ?? "absent") on rank 0, \(theirs[$0] ?? "absent") on rank \(other)" }
    throw CollectiveFailure(message: "\(what) differs between ranks (rank\(differing.count > 1 ? "s" : "") "
                            + differing.map(String.init).joined(separator: ",") + " against rank 0): "
                            + shown.joined(separator: "; ") + (names.count > 4 ? "; and \(names.count - 4) more" : "")
                            + "; every rank must read the same files (put them on shared storage)")
}
