import Codec8
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
        #expect(session.published(.stored) == .acknowledge(records: 3, resumeReading: true))
        #expect(session.inFlight == nil)
        #expect(session.framerMode == .packets)

        #expect(session.packetDecoded(records: 1) { "p2" } == .publish)
        #expect(session.published(.stored) == .acknowledge(records: 1, resumeReading: true))
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

    @Test func testAPacketBeforeLoginOrWhileOneIsInFlightIsIgnored() {
        var fresh = Session()
        #expect(fresh.packetDecoded(records: 2) { "p" } == .ignore)
        var busy = Self.publishing()
        #expect(busy.packetDecoded(records: 2) { "p2" } == .ignore)
        #expect(busy.inFlight == "p1", "the packet in flight is kept")
    }

    @Test func testABadIMEIIsRefusedAndClosed() {
        var digits = Session()
        let bad = Codec8Error.badIMEI(.nonDigit(offset: 3, byte: 0x41))
        #expect(digits.loginReceived(.failure(bad)) == .refuse(result: "rejected", bad))
        #expect(digits.framerMode == nil)
        #expect(digits.connectionClosed().imei == nil, "never registered")

        var length = Session()
        let short = Codec8Error.badIMEI(.length(3))
        #expect(length.frameRejected(short) == .refuseLogin(result: "malformed", short))
        #expect(length.framerMode == nil)
    }

    @Test func testASecondLoginFrameIsIgnored() {
        var session = Self.loggedIn()
        #expect(session.loginReceived(.success(IMEI("356307042441014")!)) == .ignore)
        #expect(session.imei == Self.imei)
    }

    @Test(arguments: [
        (Codec8Error.crcMismatch(received: 1, computed: 2), "crc_fail"),
        (.tooLarge(declared: UInt32.max, limit: 1280), "too_large"),
        (.unsupportedCodec(0x99), "unknown_codec"),
        (.badPreamble(offset: 0, byte: 1), "malformed"),
        (.recordCountMismatch(header: 1, trailer: 2), "malformed"),
        (.lengthMismatch(declared: 10, actual: 9), "malformed"),
        (.badIMEI(.length(3)), "malformed"),
    ])
    func testABadFrameAfterLoginClosesWithoutACKAndStillUnregisters(error: Codec8Error, result: String) {
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
        #expect(expired.published(.expired("Redis did not confirm in time")) == .closeUnconfirmed("Redis did not confirm in time"))
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
        session.drain()
        #expect(session.framerMode == nil)
        #expect(session.published(.stored) == .acknowledge(records: 5, resumeReading: false))
        #expect(session.framerMode == nil, "still draining: nothing more is read")
        let ended = session.connectionClosed()
        #expect(ended.abandoned == nil)
        #expect(!ended.bufferedBytesAreTruncatedFrame, "bytes left unread by a drain are not a device's truncation")
    }

    @Test func testHandshakeTimeoutOnlyBeforeLoginAndNotWhileDraining() {
        var waiting = Session()
        #expect(waiting.handshakeTimedOut())
        waiting.drain()
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
