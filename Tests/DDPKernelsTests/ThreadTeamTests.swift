import DDPKernels
import Foundation
import XCTest

/// Slots that team members write without locks: each member writes only its own slot
/// between barriers, which is what the team's barrier must make safe.
final class Slots: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Int>
    let count: Int
    init(_ count: Int) {
        self.count = count
        pointer = .allocate(capacity: count)
        pointer.initialize(repeating: 0, count: count)
    }
    deinit { pointer.deallocate() }
    subscript(i: Int) -> Int {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }
}

struct MemberFailure: Error, Equatable { var member: Int }

final class ThreadTeamTests: XCTestCase {
    func testEveryMemberRunsEachJobOnceAndMemberZeroIsTheCaller() throws {
        let team = try ThreadTeam(size: 3)
        let runs = Slots(3)
        let caller = pthread_self()
        let onCaller = Slots(1)
        for _ in 0..<200 {
            try team.run { member in
                runs[member] += 1
                if member == 0 && pthread_equal(pthread_self(), caller) != 0 { onCaller[0] += 1 }
            }
        }
        XCTAssertEqual((0..<3).map { runs[$0] }, [200, 200, 200])
        XCTAssertEqual(onCaller[0], 200)
    }

    /// Each round every member writes its slot, meets the others, and reads all slots: a
    /// barrier that let a member through early would read a value of the round before.
    func testBarrierMakesEveryWriteVisible() throws {
        for spin in [1 << 14, 0] {  // 0: every wait sleeps on the condition variable
            let team = try ThreadTeam(size: 3, spinIterations: spin)
            let slots = Slots(3), seen = Slots(3)
            for round in 1...2000 {
                try team.run { member in
                    slots[member] = round * 10 + member
                    try team.barrier()
                    seen[member] = slots[0] + slots[1] + slots[2]
                    try team.barrier()
                }
                for member in 0..<3 { XCTAssertEqual(seen[member], 30 * round + 3, "round \(round), member \(member), spin \(spin)") }
                if (0..<3).contains(where: { seen[$0] != 30 * round + 3 }) { return }
            }
        }
    }

    /// A member that fails must not leave the others waiting at a barrier: the job ends,
    /// `run` rethrows the member's own error, and the team works for the next job.
    func testFailureReleasesTheOthersAndIsRethrown() throws {
        let team = try ThreadTeam(size: 3, spinIterations: 0)
        let released = Slots(3)
        let start = Date()
        XCTAssertThrowsError(try team.run { member in
            if member == 1 { throw MemberFailure(member: 1) }
            do { try team.barrier() } catch is ThreadTeam.Aborted { released[member] = 1; throw ThreadTeam.Aborted() }
        }) { error in
            XCTAssertEqual(error as? MemberFailure, MemberFailure(member: 1))
        }
        XCTAssertEqual([released[0], released[2]], [1, 1])
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)

        let values = Slots(3), sums = Slots(3)
        try team.run { member in
            values[member] = member + 1
            try team.barrier()
            sums[member] = values[0] + values[1] + values[2]
        }
        XCTAssertEqual((0..<3).map { sums[$0] }, [6, 6, 6])
    }

    func testPartsCoverTheRangeAndDifferByAtMostOne() throws {
        for size in 1...5 {
            let team = try ThreadTeam(size: size)
            for count in [0, 1, 2, 3, 4, 7, 64, 65, 421_642] {
                let parts = (0..<size).map { team.part($0, of: count) }
                XCTAssertEqual(parts.first?.lowerBound, 0)
                XCTAssertEqual(parts.last?.upperBound, count)
                for i in 1..<size { XCTAssertEqual(parts[i].lowerBound, parts[i - 1].upperBound) }
                let lengths = parts.map(\.count)
                XCTAssertLessThanOrEqual(lengths.max()! - lengths.min()!, 1, "size \(size), count \(count)")
                XCTAssertEqual(lengths, lengths.sorted(by: >), "longer parts first")
            }
        }
    }

    func testTeamOfOneRunsOnTheCaller() throws {
        let team = try ThreadTeam(size: 1)
        let runs = Slots(1)
        try team.run { member in
            XCTAssertEqual(member, 0)
            try team.barrier()
            runs[0] += 1
        }
        XCTAssertEqual(runs[0], 1)
        XCTAssertThrowsError(try team.run { _ in throw MemberFailure(member: 0) })
    }
}
