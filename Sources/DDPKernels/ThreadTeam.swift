#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A fixed team of threads that run one job together, member 0 on the calling thread.
///
/// Used for data parallelism inside a rank: each member trains its own part of the rank's
/// slice on its own replica of the model, and the members meet at `barrier()` where batch
/// norm combines statistics and where gradients are summed. The team is made once; a job
/// allocates nothing and costs two wake-ups.
///
/// Waiting spins briefly (a batch-norm layer's members finish within microseconds of each
/// other when each has a core), then sleeps on a condition variable, so a team on
/// oversubscribed cores does not burn the time slices its partners need.
///
/// Only member 0 may call MPI (it is the thread that initialized MPI: MPI_THREAD_FUNNELED).
public final class ThreadTeam: @unchecked Sendable {
    public let size: Int
    private let core: Core
    private var threads: [pthread_t] = []

    /// Thrown at `barrier()` in the members still waiting when another member failed;
    /// `run` rethrows the failure itself, not this.
    public struct Aborted: Error { public init() {} }

    /// What the member threads share with the caller. The threads hold it, not the team,
    /// so that the team's deinit can stop them.
    private final class Core: @unchecked Sendable {
        let start: TeamBarrier
        let finish: TeamBarrier
        let inner: TeamBarrier
        /// The current job, valid between `start` and `finish`.
        var job: ((Int) throws -> Void)?
        /// One slot per member, each written only by its member: members that fail together
        /// must not write one shared array.
        let errors: UnsafeMutablePointer<Error?>
        let size: Int
        var shuttingDown = false

        init(size: Int, spinIterations: Int) {
            start = TeamBarrier(parties: size, spinIterations: spinIterations)
            finish = TeamBarrier(parties: size, spinIterations: spinIterations)
            inner = TeamBarrier(parties: size, spinIterations: spinIterations)
            self.size = size
            errors = .allocate(capacity: size)
            errors.initialize(repeating: nil, count: size)
        }

        deinit {
            errors.deinitialize(count: size)
            errors.deallocate()
        }

        /// The first real failure (by member), clearing every slot; nil when none failed.
        func takeFailure() -> Error? {
            var failure: Error?
            var aborted = false
            for m in 0..<size {
                if let error = errors[m] {
                    if error is Aborted { aborted = true } else if failure == nil { failure = error }
                }
                errors[m] = nil
            }
            return failure ?? (aborted ? Aborted() : nil)
        }

        func serve(member: Int) {
            while true {
                start.wait()
                if shuttingDown { return }
                perform(member)
                finish.wait()
            }
        }

        func perform(_ member: Int) {
            do {
                try job!(member)
            } catch {
                errors[member] = error
                inner.abort()
            }
        }
    }

    private final class MemberContext {
        let core: Core
        let member: Int
        init(core: Core, member: Int) { self.core = core; self.member = member }
    }

    /// A team of `size` members: the caller of `run` and `size - 1` threads started here.
    public init(size: Int, spinIterations: Int = 1 << 14) throws {
        precondition(size >= 1, "a team has at least one member")
        self.size = size
        core = Core(size: size, spinIterations: spinIterations)
        for member in 1..<max(size, 1) {
            let context = Unmanaged.passRetained(MemberContext(core: core, member: member))
            var thread = pthread_t()
            let code = pthread_create(&thread, nil, { raw in
                let context = Unmanaged<MemberContext>.fromOpaque(raw!).takeRetainedValue()
                context.core.serve(member: context.member)
                return nil
            }, context.toOpaque())
            guard code == 0 else {
                context.release()
                // The threads started so far wait (or are about to wait) at `start` for a
                // round of `size`: arrive for the caller and every member never started, so
                // that the round ends whenever they get there; they then see the shutdown.
                core.shuttingDown = true
                core.start.arrive(count: size - threads.count)
                for thread in threads { pthread_join(thread, nil) }
                threads = []
                throw ThreadTeamError(call: "pthread_create", code: code, member: member)
            }
            threads.append(thread)
        }
    }

    deinit {
        guard !threads.isEmpty else { return }
        core.shuttingDown = true
        core.start.wait()
        for thread in threads { pthread_join(thread, nil) }
    }

    /// Runs `body(member)` on every member and returns when all are done. When a member
    /// throws, members waiting at `barrier()` are released with `Aborted`, and the first
    /// real error (by member number) is rethrown here.
    public func run(_ body: (Int) throws -> Void) throws {
        if size == 1 { return try body(0) }
        try withoutActuallyEscaping(body) { body in
            core.job = body
            core.start.wait()
            core.perform(0)
            core.finish.wait()
            core.job = nil
        }
        guard let failure = core.takeFailure() else { return }
        core.inner.reset()
        throw failure
    }

    /// Waits until every member has arrived; memory written before it by any member is
    /// visible after it to all. Throws `Aborted` when another member failed.
    public func barrier() throws {
        if size == 1 { return }
        try core.inner.wait(abortable: true)
    }

    /// `[0, count)` cut into `size` contiguous parts, as ranks cut a batch; part `member`.
    public func part(_ member: Int, of count: Int) -> Range<Int> {
        contiguousPart(0..<count, parts: size, index: member)
    }
}

/// Part `index` of `range` cut into `parts` contiguous pieces whose lengths differ by at
/// most one, the first `count % parts` of them one longer: how a global batch is shared
/// among ranks, and a rank's slice among its compute threads.
public func contiguousPart(_ range: Range<Int>, parts: Int, index: Int) -> Range<Int> {
    precondition(parts >= 1 && (0..<parts).contains(index), "part \(index) of \(parts)")
    let size = range.count / parts, extra = range.count % parts
    let start = range.lowerBound + index * size + min(index, extra)
    return start ..< start + size + (index < extra ? 1 : 0)
}

public struct ThreadTeamError: Error, CustomStringConvertible {
    public var call: String
    public var code: Int32
    public var member: Int
    public var description: String {
        "\(call) failed for compute thread \(member): \(String(cString: strerror(code))) (error \(code))"
    }
}

/// A reusable barrier: spin, then sleep. `phase` counts completed rounds; a waiter is
/// released when it changes. The last arrival resets the count before it advances the
/// phase, so nobody can arrive for the next round before the count is zero.
final class TeamBarrier: @unchecked Sendable {
    let parties: Int
    let spinIterations: Int
    private let arrived = Atomic<Int>(0)
    private let phase = Atomic<Int>(0)
    private let aborted = Atomic<Bool>(false)
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    init(parties: Int, spinIterations: Int) {
        self.parties = parties
        self.spinIterations = spinIterations
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        pthread_cond_destroy(condition)
        mutex.deallocate()
        condition.deallocate()
    }

    func wait() { try! wait(abortable: false) }

    func wait(abortable: Bool) throws {
        let current = phase.load(ordering: .acquiring)
        if abortable && aborted.load(ordering: .acquiring) { throw ThreadTeam.Aborted() }
        if arrived.add(1, ordering: .acquiringAndReleasing).newValue == parties {
            arrived.store(0, ordering: .relaxed)
            pthread_mutex_lock(mutex)
            phase.add(1, ordering: .releasing)
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
            return
        }
        func released() -> Bool {
            phase.load(ordering: .acquiring) != current || (abortable && aborted.load(ordering: .acquiring))
        }
        var spins = 0
        while !released() && spins < spinIterations { spins += 1 }
        if !released() {
            pthread_mutex_lock(mutex)
            while !released() { pthread_cond_wait(condition, mutex) }
            pthread_mutex_unlock(mutex)
        }
        if phase.load(ordering: .acquiring) == current { throw ThreadTeam.Aborted() }
    }

    /// Releases every waiter of an abortable wait, now and until `reset`.
    func abort() {
        pthread_mutex_lock(mutex)
        aborted.store(true, ordering: .releasing)
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }

    /// `count` arrivals that do not wait (for parties that will never come); the round ends
    /// when the others arrive, or here if they already have.
    func arrive(count: Int) {
        if arrived.add(count, ordering: .acquiringAndReleasing).newValue == parties {
            arrived.store(0, ordering: .relaxed)
            pthread_mutex_lock(mutex)
            phase.add(1, ordering: .releasing)
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
        }
    }

    /// After an aborted job, when no member is waiting: ready for the next one.
    func reset() {
        arrived.store(0, ordering: .relaxed)
        aborted.store(false, ordering: .releasing)
    }
}
