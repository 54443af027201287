import Codec8
import FixtureSupport
import Testing

/// The streaming framer: keep-alives, logins, bounds, and cutting a stream at every offset.
struct StreamTests {
    /// A login, every valid fixture frame, and keep-alive bytes between them.
    static let stream: (bytes: [UInt8], events: [StreamCutter.Event]) = {
        let login = IMEI("356307042441013")!.loginFrame
        var bytes = login
        var events: [StreamCutter.Event] = [.login(login)]
        for (i, f) in Fixtures.valid.enumerated() where f.expect != "imei" && f.expect != "ping" {
            bytes += f.bytes
            events.append(.frame(f.bytes))
            if i % 3 == 0 {
                bytes += [0xFF, 0xFF]
                events += [.keepAlive, .keepAlive]
            }
        }
        return (bytes, events)
    }()

    @Test func testWholeStreamGivesEveryFrame() throws {
        var cutter = StreamCutter()
        try cutter.feed(StreamTests.stream.bytes)
        #expect(cutter.events == StreamTests.stream.events)
        #expect(cutter.buffer.isEmpty)
    }

    @Test func testSplittingAtEveryOffsetGivesTheSameFrames() throws {
        let (bytes, events) = StreamTests.stream
        for k in 0...bytes.count {
            var cutter = StreamCutter()
            try cutter.feed(bytes[..<k])
            try cutter.feed(bytes[k...])
            #expect(cutter.events == events, "split at \(k)")
            #expect(cutter.buffer.isEmpty)
        }
    }

    @Test func testOneByteAtATimeGivesTheSameFrames() throws {
        var cutter = StreamCutter()
        for b in StreamTests.stream.bytes { try cutter.feed(CollectionOfOne(b)) }
        #expect(cutter.events == StreamTests.stream.events)
        // Never more than the largest frame is buffered.
        let largest = Fixtures.valid.map(\.bytes.count).max()!
        #expect(cutter.highWater <= largest)
    }

    @Test func testMaliciousLengthIsRejectedBeforeTheBody() throws {
        let framer = TeltonikaFramer()
        let header: [UInt8] = [0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]
        #expect(throws: Codec8Error.tooLarge(declared: 0xFFFF_FFFF, limit: TeltonikaFramer.defaultMaxDataLength)) {
            try framer.next(header, mode: .packets)
        }
        // One byte above the cap is refused; the cap itself is waited for.
        let limit = UInt32(TeltonikaFramer.defaultMaxDataLength)
        let over: [UInt8] = [0, 0, 0, 0] + AVLAck.bytes(count: limit + 1)
        #expect(throws: Codec8Error.tooLarge(declared: limit + 1, limit: Int(limit))) { try framer.next(over, mode: .packets) }
        let at: [UInt8] = [0, 0, 0, 0] + AVLAck.bytes(count: limit)
        #expect(try framer.next(at, mode: .packets) == .needMore(Int(limit) + 4))
    }

    @Test func testConfigurableLimit() throws {
        let framer = TeltonikaFramer(maxDataLength: 100)
        #expect(try framer.next([0, 0, 0, 0, 0, 0, 0, 100], mode: .packets) == .needMore(104))
        #expect(throws: Codec8Error.tooLarge(declared: 101, limit: 100)) {
            try framer.next([0, 0, 0, 0, 0, 0, 0, 101], mode: .packets)
        }
    }

    @Test func testBadPreambleIsSeenAtTheFirstBadByte() {
        let framer = TeltonikaFramer()
        #expect(throws: Codec8Error.badPreamble(offset: 0, byte: 0x01)) { try framer.next([0x01], mode: .packets) }
        #expect(throws: Codec8Error.badPreamble(offset: 2, byte: 0x47)) { try framer.next([0, 0, 0x47], mode: .packets) }
        // "GET / HTTP/1.1" is not a device.
        #expect(throws: Codec8Error.badPreamble(offset: 0, byte: 0x47)) { try framer.next(Array("GET /".utf8), mode: .packets) }
    }

    @Test func testNeedMoreCountsTheMissingBytes() throws {
        let framer = TeltonikaFramer()
        #expect(try framer.next([], mode: .packets) == .needMore(1))
        #expect(try framer.next([0, 0], mode: .packets) == .needMore(6))
        #expect(try framer.next([0, 0, 0, 0, 0, 0, 0, 0x36], mode: .packets) == .needMore(0x36 + 4))
        #expect(try framer.next([0xFF, 0, 0], mode: .packets) == .keepAlive)
        #expect(try framer.next([], mode: .login) == .needMore(2))
        #expect(try framer.next([0x00, 0x0F, 0x33], mode: .login) == .needMore(14))
    }

    @Test func testLoginLengthOutsideTheAcceptedRangeIsRejectedAtOnce() {
        let framer = TeltonikaFramer()
        #expect(throws: Codec8Error.badIMEI(.length(0xFF00))) { try framer.next([0xFF, 0x00], mode: .login) }
        #expect(throws: Codec8Error.badIMEI(.length(0))) { try framer.next([0x00, 0x00], mode: .login) }
        #expect(throws: Codec8Error.badIMEI(.length(14))) { try framer.next([0x00, 0x0E], mode: .login) }
    }
}
