import Codec8
import FixtureSupport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Prometheus
import Testing

@testable import Ingest

/// The retransmit window on a fake clock: every state a resend can meet, and the bounds.
struct UDPRetransmitWindowTests {
    typealias Window = UDPRetransmitWindow<String>
    static let imei = IMEI("352093086403655")!
    static let second: UInt64 = 1_000_000_000

    static func ticket(_ decision: Window.Decision) -> Window.Ticket? {
        if case .publish(let ticket) = decision { return ticket }
        return nil
    }

    @Test func testResendOfAStoredPacketIsAcknowledgedAgainNotPublished() throws {
        var window = Window(capacity: 10, ttlNanoseconds: 60 * Self.second)
        let first = try #require(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 5, payloadHash: 42, reply: "a", now: 0)))
        #expect(window.stored(first, records: 3, now: Self.second) == "a")
        guard
            case .acknowledgeAgain(let records) = window.admit(
                imei: Self.imei,
                avlPacketID: 5,
                payloadHash: 42,
                reply: "b",
                now: 2 * Self.second
            )
        else {
            Issue.record("a resend of a stored packet was not acknowledged again")
            return
        }
        #expect(records == 3)
        #expect(window.count == 1)
    }

    @Test func testResendWhileWaitingJoinsAndTheACKGoesToTheLatestCopy() throws {
        var window = Window(capacity: 10, ttlNanoseconds: 60 * Self.second)
        let first = try #require(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 5, payloadHash: 42, reply: "a", now: 0)))
        guard case .joinPending = window.admit(imei: Self.imei, avlPacketID: 5, payloadHash: 42, reply: "b", now: 1) else {
            Issue.record("a resend while the first copy waits was not joined")
            return
        }
        #expect(window.stored(first, records: 1, now: 2) == "b")
    }

    @Test func testAFailedPacketIsPublishedAgainWhenResent() throws {
        var window = Window(capacity: 10, ttlNanoseconds: 60 * Self.second)
        let first = try #require(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 5, payloadHash: 42, reply: "a", now: 0)))
        window.failed(first)
        #expect(window.count == 0)
        let again = try #require(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 5, payloadHash: 42, reply: "a", now: 1)))
        #expect(again != first)
        // The first copy's late outcome no longer speaks for the key.
        #expect(window.stored(first, records: 1, now: 2) == nil)
        #expect(window.stored(again, records: 1, now: 2) == "a")
    }

    @Test func testSameIDWithOtherRecordsIsANewPacket() throws {
        var window = Window(capacity: 10, ttlNanoseconds: 60 * Self.second)
        let first = try #require(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 5, payloadHash: 42, reply: "a", now: 0)))
        _ = window.stored(first, records: 1, now: 1)
        #expect(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 5, payloadHash: 43, reply: "a", now: 2)) != nil)
        // Another device with the same AVL packet ID and records is another packet too.
        let other = IMEI("352093086403656")!
        #expect(Self.ticket(window.admit(imei: other, avlPacketID: 5, payloadHash: 42, reply: "c", now: 3)) != nil)
        #expect(window.count == 2)
    }

    @Test func testStoredPacketsAreForgottenAfterTheTTLButPendingOnesStay() throws {
        var window = Window(capacity: 10, ttlNanoseconds: 10 * Self.second)
        let stored = try #require(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 1, payloadHash: 1, reply: "a", now: 0)))
        _ = window.stored(stored, records: 1, now: 0)
        let pending = try #require(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 2, payloadHash: 2, reply: "a", now: 0)))
        // Just before the TTL: still known.
        if case .acknowledgeAgain = window.admit(imei: Self.imei, avlPacketID: 1, payloadHash: 1, reply: "a", now: 10 * Self.second - 1) {
        } else {
            Issue.record("forgotten before its TTL")
        }
        // At the TTL the stored one is forgotten (published again); the pending one is still joined.
        #expect(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 1, payloadHash: 1, reply: "a", now: 10 * Self.second)) != nil)
        guard case .joinPending = window.admit(imei: Self.imei, avlPacketID: 2, payloadHash: 2, reply: "b", now: 11 * Self.second) else {
            Issue.record("a pending packet expired")
            return
        }
        #expect(window.stored(pending, records: 1, now: 12 * Self.second) == "b")
    }

    @Test func testCapacityForgetsTheOldestFirst() throws {
        var window = Window(capacity: 3, ttlNanoseconds: 60 * Self.second)
        for id in 0..<5 {
            let ticket = try #require(
                Self.ticket(window.admit(imei: Self.imei, avlPacketID: UInt8(id), payloadHash: id, reply: "a", now: 0))
            )
            _ = window.stored(ticket, records: 1, now: 0)
        }
        #expect(window.count == 3)
        // 0 and 1 were forgotten (published again when resent); 2, 3 and 4 are remembered.
        for id in 2..<5 {
            if case .acknowledgeAgain = window.admit(imei: Self.imei, avlPacketID: UInt8(id), payloadHash: id, reply: "a", now: 1) {
            } else {
                Issue.record("packet \(id) forgotten")
            }
        }
        #expect(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 0, payloadHash: 0, reply: "a", now: 1)) != nil)
        #expect(window.count == 3)
    }

    /// A hostile sender replacing one key over and over leaves no unbounded bookkeeping behind.
    @Test func testReplacingOneKeyKeepsTheBookkeepingBounded() throws {
        var window = Window(capacity: 100, ttlNanoseconds: 3600 * Self.second)
        for hash in 0..<100_000 {
            let ticket = try #require(Self.ticket(window.admit(imei: Self.imei, avlPacketID: 9, payloadHash: hash, reply: "a", now: 0)))
            _ = window.stored(ticket, records: 1, now: 0)
        }
        #expect(window.count == 1)
        #expect(window.bookkeeping <= 2 * window.count + 1024 + 2)
    }
}

/// The UDP handler on an embedded channel with a fake publish queue: ACK only after Redis, resends,
/// a full queue, Redis failing, malformed datagrams and the drain.
@Suite(.serialized)
struct UDPDatagramHandlerTests {
    struct Harness {
        let channel: EmbeddedChannel
        let sink = FakePublishSink()
        let metrics = IngestMetrics()
        static let device = try! SocketAddress(ipAddress: "10.0.0.7", port: 40_000)

        init() throws {
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let environment = SessionEnvironment(configuration: IngestConfiguration(), publisher: sink, logger: logger, metrics: metrics)
            channel = EmbeddedChannel()
            try channel.pipeline.syncOperations.addHandler(UDPDatagramHandler(environment: environment))
        }

        func send(_ bytes: [UInt8], from address: SocketAddress = Harness.device) throws {
            try channel.writeInbound(AddressedEnvelope(remoteAddress: address, data: ByteBuffer(bytes: bytes)))
            channel.embeddedEventLoop.run()
        }

        func answer(_ outcome: PublishOutcome = .stored) {
            while sink.answerAll(outcome) > 0 { channel.embeddedEventLoop.run() }
        }

        /// Every ACK written, with where it went.
        func acks() throws -> [(SocketAddress, [UInt8])] {
            var out: [(SocketAddress, [UInt8])] = []
            while let envelope = try channel.readOutbound(as: AddressedEnvelope<ByteBuffer>.self) {
                out.append((envelope.remoteAddress, Array(envelope.data.readableBytesView)))
            }
            return out
        }

        func count(_ result: String) -> Double? {
            var bytes: [UInt8] = []
            metrics.registry.emit(into: &bytes)
            let series = "teltonika_udp_datagrams_total{result=\"\(result)\"} "
            for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix(series) {
                return Double(line.dropFirst(series.count))
            }
            return nil
        }
    }

    static var example: UDPFixture { FixtureCorpus.udpDatagrams[0] }

    @Test func testACKOnlyAfterRedisConfirmed() throws {
        let h = try Harness()
        try h.send(Self.example.bytes)
        #expect(h.sink.waiting == 1)
        #expect(try h.acks().isEmpty)
        h.answer()
        let acks = try h.acks()
        #expect(acks.map(\.1) == [Self.example.ack])
        #expect(acks.first?.0 == Harness.device)
        #expect(h.count("acked") == 1)
    }

    @Test func testResendAfterTheACKIsAcknowledgedAgainAndNotPublished() throws {
        let h = try Harness()
        try h.send(Self.example.bytes)
        h.answer()
        _ = try h.acks()
        try h.send(Self.example.bytes)
        #expect(h.sink.submitted.withLockedValue { $0 } == 1)
        #expect(try h.acks().map(\.1) == [Self.example.ack])
        #expect(h.count("reacked") == 1)
    }

    @Test func testResendWhileWaitingGetsOneACKAtItsNewAddress() throws {
        let h = try Harness()
        try h.send(Self.example.bytes)
        let moved = try SocketAddress(ipAddress: "10.0.0.7", port: 40_001)
        try h.send(Self.example.bytes, from: moved)
        #expect(h.sink.submitted.withLockedValue { $0 } == 1)
        h.answer()
        let acks = try h.acks()
        #expect(acks.count == 1)
        #expect(acks.first?.0 == moved)
        #expect(h.count("joined") == 1)
    }

    @Test func testRedisFailureMeansNoACKAndTheResendIsPublishedAgain() throws {
        let h = try Harness()
        try h.send(Self.example.bytes)
        h.answer(.expired(.timeout))
        #expect(try h.acks().isEmpty)
        #expect(h.count("not_stored") == 1)
        try h.send(Self.example.bytes)
        #expect(h.sink.submitted.withLockedValue { $0 } == 2)
        h.answer()
        #expect(try h.acks().map(\.1) == [Self.example.ack])
    }

    @Test func testFullQueueMeansNoACK() throws {
        let h = try Harness()
        h.sink.hasRoom.withLockedValue { $0 = false }
        try h.send(Self.example.bytes)
        #expect(try h.acks().isEmpty)
        #expect(h.count("overflow") == 1)
        h.sink.hasRoom.withLockedValue { $0 = true }
        try h.send(Self.example.bytes)
        h.answer()
        #expect(try h.acks().map(\.1) == [Self.example.ack])
    }

    @Test func testMalformedDatagramsAreCountedAndUnanswered() throws {
        let h = try Harness()
        // Every length from 0 to 64: the example (63 bytes) cut short, with a bad codec, and one byte long.
        let whole = Self.example.bytes
        for length in 0..<whole.count { try h.send(Array(whole.prefix(length))) }
        var badCodec = whole
        badCodec[23] = 0x07
        try h.send(badCodec)
        try h.send(whole + [0])
        #expect(h.sink.waiting == 0)
        #expect(try h.acks().isEmpty)
        #expect(h.count("malformed") == 65)
    }

    @Test func testDrainPublishesNothingNewButAnswersWhatWaits() throws {
        let h = try Harness()
        try h.send(Self.example.bytes)
        let answered = h.channel.eventLoop.makePromise(of: Void.self)
        h.channel.pipeline.fireUserInboundEventTriggered(UDPDrain(answered: answered))
        try h.send(FixtureCorpus.udpDatagrams[1].bytes)
        #expect(h.count("draining") == 1)
        #expect(h.sink.waiting == 1)
        let done = NIOLockedValueBox(false)
        answered.futureResult.whenSuccess { done.withLockedValue { $0 = true } }
        h.channel.embeddedEventLoop.run()
        #expect(!done.withLockedValue { $0 })
        h.answer()
        #expect(done.withLockedValue { $0 })
        #expect(try h.acks().map(\.1) == [Self.example.ack])
    }
}
