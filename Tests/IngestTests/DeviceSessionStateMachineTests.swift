import Codec8
import NIOCore
import Testing

@testable import Ingest

/// Every transition of a device session, without a channel: the packet in flight is a `String`.
struct DeviceSessionStateMachineTests {
    typealias Session = DeviceSessionStateMachine<String>
    static let imei = IMEI("356307042441013")!

    /// A session that has logged in.
    static func loggedIn() -> Session {
        var session = Session()
        #expect(session.loginReceived(.success(imei)) == .accept(imei))
        return session
    }

    /// A session with `records` records in flight, as packet "p1".
    static func publishing(records: Int = 3) -> Session {
        var session = loggedIn()
        #expect(session.packetDecoded(records: records) { "p1" } == .publish)
        return session
    }

    @Test func testLoginThenPacketsThenTheACKThenReadingAgain() {
        var session = Session()
        #expect(session.framerMode == .login)
        #expect(session.imei == nil)
        #expect(session.loginReceived(.success(Self.imei)) == .accept(Self.imei))
        #expect(session.framerMode == .packets)
        #expect(session.imei == Self.imei)

        #expect(session.packetDecoded(records: 3) { "p1" } == .publish)
        #expect(session.inFlight == "p1")
        #expect(session.framerMode == nil, "no frame is handled while a packet is in flight")
        #expect(session.published(.stored) == .acknowledge(records: 3, then: .read))
        #expect(session.inFlight == nil)
        #expect(session.framerMode == .packets)

        #expect(session.packetDecoded(records: 1) { "p2" } == .publish)
        #expect(session.published(.stored) == .acknowledge(records: 1, then: .read))
    }

    /// One read ahead only while a frame is in flight with nothing buffered; never before login is
    /// handled, once ready (the framer mode decides), while draining, or once closed.
    @Test func testReadAheadOnlyWhileInFlightWithNothingBuffered() {
        #expect(!Session().mayReadAhead(buffered: 0))
        #expect(!Self.loggedIn().mayReadAhead(buffered: 0))
        var session = Self.publishing()
        #expect(session.mayReadAhead(buffered: 0))
        #expect(!session.mayReadAhead(buffered: 1), "bytes already wait behind the packet")
        var message = Self.loggedIn()
        #expect(message.messageDecoded(nowNanoseconds: 0) { "m1" } == .publish)
        #expect(message.mayReadAhead(buffered: 0))
        #expect(session.drain() == .finishInFlight)
        #expect(!session.mayReadAhead(buffered: 0), "draining: nothing more is read")
        var closed = Self.publishing()
        _ = closed.connectionClosed()
        #expect(!closed.mayReadAhead(buffered: 0))
    }

    @Test func testAPacketWithoutRecordsIsACKedAtOnce() {
        var session = Self.loggedIn()
        var made = false
        #expect(
            session.packetDecoded(records: 0) {
                made = true
                return "p0"
            } == .acknowledge(records: 0)
        )
        #expect(!made, "nothing is published for an empty packet")
        #expect(session.inFlight == nil)
        #expect(session.framerMode == .packets)
    }

    /// Impossible transitions are programming errors: the process stops (the crash handler reports it)
    /// rather than carrying on in a state nobody designed.
    @Test func testImpossibleTransitionsStopTheProcess() async {
        await #expect(processExitsWith: .failure, "a packet before the login") {
            var fresh = DeviceSessionStateMachine<String>()
            _ = fresh.packetDecoded(records: 2) { "p" }
        }
        await #expect(processExitsWith: .failure, "a packet while one is in flight") {
            var busy = DeviceSessionStateMachineTests.publishing()
            _ = busy.packetDecoded(records: 2) { "p2" }
        }
        await #expect(processExitsWith: .failure, "a second login") {
            var session = DeviceSessionStateMachineTests.loggedIn()
            _ = session.loginReceived(.success(IMEI("356307042441014")!))
        }
        await #expect(processExitsWith: .failure, "a packet while a message is in flight") {
            var session = DeviceSessionStateMachineTests.loggedIn()
            _ = session.messageDecoded(nowNanoseconds: 0) { "m1" }
            _ = session.packetDecoded(records: 1) { "p" }
        }
        await #expect(processExitsWith: .failure, "an answer with nothing in flight") {
            var session = DeviceSessionStateMachineTests.loggedIn()
            _ = session.published(.stored)
        }
    }

    /// A full queue: the packet waits in 10 ms steps from the first refusal until `OVERFLOW_WAIT_MS`,
    /// then the session gives up (no ACK, close); the next packet starts its own wait.
    @Test func testAFullQueueIsRetriedUntilTheOverflowWaitThenGivenUp() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var session = Session(overflowWait: .milliseconds(25))
        #expect(session.loginReceived(.success(Self.imei)) == .accept(Self.imei))
        #expect(session.packetDecoded(records: 3) { "p1" } == .publish)
        #expect(session.packetNotQueued(at: t0) == .retry(after: .milliseconds(10)))
        #expect(session.packetNotQueued(at: t0 + .milliseconds(10)) == .retry(after: .milliseconds(10)))
        #expect(session.packetNotQueued(at: t0 + .milliseconds(20)) == .retry(after: .milliseconds(5)), "not past the wait")
        #expect(session.packetNotQueued(at: t0 + .milliseconds(26)) == .giveUp(waited: .milliseconds(26)))

        var next = Session(overflowWait: .milliseconds(25))
        #expect(next.loginReceived(.success(Self.imei)) == .accept(Self.imei))
        #expect(next.packetDecoded(records: 1) { "p1" } == .publish)
        #expect(next.packetNotQueued(at: t0) == .retry(after: .milliseconds(10)))
        #expect(next.published(.stored) == .acknowledge(records: 1, then: .read))
        #expect(next.packetDecoded(records: 1) { "p2" } == .publish)
        #expect(next.packetNotQueued(at: t0 + .milliseconds(100)) == .retry(after: .milliseconds(10)), "a new packet, a new wait")

        var none = Session(overflowWait: .zero)
        #expect(none.loginReceived(.success(Self.imei)) == .accept(Self.imei))
        #expect(none.packetDecoded(records: 1) { "p1" } == .publish)
        #expect(none.packetNotQueued(at: t0) == .giveUp(waited: .zero), "OVERFLOW_WAIT_MS=0: no wait")
    }

    @Test func testABadIMEIIsRefusedAndClosed() {
        var digits = Session()
        let bad = Codec8Error.badIMEI(.nonDigit(offset: 3, byte: 0x41))
        #expect(digits.loginReceived(.failure(bad)) == .refuse(result: .rejected, bad))
        #expect(digits.framerMode == nil)
        #expect(digits.connectionClosed().imei == nil, "never registered")

        var length = Session()
        let short = Codec8Error.badIMEI(.length(3))
        #expect(length.frameRejected(short) == .refuseLogin(result: .malformed, short))
        #expect(length.framerMode == nil)
    }

    @Test(arguments: [
        (Codec8Error.crcMismatch(received: 1, computed: 2), FrameResult.crcFail),
        (.tooLarge(declared: UInt32.max, limit: 1280), .tooLarge),
        (.unsupportedCodec(0x99), .unknownCodec),
        (.badPreamble(offset: 0, byte: 1), .malformed),
        (.recordCountMismatch(header: 1, trailer: 2), .malformed),
        (.lengthMismatch(declared: 10, actual: 9), .malformed),
        (.badIMEI(.length(3)), .malformed),
    ])
    func testABadFrameAfterLoginClosesWithoutACKAndStillUnregisters(error: Codec8Error, result: FrameResult) {
        var session = Self.loggedIn()
        #expect(session.frameRejected(error) == .close(result: result, error))
        #expect(session.framerMode == nil)
        let ended = session.connectionClosed()
        #expect(ended.imei == Self.imei, "the device's registration is removed even when the server closed it")
        #expect(ended.abandoned == nil)
        #expect(!ended.bufferedBytesAreTruncatedFrame, "the server closed it: left-over bytes are not a truncation")
    }

    @Test func testUnconfirmedOrDroppedPacketsCloseWithoutACK() {
        var expired = Self.publishing()
        #expect(expired.published(.expired(.timeout)) == .closeUnconfirmed(.timeout))
        let ended = expired.connectionClosed()
        #expect(ended.abandoned == "p1", "the packet is cancelled when the connection goes")
        #expect(ended.imei == Self.imei)

        var dropped = Self.publishing()
        #expect(dropped.published(.dropped) == .close)
    }

    @Test func testAnOutcomeAfterTheConnectionClosedIsIgnored() {
        var session = Self.publishing()
        let ended = session.connectionClosed()
        #expect(ended.abandoned == "p1")
        #expect(session.published(.stored) == .ignore, "no ACK on a closed connection")
        #expect(session.inFlight == nil)
    }

    @Test func testDrainFinishesThePacketInFlightAndReadsNothingMore() {
        var session = Self.publishing(records: 5)
        #expect(session.drain() == .finishInFlight)
        #expect(session.framerMode == nil)
        #expect(session.published(.stored) == .acknowledge(records: 5, then: .close))
        #expect(session.framerMode == nil, "still draining: nothing more is read")
        let ended = session.connectionClosed()
        #expect(ended.abandoned == nil)
        #expect(!ended.bufferedBytesAreTruncatedFrame, "bytes left unread by a drain are not a device's truncation")
    }

    @Test func testHandshakeTimeoutOnlyBeforeLoginAndNotWhileDraining() {
        var waiting = Session()
        #expect(waiting.handshakeTimedOut())
        #expect(waiting.drain() == .close, "nothing in flight: the session closes at once")
        #expect(!waiting.handshakeTimedOut())
        #expect(!Self.loggedIn().handshakeTimedOut())
    }

    @Test func testADeviceThatClosesMidFrameLeavesATruncation() {
        var session = Self.loggedIn()
        let ended = session.connectionClosed()
        #expect(ended.bufferedBytesAreTruncatedFrame)
        #expect(ended.imei == Self.imei)
        #expect(ended.abandoned == nil)
        var anonymous = Session()
        #expect(anonymous.connectionClosed().bufferedBytesAreTruncatedFrame)
    }
}

/// Device messages (Codec 12-15): one in flight like a packet, never ACKed, and rate-limited per connection.
struct DeviceSessionMessageTests {
    typealias Session = DeviceSessionStateMachine<String>
    static let second: UInt64 = 1_000_000_000

    static func loggedIn(perSecond: Int = 10, burst: Int = 50) -> Session {
        var session = Session(messageLimiter: MessageRateLimiter(perSecond: perSecond, burst: burst))
        #expect(session.loginReceived(.success(DeviceSessionStateMachineTests.imei)) == .accept(DeviceSessionStateMachineTests.imei))
        return session
    }

    @Test func testAMessageIsInFlightUntilRedisAnswersThenReadingResumes() {
        var session = Self.loggedIn()
        #expect(session.messageDecoded(nowNanoseconds: 0) { "m1" } == .publish)
        #expect(session.inFlight == "m1")
        #expect(!session.packetInFlight, "a message is not a packet: a drain does not wait for it")
        #expect(session.framerMode == nil, "nothing more is read while a message is in flight")
        #expect(session.published(.stored) == .messageStored(then: .read))
        #expect(session.framerMode == .packets)
        #expect(session.inFlight == nil)
    }

    @Test func testAnUnconfirmedMessageIsReportedAndReadingGoesOn() {
        var session = Self.loggedIn()
        #expect(session.messageDecoded(nowNanoseconds: 0) { "m1" } == .publish)
        #expect(session.published(.expired(.timeout)) == .messageNotStored(.timeout, then: .read))
        #expect(session.framerMode == .packets, "a message is never resent by the device: closing would not help")

        #expect(session.messageDecoded(nowNanoseconds: 1) { "m2" } == .publish)
        #expect(session.published(.dropped) == .close)
    }

    @Test func testAMessageTheQueueRefusedIsDroppedAndReadingGoesOn() {
        var session = Self.loggedIn()
        #expect(session.messageDecoded(nowNanoseconds: 0) { "m1" } == .publish)
        let resume = session.messageNotQueued()
        #expect(resume == .read)
        #expect(session.inFlight == nil)
        #expect(session.framerMode == .packets)

    }

    @Test func testMessagesOverTheBudgetAreDroppedWithoutBeingMade() {
        var session = Self.loggedIn(perSecond: 2, burst: 3)
        var made = 0
        func send(at t: UInt64) -> Session.MessageAction {
            let action = session.messageDecoded(nowNanoseconds: t) {
                made += 1
                return "m"
            }
            if action == .publish { #expect(session.published(.stored) == .messageStored(then: .read)) }
            return action
        }
        var burst: [Session.MessageAction] = []
        for _ in 0..<3 { burst.append(send(at: 0)) }
        #expect(burst == [.publish, .publish, .publish], "the burst")
        #expect(send(at: 0) == .rateLimited)
        #expect(send(at: Self.second / 4) == .rateLimited, "half a token after 250 ms")
        #expect(send(at: Self.second / 2) == .publish, "one token after 500 ms at 2/s")
        #expect(send(at: Self.second / 2) == .rateLimited)
        #expect(made == 4, "a dropped message is not encoded")
        #expect(session.framerMode == .packets, "a dropped message does not stop reading")
    }

    @Test func testFrequentEventsAreLoggedOncePer10SecondsPerKind() {
        var session = Self.loggedIn()
        #expect(session.admitLog(.message, nowNanoseconds: 0) == 0)
        #expect(session.admitLog(.message, nowNanoseconds: 1) == nil)
        #expect(session.admitLog(.messageRateLimited, nowNanoseconds: 2) == 0, "each kind has its own budget")
        #expect(session.admitLog(.message, nowNanoseconds: 9_999_999_999) == nil)
        #expect(session.admitLog(.message, nowNanoseconds: 10_000_000_000) == 2, "the held-back count")
    }

    @Test func testADrainedSessionReadsNothingAfterItsMessage() {
        var session = Self.loggedIn()
        #expect(session.messageDecoded(nowNanoseconds: 0) { "m1" } == .publish)
        #expect(session.drain() == .finishInFlight)
        #expect(session.published(.stored) == .messageStored(then: .close))
        #expect(session.framerMode == nil)
        let ended = session.connectionClosed()
        #expect(ended.abandoned == nil)
    }

    @Test func testAConnectionClosedWithAMessageInFlightAbandonsItAsNoPacket() {
        var session = Self.loggedIn()
        #expect(session.messageDecoded(nowNanoseconds: 0) { "m1" } == .publish)
        let ended = session.connectionClosed()
        #expect(ended.abandoned == "m1")
        #expect(!ended.abandonedPacket)
    }
}

struct RateLimitTests {
    @Test func testTheBucketRefillsAtItsRateUpToItsBurst() {
        var bucket = MessageRateLimiter(perSecond: 10, burst: 5)
        var first: [Bool] = []
        for _ in 0..<6 { first.append(bucket.admit(nowNanoseconds: 1_000)) }
        #expect(first == [true, true, true, true, true, false])
        // 10 s later the bucket is full again (5), not 100.
        let later: UInt64 = 10_000_001_000
        var second: [Bool] = []
        for _ in 0..<6 { second.append(bucket.admit(nowNanoseconds: later)) }
        #expect(second == [true, true, true, true, true, false])
        let refilled = bucket.admit(nowNanoseconds: later + 100_000_000)
        #expect(refilled, "one token per 100 ms")
        let again = bucket.admit(nowNanoseconds: later + 100_000_000)
        #expect(!again)
        let back = bucket.admit(nowNanoseconds: later)
        #expect(!back, "a clock that goes back earns nothing")
    }

    @Test func testOneLinePerIntervalAndTheHeldBackCount() {
        var log = LogLimiter(intervalNanoseconds: 1_000)
        #expect(log.admit(nowNanoseconds: 0) == 0)
        #expect(log.admit(nowNanoseconds: 10) == nil)
        #expect(log.admit(nowNanoseconds: 999) == nil)
        #expect(log.admit(nowNanoseconds: 1_000) == 2, "the next line says how many were held back")
        #expect(log.admit(nowNanoseconds: 1_500) == nil)
        #expect(log.admit(nowNanoseconds: 5_000) == 1)
    }

    @Test func testASamplerWritesItsBurstThenItsRateAndCountsTheRest() {
        var log = LogSampler(perSecond: 2, burst: 3)
        #expect((0..<3).map { _ in log.admit(nowNanoseconds: 0) } == [0, 0, 0], "the burst at once")
        #expect((0..<5).map { _ in log.admit(nowNanoseconds: 0) } == [nil, nil, nil, nil, nil])
        #expect(log.admit(nowNanoseconds: 499_000_000) == nil, "half a second earns the next line")
        #expect(log.admit(nowNanoseconds: 500_000_000) == 6, "which says how many were left out")
        #expect(log.admit(nowNanoseconds: 500_000_000) == nil)
        #expect(log.admit(nowNanoseconds: 2_000_000_000) == 1)
    }
}
