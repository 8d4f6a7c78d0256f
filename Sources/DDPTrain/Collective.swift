import DDPComm

/// An error that every rank knows about, to be reported once (by rank 0): ranks leave
/// together with a non-zero exit, no MPI_Abort needed. Such errors are found the same way
/// on every rank, so by default they would repeat (ExitStatus.inputError).
public struct CollectiveFailure: Error, CustomStringConvertible {
    public var message: String
    public var exitCode: Int32 = ExitStatus.inputError
    public var description: String { message }
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
