import Codec8
import FixtureSupport
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Prometheus
import Testing

@testable import Ingest

/// A publish queue that keeps jobs until the test answers them.
final class FakePublishSink: PublishSink {
    private let jobs = NIOLockedValueBox<[PublishJob]>([])
    /// False: the queue is full and refuses every job.
    let hasRoom = NIOLockedValueBox(true)
    let submitted = NIOLockedValueBox(0)

    func submit(_ job: PublishJob) -> Bool {
        guard hasRoom.withLockedValue({ $0 }) else { return false }
        jobs.withLockedValue { $0.append(job) }
        submitted.withLockedValue { $0 += 1 }
        return true
    }

    var waiting: Int { jobs.withLockedValue { $0.count } }

    /// Completes every waiting job with `outcome`; returns how many.
    @discardableResult
    func answerAll(_ outcome: PublishOutcome) -> Int {
        let taken = jobs.withLockedValue { jobs in
            defer { jobs = [] }
            return jobs
        }
        for job in taken { job.complete(outcome) }
        return taken.count
    }
}

/// Counts the `read()` calls that get past the session handler to the socket.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    var reads = 0
    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

/// The session handler on an embedded channel, with a fake publish queue: the bounded reader.
@Suite(.serialized, .blocking)
struct DeviceSessionHandlerTests {
    static let imei = IMEI("356307042441013")!

    struct Harness {
        let channel: EmbeddedChannel
        let handler: DeviceSessionHandler
        let reads: ReadCounter
        let sink: FakePublishSink
        /// This harness's own registry: its counts are exact, whatever other tests do.
        let metrics: IngestMetrics
        let environment: SessionEnvironment

        init(
            authority: DeviceAuthority = DeviceAuthority(mode: .allowAll),
            configure: (inout IngestConfiguration) -> Void = { _ in }
        ) throws {
            var configuration = IngestConfiguration()
            configure(&configuration)
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let environment = SessionEnvironment(
                configuration: configuration,
                publisher: FakePublishSink(),
                logger: logger,
                metrics: IngestMetrics(),
                authority: authority
            )
            try self.init(environment: environment)
        }

        /// Another connection of the same server (`environment` shared: queue, budgets, registry, metrics).
        init(environment: SessionEnvironment) throws {
            sink = environment.publisher as! FakePublishSink
            metrics = environment.metrics
            self.environment = environment
            handler = DeviceSessionHandler(environment: environment)
            reads = ReadCounter()
            channel = EmbeddedChannel()
            try channel.pipeline.syncOperations.addHandlers(reads, handler)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 5027)).wait()
        }

        func feed(_ bytes: some Collection<UInt8>) throws {
            try channel.writeInbound(ByteBuffer(bytes: bytes))
            channel.embeddedEventLoop.run()
        }

        /// Answers what the fake queue holds and runs the loop until nothing is left in flight.
        func answer(_ outcome: PublishOutcome = .stored) {
            while sink.answerAll(outcome) > 0 { channel.embeddedEventLoop.run() }
        }

        /// Every byte the handler wrote back (ACKs, login answer).
        func written() throws -> [UInt8] {
            var out: [UInt8] = []
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) { out += buffer.readableBytesView }
            return out
        }

        /// One series' value in this harness's registry; nil when the series does not exist.
        func value(_ series: String) -> Double? {
            var bytes: [UInt8] = []
            metrics.registry.emit(into: &bytes)
            for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix(series + " ") {
                return Double(line.dropFirst(series.count + 1))
            }
            return nil
        }
    }

    static func avl(_ records: Int, from start: UInt64) throws -> [UInt8] {
        let list = (0..<records).map {
            AVLRecord(timestampMs: 1_700_000_000_000 + start + UInt64($0), ioElements: [IOElement(id: 1, value: .u8(1))])
        }
        return try AVLPacketEncoder.encode(list, codec: .codec8)
    }

    static func message(payloadBytes: Int) -> [UInt8] {
        DeviceMessage(
            codec: .codec13,
            type: DeviceMessage.typeResponse,
            timestampSeconds: 1_700_000_000,
            payload: [UInt8](repeating: 0x41, count: payloadBytes)
        ).encoded()
    }

    /// The hostile client of the bounded-memory issue: 100 MB of pipelined AVL packets and back-to-back
    /// Codec 13 messages, in odd-sized writes that never line up with frames. Before the reader was
    /// bounded the buffer grew by about one byte per byte received; now its capacity stays under the
    /// bound (one frame plus one read) the whole time, and every packet still gets its ACK.
    @Test func testOneHundredMegabytesInOddChunksNeverGrowTheBufferPastItsBound() throws {
        let h = try Harness()
        try h.feed(Self.imei.loginFrame)
        #expect(try h.written() == [1])
        var unit = try Self.avl(3, from: 0)
        for _ in 0..<3 { unit += Self.message(payloadBytes: 4000) }
        let target = 100 * 1024 * 1024
        let units = target / unit.count + 1
        let chunkSizes = [1, 7, 1021, 4093, 16384, 9973, 13, 2, 12_289, 6151]
        let bound = DeviceSessionHandler.bufferBound(maxFrameBytes: IngestConfiguration().maxFrameBytes)
        var largest = 0
        var fed = 0
        var pending: ArraySlice<UInt8> = []
        var chunk = 0
        var sent = 0
        while sent < units || !pending.isEmpty {
            if pending.count < 16384 && sent < units {
                pending += unit
                sent += 1
            }
            let size = min(chunkSizes[chunk % chunkSizes.count], pending.count)
            chunk += 1
            try h.feed(pending.prefix(size))
            pending = pending.dropFirst(size)
            fed += size
            h.answer()
            largest = max(largest, h.handler.bufferedCapacity)
            try #require(h.handler.bufferedCapacity <= bound, "buffer capacity \(h.handler.bufferedCapacity) after \(fed) bytes")
        }
        #expect(fed >= target)
        let acks = try h.written()
        #expect(acks.count == 4 * units, "one ACK per packet")
        #expect(acks == Array((0..<units).map { _ in AVLAck.bytes(count: 3) }.joined()))
        // The packets and the messages within the default budget (a burst of 50) reached the queue.
        #expect(h.sink.submitted.withLockedValue { $0 } >= units + 50)
        print("bounded reader: \(fed) bytes in \(chunk) chunks; largest buffer \(largest) B, bound \(bound) B")
    }

    /// While a packet or a message is in flight with bytes buffered behind it, the channel's read() does
    /// not reach the socket; once Redis has answered, the held read goes through. With nothing buffered,
    /// one read ahead goes through (the socket stays armed), and then, bytes buffered, reads are held.
    @Test func testReadsAreHeldWhileAFrameIsInFlight() throws {
        let h = try Harness()
        try h.feed(Self.imei.loginFrame)
        h.channel.read()
        #expect(h.reads.reads == 1, "reading while ready")

        try h.feed(try Self.avl(2, from: 0) + Self.message(payloadBytes: 10).prefix(5))
        #expect(h.sink.waiting == 1)
        h.channel.read()
        h.channel.read()
        #expect(h.reads.reads == 1, "held while the packet is in flight")
        #expect(try h.written() == [1], "no ACK before Redis answers")
        h.sink.answerAll(.stored)
        h.channel.embeddedEventLoop.run()
        #expect(try h.written() == AVLAck.bytes(count: 2))
        #expect(h.reads.reads == 2, "the held read goes through once answered")

        try h.feed(Self.message(payloadBytes: 10).dropFirst(5))
        #expect(h.sink.waiting == 1, "the message is in flight")
        h.channel.read()
        #expect(h.reads.reads == 3, "nothing buffered: one read ahead")
        try h.feed(try Self.avl(1, from: 10).prefix(3))
        h.channel.read()
        #expect(h.reads.reads == 3, "bytes buffered behind the message: held")
        h.sink.answerAll(.stored)
        h.channel.embeddedEventLoop.run()
        #expect(h.reads.reads == 4, "the held read goes through once answered")
        #expect(try h.written().isEmpty, "a message is never ACKed")
    }

    /// Two AVL packets in one write (a device that pipelines): only the first is queued; its ACK, then
    /// the second is handled from the buffer and queued; then its ACK. Order kept, one in flight.
    @Test func testPipelinedPacketsAreHandledOneAfterTheOtherFromTheBuffer() throws {
        let h = try Harness()
        try h.feed(Self.imei.loginFrame)
        #expect(try h.written() == [1])
        try h.feed(try Self.avl(2, from: 0) + Self.avl(5, from: 10))
        #expect(h.sink.waiting == 1, "only the first packet is queued")
        #expect(try h.written().isEmpty)
        h.sink.answerAll(.stored)
        h.channel.embeddedEventLoop.run()
        #expect(try h.written() == AVLAck.bytes(count: 2), "the first ACK")
        #expect(h.sink.waiting == 1, "the second packet, taken from the buffer, is now queued")
        h.sink.answerAll(.stored)
        h.channel.embeddedEventLoop.run()
        #expect(try h.written() == AVLAck.bytes(count: 5), "then the second ACK")
        #expect(h.sink.submitted.withLockedValue { $0 } == 2)
    }

    /// A burst of messages over the connection's budget: the budget reaches the queue, the rest is
    /// dropped and counted, and the packet behind them is still ACKed.
    @Test func testMessagesOverTheBudgetAreDroppedAndCounted() throws {
        let h = try Harness { $0.deviceMessageBurst = 3 }
        try h.feed(Self.imei.loginFrame)
        var stream: [UInt8] = []
        for _ in 0..<10 { stream += Self.message(payloadBytes: 20) }
        stream += try Self.avl(1, from: 0)
        try h.feed(stream)
        h.answer()
        #expect(h.sink.submitted.withLockedValue { $0 } == 3 + 1, "3 messages and the packet")
        #expect(h.value("teltonika_device_messages_rate_limited_total") == 7)
        #expect(try h.written() == [1] + AVLAck.bytes(count: 1))
    }

    /// A message the full queue refuses is dropped; reading goes on and the next packet waits for room.
    @Test func testAMessageRefusedByAFullQueueIsDroppedAndReadingGoesOn() throws {
        let h = try Harness()
        try h.feed(Self.imei.loginFrame)
        h.sink.hasRoom.withLockedValue { $0 = false }
        try h.feed(Self.message(payloadBytes: 20))
        #expect(h.value("teltonika_publish_overflow_total") == 1)
        h.sink.hasRoom.withLockedValue { $0 = true }
        try h.feed(try Self.avl(1, from: 0))
        h.answer()
        #expect(try h.written() == [1] + AVLAck.bytes(count: 1))
    }

    /// A drain closes an idle session at once; a session with a packet in flight closes once its ACK
    /// is written, and a second packet already buffered behind it is never handled.
    @Test func testADrainedSessionClosesItselfAfterItsAnswer() throws {
        let idle = try Harness()
        try idle.feed(Self.imei.loginFrame)
        idle.channel.pipeline.fireUserInboundEventTriggered(SessionDrain())
        idle.channel.embeddedEventLoop.run()
        #expect(!idle.channel.isActive, "nothing in flight: closed at once")

        let busy = try Harness()
        try busy.feed(Self.imei.loginFrame)
        #expect(try busy.written() == [1])
        try busy.feed(try Self.avl(2, from: 0) + Self.avl(3, from: 10))
        #expect(busy.sink.waiting == 1)
        busy.channel.pipeline.fireUserInboundEventTriggered(SessionDrain())
        busy.channel.embeddedEventLoop.run()
        #expect(busy.channel.isActive, "the packet in flight is answered first")
        busy.answer()
        #expect(try busy.written() == AVLAck.bytes(count: 2), "its ACK, and nothing for the packet behind it")
        #expect(!busy.channel.isActive, "closed once the ACK is out")
        #expect(busy.sink.submitted.withLockedValue { $0 } == 1, "the buffered packet was never handled")
    }

    /// Every fixture frame fed one byte at a time after a login: the same answers as whole frames.
    @Test func testEveryFixtureFedByteByByteGetsItsAnswer() throws {
        for fixture in FixtureCorpus.frames where fixture.expect.hasPrefix("avl:") {
            let h = try Harness()
            for byte in Self.imei.loginFrame + fixture.bytes { try h.feed([byte]) }
            h.answer()
            let records = UInt32(fixture.expect.dropFirst(4))!
            #expect(try h.written() == [1] + AVLAck.bytes(count: records), "\(fixture.id)")
            #expect(h.handler.bufferedCapacity == 0, "\(fixture.id): nothing left over")
        }
    }

    /// A bad frame after login: counted by codec and result, no ACK, the connection closed.
    @Test func testABadFrameIsCountedAndClosesWithoutACK() throws {
        let h = try Harness()
        try h.feed(Self.imei.loginFrame)
        var frame = try Self.avl(2, from: 0)
        frame[frame.count - 1] ^= 0xFF  // the CRC
        try h.feed(frame)
        #expect(try h.written() == [1], "the login answer only")
        #expect(!h.channel.isActive)
        #expect(h.value(#"teltonika_frames_total{codec="8",result="crc_fail"}"#) == 1)
        #expect(h.sink.submitted.withLockedValue { $0 } == 0)
    }

    /// No login within HANDSHAKE_TIMEOUT_MS: counted, closed; not a moment before.
    @Test func testTheHandshakeTimeoutClosesASilentConnection() throws {
        let h = try Harness { $0.handshakeTimeoutMs = 500 }
        h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(499))
        #expect(h.channel.isActive)
        h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(!h.channel.isActive)
        #expect(h.value(#"teltonika_handshake_total{result="timeout"}"#) == 1)
    }

    /// A packet must be complete within FRAME_TIMEOUT_MS of its first byte, however the bytes trickle in;
    /// keep-alives between packets do not start the clock, a completed frame stops it, and the time a
    /// frame waits in flight for Redis does not count against the next one.
    @Test func testAFrameNotCompletedInTimeClosesTheConnection() throws {
        let h = try Harness { $0.frameTimeoutMs = 1000 }
        try h.feed(Self.imei.loginFrame)
        let frame = try Self.avl(2, from: 0)
        // Keep-alives for 5 s: no frame is being read, nothing times out.
        for _ in 0..<10 {
            try h.feed([0xFF])
            h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(500))
        }
        #expect(h.channel.isActive)
        // A frame completed within the time, then a second one half sent while the first is in flight.
        try h.feed(frame.prefix(10))
        h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(900))
        try h.feed(frame.dropFirst(10) + frame.prefix(5))
        h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(5000))
        #expect(h.channel.isActive, "the time in flight counted against the next frame")
        h.answer()
        // Reading again: the second frame's clock starts now; bytes trickling in do not extend it.
        for i in 0..<9 {
            h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
            try h.feed(frame[(5 + i)..<(6 + i)])
        }
        #expect(h.channel.isActive)
        h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
        #expect(!h.channel.isActive)
        #expect(h.value(#"teltonika_disconnects_total{reason="frame_timeout"}"#) == 1)
        #expect(try h.written() == [1, 0, 0, 0, 2])
    }

    /// Receive buffers across connections are bounded by MAX_BUFFERED_BYTES beyond 2 KiB each: a partial
    /// frame is kept in a buffer of its declared size, a connection that would take the total past the
    /// limit is closed (counted), and a completed frame gives its bytes back.
    @Test func testBufferedBytesAcrossConnectionsStayWithinTheBudget() throws {
        let first = try Harness { $0.maxBufferedBytes = 40_000 }
        var connections = [first]
        for _ in 0..<3 { connections.append(try Harness(environment: first.environment)) }
        // A 16 KiB-data frame with IO values that fill it: each connection sends all but its last byte.
        let ioElements = (0..<40).map { IOElement(id: UInt16($0), value: .u64(7)) }
        let big = try AVLPacketEncoder.encode(
            (0..<41).map { AVLRecord(timestampMs: 1_700_000_000_000 + UInt64($0), ioElements: ioElements) },
            codec: .codec8
        )
        try #require(big.count > 16_000 && big.count <= 16_396)
        // Each its own device (a login with the same IMEI would replace the older connection).
        func login(_ h: Harness, _ index: Int) throws { try h.feed(IMEI("35630704244101\(index)")!.loginFrame) }
        for (index, h) in connections.prefix(3).enumerated() {
            try login(h, index)
            _ = try h.written()
            // In odd chunks, the first of which is a whole read's worth.
            try h.feed(big.prefix(9_000))
            try h.feed(big.dropFirst(9_000).dropLast())
            if index < 2 {
                #expect(h.channel.isActive, "connection \(index) within the budget was closed")
                // The buffer is the frame's size, give or take the allocator's rounding (less than 1 KiB).
                #expect(h.handler.bufferedCapacity < big.count + 1024, "buffer \(h.handler.bufferedCapacity) above the frame's size")
            } else {
                #expect(!h.channel.isActive, "the connection past the budget stays open")
            }
        }
        #expect(first.value("teltonika_buffer_budget_refusals_total") == 1)
        #expect(first.value(#"teltonika_disconnects_total{reason="buffer_budget"}"#) == 1)
        let charge = connections[0].handler.bufferedCapacity - BufferBudget.allowance
        #expect(first.environment.bufferBudget.inUse == 2 * charge)
        // The first connection completes its frame: its bytes go back; a fourth connection now fits.
        try first.feed(big.suffix(1))
        #expect(first.sink.waiting == 1)
        #expect(first.environment.bufferBudget.inUse == charge)
        let fourth = connections[3]
        try login(fourth, 3)
        try fourth.feed(big.dropLast())
        #expect(fourth.channel.isActive)
        // Closing gives back what a connection held.
        try connections[1].channel.close().wait()
        try fourth.channel.close().wait()
        #expect(first.environment.bufferBudget.inUse == 0)
    }

    /// A full queue: the packet is offered again every 10 ms until OVERFLOW_WAIT_MS, then the
    /// connection closes unACKed; room in time means the packet is queued and ACKed.
    @Test func testAFullQueueWaitsThenClosesWithoutACK() throws {
        let h = try Harness { $0.overflowWaitMs = 50 }
        try h.feed(Self.imei.loginFrame)
        h.sink.hasRoom.withLockedValue { $0 = false }
        try h.feed(try Self.avl(1, from: 0))
        h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(49))
        #expect(h.channel.isActive, "still waiting for room after 49 ms")
        h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(10))
        #expect(!h.channel.isActive, "no room in 50 ms: closed")
        #expect(try h.written() == [1], "no ACK")
        #expect(h.value("teltonika_publish_overflow_total") == 1)

        let lucky = try Harness { $0.overflowWaitMs = 1000 }
        try lucky.feed(Self.imei.loginFrame)
        lucky.sink.hasRoom.withLockedValue { $0 = false }
        try lucky.feed(try Self.avl(2, from: 0))
        lucky.channel.embeddedEventLoop.advanceTime(by: .milliseconds(30))
        lucky.sink.hasRoom.withLockedValue { $0 = true }
        lucky.channel.embeddedEventLoop.advanceTime(by: .milliseconds(10))
        lucky.answer()
        #expect(try lucky.written() == [1] + AVLAck.bytes(count: 2))
        #expect(lucky.value("teltonika_publish_overflow_total") == 0)
    }

    /// `IDLE_TIMEOUT_MS` on the loop's clock: a connection closes exactly that long after its last bytes,
    /// however many times the timer fired in between (each byte moves the deadline, the timer follows).
    @Test func testTheIdleTimeoutCountsFromTheLastBytes() throws {
        let h = try Harness { $0.idleTimeoutMs = 1000 }
        let loop = h.channel.embeddedEventLoop
        try h.feed(Self.imei.loginFrame)
        loop.advanceTime(by: .milliseconds(600))
        try h.feed([0xFF])  // a keep-alive at 600 ms
        loop.advanceTime(by: .milliseconds(900))  // 1,500 ms: the first firing finds 900 ms of silence
        #expect(h.channel.isActive)
        try h.feed([0xFF])  // at 1,500 ms
        loop.advanceTime(by: .milliseconds(999))
        #expect(h.channel.isActive, "999 ms after the last byte")
        loop.advanceTime(by: .milliseconds(1))
        #expect(!h.channel.isActive, "1,000 ms after it")
        #expect(h.value(#"teltonika_disconnects_total{reason="idle_timeout"}"#) == 1)
        #expect(h.value("teltonika_keepalive_total") == 2)
    }

    /// The registry's login write is queued before the device is answered: a device logs in again only
    /// after its answer, so its newer login is always written after this one (queued after the answer,
    /// a paused event-loop thread let the newer login be written first, and the newer connection closed).
    @Test func testTheRegistryLoginIsQueuedBeforeTheLoginAnswer() throws {
        let directory = LoginOrderDirectory()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let environment = SessionEnvironment(
            configuration: IngestConfiguration(),
            publisher: FakePublishSink(),
            logger: logger,
            metrics: IngestMetrics(),
            directory: DeviceRegistration(directory: directory, seenInterval: .seconds(60))
        )
        let h = try Harness(environment: environment)
        directory.channel.withLockedValue { $0 = h.channel }
        try h.feed(Self.imei.loginFrame)
        #expect(directory.answeredAtLogin.withLockedValue { $0 } == [false], "the login was queued, the answer not yet written")
        #expect(try h.written() == [1])
    }
}

/// A registry that notes, at each login write, whether the session had already answered the device.
final class LoginOrderDirectory: DeviceDirectory, @unchecked Sendable {
    let channel = NIOLockedValueBox<EmbeddedChannel?>(nil)
    let answeredAtLogin = NIOLockedValueBox<[Bool]>([])

    func newSession() -> String { "s1" }
    func loggedIn(_ imei: IMEI, session: String, peer: String, atMs: UInt64) {
        // Reading takes the answer, which then fails the test's check of what was written: it fails either way.
        let answer = try? channel.withLockedValue { $0 }?.readOutbound(as: ByteBuffer.self)
        answeredAtLogin.withLockedValue { $0.append(answer != nil) }
    }
    func seen(_ imei: IMEI, session: String, recordAt: UInt64?) {}
    func loggedOut(_ imei: IMEI, session: String) {}
    func currentSession(_ imei: IMEI, completion: @escaping @Sendable (String?) -> Void) { completion(nil) }
}
