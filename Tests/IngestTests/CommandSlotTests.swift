import Codec8
import NIOCore
import Testing

@testable import Ingest

/// Every transition of a session's downlink command slot, on a fake clock (`t(ms)`).
struct CommandSlotTests {
    static let command = TakenCommand(id: "c1", codec: .codec12, payload: Array("getinfo".utf8), attempt: 1)
    static let imei = IMEI("356307042441013")!

    static func t(_ ms: Int64) -> NIODeadline { .uptimeNanoseconds(UInt64(1_000_000_000 + ms * 1_000_000)) }

    /// A slot past its login grace, with `command` taken and held.
    static func holding() -> CommandSlot {
        var slot = CommandSlot(timeout: .milliseconds(1000), lateGrace: .milliseconds(500))
        slot.loginGraceEnded()
        #expect(slot.opportunity(sessionIdle: true, now: t(0)) == .take)
        #expect(slot.takeAnswered(.command(command)) == CommandSlot.TakeAction.none)
        return slot
    }

    /// A slot with `command` written at t(0).
    static func sent() -> CommandSlot {
        var slot = holding()
        #expect(slot.opportunity(sessionIdle: true, now: t(0)) == .write(command))
        return slot
    }

    @Test func testNothingIsTakenBeforeTheLoginGraceEnds() {
        var slot = CommandSlot(timeout: .seconds(1), lateGrace: .zero)
        slot.wake()
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(0)) == .none)
        slot.loginGraceEnded()
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(0)) == .take)
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(0)) == .none, "one take at a time")
    }

    @Test func testATakenCommandWaitsForAnIdleSession() {
        var slot = Self.holding()
        #expect(slot.opportunity(sessionIdle: false, now: Self.t(0)) == .none, "a packet in flight or bytes buffered: not written")
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(5)) == .write(Self.command))
        #expect(slot.state == .sent(Self.command, at: Self.t(5)))
        #expect(slot.deadline == Self.t(1005))
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(6)) == .none, "one command in flight")
    }

    @Test func testAnAnswerEndsTheCommandWithItsLatencyThenTheNextIsLookedFor() {
        var slot = Self.sent()
        #expect(
            slot.answerReceived(.response, now: Self.t(120))
                == CommandSlot.Correlation(command: Self.command, outcome: .answered, latency: .milliseconds(120))
        )
        #expect(slot.state == .idle(mayHavePending: true))
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(121)) == .take)
        #expect(slot.answerReceived(.response, now: Self.t(130)) == nil, "a second answer is uncorrelated")
    }

    @Test func testANotAcknowledgedAnswerIsANack() {
        var slot = Self.sent()
        #expect(slot.answerReceived(.notAcknowledged, now: Self.t(10))?.outcome == .nack)
    }

    @Test func testNoAnswerInTimeIsATimeoutThenLateWithinTheGraceWindowAndNothingIsSentMeanwhile() {
        var slot = Self.sent()
        #expect(slot.timerFired(now: Self.t(999)) == .none, "before the deadline")
        #expect(slot.timerFired(now: Self.t(1000)) == .timedOut(Self.command, holdLeaseFor: .milliseconds(500)))
        slot.wake()
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(1100)) == .none, "nothing is sent in the grace window")
        #expect(
            slot.answerReceived(.response, now: Self.t(1200))
                == CommandSlot.Correlation(command: Self.command, outcome: .late, latency: .milliseconds(1200))
        )
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(1201)) == .take)
    }

    @Test func testTheGraceWindowEndsWithTheLeaseReleasedAndNoResend() {
        var slot = Self.sent()
        _ = slot.timerFired(now: Self.t(1000))
        #expect(slot.deadline == Self.t(1500))
        #expect(slot.timerFired(now: Self.t(1500)) == .graceOver(Self.command))
        #expect(slot.answerReceived(.response, now: Self.t(1600)) == nil, "after the grace window: uncorrelated")
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(1601)) == .take, "the next take, never a write of the old one")
    }

    @Test func testAnEmptyQueueStopsLookingUntilAWakeUp() {
        var slot = CommandSlot(timeout: .seconds(1), lateGrace: .zero)
        slot.loginGraceEnded()
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(0)) == .take)
        #expect(slot.takeAnswered(.empty) == CommandSlot.TakeAction.none)
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(1)) == .none, "no take after each ACK when nothing is queued")
        slot.wake()
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(2)) == .take)
    }

    @Test func testABusyLeaseOrAFailedTakeIsRetriedLater() {
        var slot = CommandSlot(timeout: .seconds(1), lateGrace: .zero)
        slot.loginGraceEnded()
        _ = slot.opportunity(sessionIdle: true, now: Self.t(0))
        #expect(slot.takeAnswered(.busy(retryAfterMs: 700)) == .retry(after: .milliseconds(700)))
        slot.wake()
        _ = slot.opportunity(sessionIdle: true, now: Self.t(0))
        #expect(slot.takeAnswered(.failed) == .retry(after: .seconds(5)))
    }

    @Test func testClosingGivesBackATakenCommandAndMakesASentOneUnknown() {
        var held = Self.holding()
        #expect(held.connectionClosed() == .giveBack(Self.command))
        var sent = Self.sent()
        #expect(sent.connectionClosed() == .unknown(Self.command))
        var grace = Self.sent()
        _ = grace.timerFired(now: Self.t(1000))
        #expect(grace.connectionClosed() == .release(Self.command))
        var idle = CommandSlot(timeout: .seconds(1), lateGrace: .zero)
        #expect(idle.connectionClosed() == CommandSlot.CloseAction.none)
    }

    @Test func testATakeAnsweredAfterTheCloseIsGivenBack() {
        var slot = CommandSlot(timeout: .seconds(1), lateGrace: .zero)
        slot.loginGraceEnded()
        _ = slot.opportunity(sessionIdle: true, now: Self.t(0))
        #expect(slot.connectionClosed() == CommandSlot.CloseAction.none)
        #expect(slot.takeAnswered(.command(Self.command)) == .giveBack(Self.command))
        #expect(slot.opportunity(sessionIdle: true, now: Self.t(1)) == .none)
    }

    @Test func testResponsesAreAttributedOnlyWhenTheyCanAnswer() {
        let r12 = DeviceMessage(codec: .codec12, type: DeviceMessage.typeResponse, payload: [0x41])
        let r14 = DeviceMessage(codec: .codec14, type: DeviceMessage.typeResponse, imei: Self.imei.description, payload: [0x41])
        let other14 = DeviceMessage(codec: .codec14, type: DeviceMessage.typeResponse, imei: "356307042441014", payload: [0x41])
        let nack14 = DeviceMessage(codec: .codec14, type: DeviceMessage.typeNotAcknowledged, imei: Self.imei.description, payload: [])
        let data13 = DeviceMessage(codec: .codec13, type: 0x06, timestampSeconds: 1, payload: [0x41])
        #expect(CommandDelivery.answer(r12, from: Self.imei) == .response)
        #expect(CommandDelivery.answer(r14, from: Self.imei) == .response)
        #expect(CommandDelivery.answer(other14, from: Self.imei) == nil, "another IMEI's Codec 14 answer")
        #expect(CommandDelivery.answer(nack14, from: Self.imei) == .notAcknowledged)
        #expect(CommandDelivery.answer(data13, from: Self.imei) == nil)
        #expect(!CommandDelivery.isResponse(data13))
    }

    @Test func testAStoredCommandIsSentOnlyWhenItsCodecAndPayloadAreSendable() {
        #expect(RedisCommandStore.command(id: "a", codec: "12", payloadHex: "676574696e666f", attempt: 1)?.payload == Array("getinfo".utf8))
        #expect(RedisCommandStore.command(id: "a", codec: "14", payloadHex: "00", attempt: 1)?.codec == .codec14)
        #expect(RedisCommandStore.command(id: "a", codec: "13", payloadHex: "00", attempt: 1) == nil)
        #expect(RedisCommandStore.command(id: "a", codec: "12", payloadHex: "zz", attempt: 1) == nil)
        #expect(RedisCommandStore.command(id: "a", codec: "12", payloadHex: "", attempt: 1) == nil)
        let over = String(repeating: "41", count: CommandKeys.maxPayloadBytes + 1)
        #expect(RedisCommandStore.command(id: "a", codec: "12", payloadHex: over, attempt: 1) == nil)
    }

    @Test func testTheFrameOfACodec14CommandCarriesTheSessionsIMEI() {
        let command = TakenCommand(id: "c", codec: .codec14, payload: Array("getver".utf8), attempt: 1)
        #expect(command.frame(for: Self.imei) == DeviceMessage.codec14Command("getver", imei: Self.imei))
        #expect(Self.command.frame(for: Self.imei) == DeviceMessage.codec12Command("getinfo"))
    }
}

/// A session's last-seen writes: at most one per interval, carrying the last ACKed packet's time.
struct RegisteredSessionTests {
    static func t(_ ms: Int64) -> NIODeadline { .uptimeNanoseconds(UInt64(1_000_000_000 + ms * 1_000_000)) }

    @Test func testAtMostOneWritePerIntervalWithTheLastRecordTime() {
        var session = RegisteredSession(imei: IMEI("356307042441013")!, session: "a/1#1", at: Self.t(0))
        let interval = TimeAmount.milliseconds(1000)
        #expect(session.seen(at: Self.t(10), wallMs: 10, record: true, interval: interval) == nil, "the login wrote just now")
        #expect(session.seen(at: Self.t(999), wallMs: 999, record: false, interval: interval) == nil)
        #expect(session.seen(at: Self.t(1000), wallMs: 1000, record: false, interval: interval) == .init(recordAt: 10))
        #expect(session.seen(at: Self.t(1500), wallMs: 1500, record: true, interval: interval) == nil)
        #expect(session.seen(at: Self.t(1800), wallMs: 1800, record: true, interval: interval) == nil)
        #expect(session.seen(at: Self.t(2000), wallMs: 2000, record: false, interval: interval) == .init(recordAt: 1800))
        #expect(session.seen(at: Self.t(3000), wallMs: 3000, record: false, interval: interval) == .init(recordAt: nil), "no packet since")
    }
}
