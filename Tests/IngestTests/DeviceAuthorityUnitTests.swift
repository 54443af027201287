import Codec8
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Prometheus
import Testing

@testable import Ingest

/// The allowlist's parts without a server: parsing, verdicts and swaps, and a refused login on a
/// session handler (nothing after it is read).
struct DeviceAuthorityUnitTests {
    static let a = IMEI("356307042441013")!
    static let b = IMEI("3563070424410140")!

    @Test func testTheFileFormat() throws {
        let list = try FileAllowlist.parse("# fleet\n356307042441013   # truck 7\n\n\t3563070424410140\r\n", name: "f")
        #expect(list == [Self.a, Self.b])
        #expect(throws: AllowlistError.self) { try FileAllowlist.parse("356307042441013\n35630704244101\n", name: "f") }
        do {
            _ = try FileAllowlist.parse("356307042441013\nabc\n", name: "list.txt")
        } catch {
            #expect(error.description == "list.txt:2: not an IMEI: 'abc'")
        }
        #expect(try FileAllowlist.parse("", name: "f").isEmpty)
    }

    @Test func testVerdictsAndSwaps() {
        #expect(DeviceAuthority(mode: .allowAll).verdict(Self.a) == .allowed)
        #expect(DeviceAuthority(mode: .allowAll).isLoaded)
        let authority = DeviceAuthority(mode: .file)
        #expect(authority.verdict(Self.a) == .notLoaded)
        #expect(!authority.isLoaded)
        let first = authority.replace(with: [Self.a])
        #expect(first.added == 1 && first.removed == 0)
        #expect(authority.verdict(Self.a) == .allowed && authority.verdict(Self.b) == .unknown)
        let second = authority.replace(with: [Self.b])
        #expect(second.added == 1 && second.removed == 1)
        #expect(authority.verdict(Self.a) == .unknown && authority.verdict(Self.b) == .allowed)
    }

    /// A login the authority refuses gets 0x00 and nothing pipelined behind it is handled.
    @Test func testADeniedLoginIsAnsweredZeroAndNothingAfterItIsRead() throws {
        let authority = DeviceAuthority(mode: .file)
        authority.replace(with: [Self.b])
        let h = try DeviceSessionHandlerTests.Harness(authority: authority)
        try h.feed(Self.a.loginFrame + DeviceSessionHandlerTests.avl(1, from: 0))
        #expect(try h.written() == [0])
        #expect(h.sink.submitted.withLockedValue { $0 } == 0)
        #expect(h.value(#"teltonika_handshake_total{result="unknown_device"}"#) == 1)
        #expect(!h.channel.isActive)
    }

    @Test func testTheStateMachineClosesOnADeniedLogin() {
        var session = DeviceSessionStateMachine<Int>()
        #expect(session.loginReceived(.success(Self.a), isAllowed: { _ in false }) == .deny(Self.a))
        #expect(session.framerMode == nil)
    }
}
