import Codec8
import FixtureSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 13 against the real binary over real TCP: one hostile address cannot take the port from
/// devices at other addresses; a slowloris frame is cut at FRAME_TIMEOUT_MS.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct DeviceTrustTests {
    static let frame = TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes

    /// One address opens MAX_CONNECTIONS logged-in keep-alive connections: only MAX_CONNECTIONS_PER_IP
    /// are admitted, the rest refused and counted; a device from another address logs in and is ACKed.
    @Test func testOneAddressCannotTakeEverySlot() throws {
        let server = try ServerProcess(environment: ["MAX_CONNECTIONS": "30", "MAX_CONNECTIONS_PER_IP": "10"])
        var flood: [DeviceClient] = []
        var admitted = 0
        for i in 0..<30 {
            let client = try DeviceClient(port: server.port)
            // A refused connection is closed at once: the send may already fail.
            try? client.send(IMEI(String(356_307_042_440_000 + UInt64(i)))!.loginFrame)
            if client.receive(1, timeout: 5) == .bytes([1]) {
                admitted += 1
                try client.send([0xFF])
            }
            flood.append(client)
        }
        #expect(admitted == 10)
        try waitFor(timeout: 5) { try server.scrape().value(#"teltonika_connections_refused_total{reason="per_ip"}"#) == 20 }
        #expect(try server.scrape().value("teltonika_connections_active") == 10)
        let device = try DeviceClient(port: server.port, source: "127.0.0.2")
        #expect(try device.login("356307042441013"))
        try device.send(Self.frame)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]))
        let refused = try server.waitForLog(event: "server.connection_refused", timeout: 5)
        #expect(refused["reason"] as? String == "per_ip")
        #expect(refused["peer"] as? String != nil)
        // Logged at a limited rate: 20 refusals, one line.
        #expect(server.logCount(event: "server.connection_refused") == 1)
    }

    /// An address whose logins keep failing is refused on accept once it used up
    /// MAX_LOGIN_FAILURES_PER_IP; other addresses are not affected.
    @Test func testAnAddressThatKeepsFailingLoginsIsRefused() throws {
        let server = try ServerProcess(environment: ["MAX_LOGIN_FAILURES_PER_IP": "5"])
        let bad: [UInt8] = [0x00, 0x0F] + Array("35630704244101X".utf8)
        for _ in 0..<5 {
            let client = try DeviceClient(port: server.port, source: "127.0.0.3")
            try client.send(bad)
            #expect(client.receive(2, timeout: 5) == .closed([0]))
        }
        let refused = try DeviceClient(port: server.port, source: "127.0.0.3")
        try refused.send(IMEI("356307042441013")!.loginFrame)
        #expect(refused.receive(1, timeout: 5) == .closed([]))
        #expect(try server.scrape().value(#"teltonika_connections_refused_total{reason="login_failures"}"#) == 1)
        let device = try DeviceClient(port: server.port, source: "127.0.0.2")
        #expect(try device.login("356307042441013"))
    }

    /// Slowloris: a packet sent one byte every 300 ms is closed FRAME_TIMEOUT_MS after its first byte,
    /// although bytes keep coming; a device beside it is ACKed meanwhile.
    @Test func testAPacketTricklingInIsCutAtTheFrameTimeout() throws {
        let server = try ServerProcess(environment: ["FRAME_TIMEOUT_MS": "1500"])
        let slow = try DeviceClient(port: server.port)
        #expect(try slow.login("356307042441014"))
        let started = Date()
        var closed = false
        for byte in Self.frame {
            do { try slow.send([byte]) } catch { break }
            if case .closed = slow.receive(1, timeout: 0.3) {
                closed = true
                break
            }
        }
        let seconds = Date().timeIntervalSince(started)
        #expect(closed, "the trickle was never cut")
        #expect(seconds >= 1.4 && seconds < 5, "cut after \(seconds) s")
        #expect(try server.scrape().value(#"teltonika_disconnects_total{reason="frame_timeout"}"#) == 1)
        let line = try server.waitForLog(event: "frame.timeout", timeout: 1)
        #expect(line["timeout_ms"] as? String == "1500")
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        try device.send(Self.frame)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]))
    }
}
