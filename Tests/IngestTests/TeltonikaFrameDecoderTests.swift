import Codec8
import FixtureSupport
import Foundation
import Ingest
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

/// The NIO adapter over the framer, checked with NIO's own decoder verifier (shuffled, drip-fed,
/// surrounded by junk bytes) and on an embedded channel.
struct TeltonikaFrameDecoderTests {
    static let fixtures = FixtureCorpus.frames

    static let login = IMEI("356307042441013")!.loginFrame

    @Test func testVerifierOnEveryPacketFrame() throws {
        // Every packet frame (valid or not: framing does not check CRC) with keep-alives between. The
        // verifier feeds one decoder several times, so it starts past the login.
        let packets = TeltonikaFrameDecoderTests.fixtures.filter { !["imei", "ping", "error:truncated"].contains($0.expect) }
        #expect(packets.count > 30)
        var input = ByteBuffer()
        var output: [TeltonikaFrameDecoder.Frame] = []
        for packet in packets {
            input.writeBytes([0xFF])
            input.writeBytes(packet.bytes)
            output += [.keepAlive, .packet(ByteBuffer(bytes: packet.bytes))]
        }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: [(input, output)]) {
            TeltonikaFrameDecoder(startingIn: .packets)
        }
    }

    @Test func testMaliciousLengthClosesAtOnceWithoutBuffering() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(TeltonikaFrameDecoder()))
        try channel.writeInbound(ByteBuffer(bytes: TeltonikaFrameDecoderTests.login))
        #expect(
            try channel.readInbound(as: TeltonikaFrameDecoder.Frame.self) == .login(ByteBuffer(bytes: TeltonikaFrameDecoderTests.login))
        )
        #expect(throws: Codec8Error.tooLarge(declared: 0xFFFF_FFFF, limit: TeltonikaFramer.defaultMaxDataLength)) {
            try channel.writeInbound(ByteBuffer(bytes: [0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]))
        }
        _ = try? channel.finish()
    }

    @Test func testBadLoginIsAnError() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(TeltonikaFrameDecoder()))
        #expect(throws: Codec8Error.badIMEI(.length(0x4745))) { try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n")) }
        _ = try? channel.finish()
    }

    @Test func testStreamOfAllValidFramesComesOutInOrder() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(TeltonikaFrameDecoder()))
        var expected: [TeltonikaFrameDecoder.Frame] = [.login(ByteBuffer(bytes: TeltonikaFrameDecoderTests.login))]
        var stream = TeltonikaFrameDecoderTests.login
        for f in TeltonikaFrameDecoderTests.fixtures where f.expect.hasPrefix("avl") || f.expect.hasPrefix("message") {
            stream += f.bytes + [0xFF]
            expected += [.packet(ByteBuffer(bytes: f.bytes)), .keepAlive]
        }
        // Arbitrary chunking, as TCP delivers it.
        var offset = 0
        var size = 1
        while offset < stream.count {
            let end = min(stream.count, offset + size)
            try channel.writeInbound(ByteBuffer(bytes: stream[offset..<end]))
            offset = end
            size = size * 3 % 97 + 1
        }
        var got: [TeltonikaFrameDecoder.Frame] = []
        while let frame = try channel.readInbound(as: TeltonikaFrameDecoder.Frame.self) { got.append(frame) }
        #expect(got == expected)
        #expect(try channel.finish().isClean)
    }
}
