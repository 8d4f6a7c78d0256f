import DDPNet
import XCTest

final class ScheduleTests: XCTestCase {
    func testConstant() {
        XCTAssertEqual(LRSchedule.constant.learningRate(base: 0.1, step: 0), 0.1)
        XCTAssertEqual(LRSchedule.constant.learningRate(base: 0.1, step: 1_000_000), 0.1)
    }

    func testStepDecaysAtBoundaries() {
        let schedule = LRSchedule.step(every: 30, gamma: 0.1)
        XCTAssertEqual(schedule.learningRate(base: 1, step: 0), 1)
        XCTAssertEqual(schedule.learningRate(base: 1, step: 29), 1)
        XCTAssertEqual(schedule.learningRate(base: 1, step: 30), 0.1, accuracy: 1e-7)
        XCTAssertEqual(schedule.learningRate(base: 1, step: 59), 0.1, accuracy: 1e-7)
        XCTAssertEqual(schedule.learningRate(base: 1, step: 60), 0.01, accuracy: 1e-8)
    }

    func testCosineEndsAndMidpoint() {
        let schedule = LRSchedule.cosine(totalSteps: 100, minLR: 0.001)
        XCTAssertEqual(schedule.learningRate(base: 0.1, step: 0), 0.1)
        XCTAssertEqual(schedule.learningRate(base: 0.1, step: 50), (0.1 + 0.001) / 2, accuracy: 1e-7)
        // A quarter of the way: minLR + (base - minLR)(1 + cos(π/4)) / 2.
        let quarter: Double = 0.001 + 0.099 * (1 + 0.5.squareRoot()) / 2
        XCTAssertEqual(Double(schedule.learningRate(base: 0.1, step: 25)), quarter, accuracy: 1e-7)
        XCTAssertEqual(schedule.learningRate(base: 0.1, step: 100), 0.001, accuracy: 1e-9)
        XCTAssertEqual(schedule.learningRate(base: 0.1, step: 150), 0.001, accuracy: 1e-9)
        XCTAssertEqual(LRSchedule.cosine(totalSteps: 10).learningRate(base: 1, step: 10), 0)
    }

    func testWarmupRampsThenHandsOver() {
        let constant = LRSchedule.constant
        XCTAssertEqual(constant.learningRate(base: 0.5, step: 0, warmupSteps: 5), 0.1, accuracy: 1e-8)
        XCTAssertEqual(constant.learningRate(base: 0.5, step: 2, warmupSteps: 5), 0.3, accuracy: 1e-8)
        XCTAssertEqual(constant.learningRate(base: 0.5, step: 4, warmupSteps: 5), 0.5)
        XCTAssertEqual(constant.learningRate(base: 0.5, step: 5, warmupSteps: 5), 0.5)
        // Composition multiplies: warm-up over a step decay that already fired at step 2.
        let step = LRSchedule.step(every: 2, gamma: 0.5)
        XCTAssertEqual(step.learningRate(base: 1, step: 2, warmupSteps: 4), 0.5 * 3 / 4, accuracy: 1e-8)
        let cosine = LRSchedule.cosine(totalSteps: 100)
        XCTAssertEqual(cosine.learningRate(base: 1, step: 9, warmupSteps: 10), Float((1 + cos(Double.pi * 0.09)) / 2), accuracy: 1e-7)
        XCTAssertEqual(cosine.learningRate(base: 1, step: 0, warmupSteps: 10), Float((1 + 1.0) / 2 / 10), accuracy: 1e-8)
    }

    func testParsing() throws {
        XCTAssertEqual(try LRSchedule(parsing: "constant", totalSteps: 10), .constant)
        XCTAssertEqual(try LRSchedule(parsing: "step:30:0.1", totalSteps: 10), .step(every: 30, gamma: 0.1))
        XCTAssertEqual(try LRSchedule(parsing: "cosine", totalSteps: 500), .cosine(totalSteps: 500, minLR: 0))
        XCTAssertEqual(try LRSchedule(parsing: "cosine:1e-05", totalSteps: 500), .cosine(totalSteps: 500, minLR: 1e-5))
        for schedule in [LRSchedule.constant, .step(every: 7, gamma: 0.5), .cosine(totalSteps: 9), .cosine(totalSteps: 9, minLR: 0.01)] {
            XCTAssertEqual(try LRSchedule(parsing: schedule.description, totalSteps: 9), schedule)
        }
        let junk: [(String, Int, String)] = [
            ("linear", 10, "linear"), ("step:0:0.1", 10, "'0'"), ("step:x:0.1", 10, "'x'"), ("step:30", 10, "every and gamma"),
            ("step:30:-1", 10, "'-1'"), ("cosine", 0, "total steps"), ("cosine:abc", 10, "'abc'"), ("constant:1", 10, "no argument"),
        ]
        for (text, total, needle) in junk {
            XCTAssertThrowsError(try LRSchedule(parsing: text, totalSteps: total), text) { error in
                XCTAssertTrue("\(error)".contains(needle), "\(error)")
            }
        }
    }
}
