import Foundation
import XCTest

/// Runs the real `ddptrain` binary under mpirun and captures what it did.
struct MPIRun {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
        var seconds: Double
        var timedOut: Bool
    }

    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var binary: String {
        if let path = ProcessInfo.processInfo.environment["DDPTRAIN_BIN"] { return path }
        return repoRoot.appendingPathComponent(".build/release/ddptrain").path
    }

    /// `mpirun -n ranks ddptrain args...`, killed after `timeout` seconds.
    static func run(ranks: Int, _ args: [String], timeout: Double = 120, environment: [String: String] = [:]) throws -> Result {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw XCTSkip("no release binary at \(binary): run launch/test (or swift build -c release)")
        }
        var mpiArgs = ["mpirun", "-n", String(ranks), "--oversubscribe", "--bind-to", "none", "-x", "OPENBLAS_NUM_THREADS",
                       "-x", "DDPTRAIN_PROGRESS"]
        for key in environment.keys.sorted() { mpiArgs += ["-x", key] }
        var env = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OPENBLAS_NUM_THREADS": "1", "DDPTRAIN_PROGRESS": "lines"]
        for (key, value) in environment { env[key] = value }
        return try Background("/usr/bin/env", mpiArgs + [binary] + args, environment: env).wait(timeout: timeout)
    }
}

extension MPIRun {
    /// This process's environment for a child that runs mpirun. The in-process MPI tests
    /// initialize MPI in this test process, which leaves Open MPI and PMIx variables behind;
    /// a child mpirun that inherits them fails at once.
    static func childEnvironment() -> [String: String] {
        ProcessInfo.processInfo.environment.filter { key, _ in
            !(key.hasPrefix("OMPI_") || key.hasPrefix("PMIX_") || key.hasPrefix("OPAL_") || key.hasPrefix("ORTE_") || key.hasPrefix("PMI_"))
        }
    }
}

/// Reads a pipe on a background thread so a chatty child never blocks on a full pipe.
final class DataCollector: @unchecked Sendable {
    private var data = Data()
    private let lock = NSLock()
    private let done = DispatchSemaphore(value: 0)

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                lock.lock(); data.append(chunk); lock.unlock()
            }
            done.signal()
        }
    }

    /// What has arrived so far.
    func snapshot() -> String {
        lock.lock(); defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }

    func finish() -> String {
        done.wait()
        lock.lock(); defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
}

/// A small, valid Fashion-MNIST-shaped folder of plain IDX files (28x28 images whose bytes
/// count up, labels i mod 10), for the tests that damage data or run on it.
enum TestData {
    static func fashionMNISTLike(in dir: URL, train: Int, test: Int) throws -> URL {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for (split, n) in [("train", train), ("t10k", test)] {
            var images = Data([0, 0, 8, 3]) + bigEndian(n) + bigEndian(28) + bigEndian(28)
            images += Data((0..<(n * 784)).map { UInt8(truncatingIfNeeded: $0 * 7) })
            var labels = Data([0, 0, 8, 1]) + bigEndian(n)
            labels += Data((0..<n).map { UInt8($0 % 10) })
            try images.write(to: dir.appendingPathComponent("\(split)-images-idx3-ubyte"))
            try labels.write(to: dir.appendingPathComponent("\(split)-labels-idx1-ubyte"))
        }
        return dir
    }

    static func bigEndian(_ v: Int) -> Data { Data([UInt8(v >> 24 & 255), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)]) }
}
