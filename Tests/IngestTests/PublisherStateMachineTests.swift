import NIOCore
import Testing

@testable import Ingest

/// The publisher's decisions on a fake clock: every transition, no thread, no Redis.
struct PublisherStateMachineTests {
    typealias Machine = PublisherStateMachine
    static let settings = Machine.Settings(
        reconnectBase: .milliseconds(100),
        reconnectMax: .seconds(5),
        healthCheck: .seconds(1),
        durabilityCheck: .seconds(60)
    )
    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    static func at(_ ms: Int64) -> NIODeadline { t0 + .milliseconds(ms) }
    static let work = Machine.Work(retrying: false, queued: true, earliestDeadline: at(20_000))

    static func connected() -> Machine {
        var m = Machine(settings: settings, now: t0)
        #expect(m.next(now: t0, work: .none) == .connect)
        m.connected(at: t0)
        return m
    }

    @Test func testFailedConnectsFollowTheScheduleAndTheDelayIsKept() {
        var m = Machine(settings: Self.settings, now: Self.t0)
        #expect(m.next(now: Self.t0, work: .none) == .connect, "the first attempt is at once")
        var now = Self.t0
        var delays: [Int64] = []
        for _ in 0..<8 {
            let delay = m.connectFailed(at: now, jitter: 1.0)
            delays.append(delay.nanoseconds / 1_000_000)
            #expect(m.next(now: now + delay - .milliseconds(1), work: .none) == .wait(until: now + delay, wakeOnWork: true))
            now = now + delay
            #expect(m.next(now: now, work: .none) == .connect)
        }
        #expect(delays == [100, 200, 400, 800, 1600, 3200, 5000, 5000])
        var half = Machine(settings: Self.settings, now: Self.t0)
        #expect(half.connectFailed(at: Self.t0, jitter: 0.5) == .milliseconds(50), "jitter takes up to half off")
    }

    /// What the bounded-memory issue found: 200 devices' packets cut the backoff short (157 attempts in
    /// a second). Work waits for the next attempt, waking only to expire a job.
    @Test func testWorkNeverShortensTheWaitForAReconnect() {
        var m = Machine(settings: Self.settings, now: Self.t0)
        _ = m.connectFailed(at: Self.t0, jitter: 1.0)
        _ = m.connectFailed(at: Self.at(100), jitter: 1.0)  // next attempt at 300 ms
        #expect(m.next(now: Self.at(150), work: Self.work) == .wait(until: Self.at(300), wakeOnWork: false))
        let soon = Machine.Work(retrying: true, queued: true, earliestDeadline: Self.at(200))
        #expect(m.next(now: Self.at(150), work: soon) == .wait(until: Self.at(200), wakeOnWork: false), "wakes to expire a job")
        #expect(m.next(now: Self.at(300), work: Self.work) == .connect)
    }

    @Test func testConnectedItSendsWorkAndChecksWhenIdle() {
        var m = Self.connected()
        #expect(m.next(now: Self.at(10), work: Self.work) == .send)
        m.batchAnswered(at: Self.at(10), refused: false, jitter: 1.0)
        #expect(m.next(now: Self.at(20), work: .none) == .wait(until: Self.at(1010), wakeOnWork: true), "idle: PING after 1 s")
        #expect(m.next(now: Self.at(1010), work: .none) == .ping)
        m.pinged(at: Self.at(1011))
        #expect(m.next(now: Self.at(1012), work: .none) == .wait(until: Self.at(2011), wakeOnWork: true))
        #expect(m.next(now: Self.at(60_000), work: Self.work) == .checkDurability, "settings are read again every 60 s, first")
        m.durabilityChecked(at: Self.at(60_000))
        #expect(m.next(now: Self.at(60_001), work: Self.work) == .send)
    }

    @Test func testRefusedBatchesPauseTheRetryButNotNewWork() {
        var m = Self.connected()
        let retryOnly = Machine.Work(retrying: true, queued: false, earliestDeadline: Self.at(20_000))
        m.batchAnswered(at: Self.at(0), refused: true, jitter: 1.0)
        #expect(m.next(now: Self.at(50), work: retryOnly) == .wait(until: Self.at(100), wakeOnWork: true))
        #expect(m.next(now: Self.at(50), work: Machine.Work(retrying: true, queued: true, earliestDeadline: nil)) == .send)
        #expect(m.next(now: Self.at(100), work: retryOnly) == .send)
        m.batchAnswered(at: Self.at(100), refused: true, jitter: 1.0)
        #expect(m.next(now: Self.at(150), work: retryOnly) == .wait(until: Self.at(300), wakeOnWork: true), "the pause doubles")
        m.batchAnswered(at: Self.at(300), refused: false, jitter: 1.0)
        #expect(m.link == .up(refusals: 0, pauseUntil: Self.at(300)))
        #expect(m.next(now: Self.at(300), work: retryOnly) == .send)
    }

    @Test func testALostConnectionBacksOffOnceAndAFailedCheckReconnectsAtOnce() {
        var lost = Self.connected()
        #expect(lost.connectionLost(at: Self.at(10), jitter: 1.0) == .milliseconds(100))
        #expect(lost.next(now: Self.at(50), work: Self.work) == .wait(until: Self.at(110), wakeOnWork: false))
        #expect(lost.next(now: Self.at(110), work: Self.work) == .connect)

        // Dropped for READONLY the third time running: the wait grows as for failed connects.
        var demoted = Self.connected()
        #expect(demoted.connectionLost(at: Self.at(10), jitter: 1.0, inARow: 3) == .milliseconds(400))
        #expect(demoted.next(now: Self.at(409), work: Self.work) == .wait(until: Self.at(410), wakeOnWork: false))

        var checked = Self.connected()
        checked.droppedBetweenBatches(at: Self.at(1000))
        #expect(checked.next(now: Self.at(1000), work: .none) == .connect)
    }

    @Test func testStopFinishesTheWorkThenEndsAndAbandonsAtTheDeadline() {
        var m = Self.connected()
        m.stop(deadline: Self.at(500))
        m.stop(deadline: Self.at(9000))
        #expect(m.stopDeadline == Self.at(500), "the first deadline stands")
        #expect(m.next(now: Self.at(10), work: Self.work) == .send, "work still goes out while stopping")
        #expect(m.next(now: Self.at(10), work: .none) == .finish)
        #expect(m.next(now: Self.at(500), work: Self.work) == .abandon)

        var down = Machine(settings: Self.settings, now: Self.t0)
        _ = down.connectFailed(at: Self.t0, jitter: 1.0)
        _ = down.connectFailed(at: Self.at(100), jitter: 1.0)
        _ = down.connectFailed(at: Self.at(300), jitter: 1.0)  // next attempt at 700 ms
        down.stop(deadline: Self.at(400))
        #expect(down.next(now: Self.at(350), work: Self.work) == .wait(until: Self.at(400), wakeOnWork: false), "no wait past the deadline")
        #expect(down.next(now: Self.at(400), work: Self.work) == .abandon)
    }
}
