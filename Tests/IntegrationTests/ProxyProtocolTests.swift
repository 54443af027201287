import Codec8
import FixtureSupport
import Foundation
import RedisWire
import Testing

@testable import Ingest

#if canImport(Glibc)
import Glibc
#endif

/// `PROXY_PROTOCOL` with the real binary: behind a real HAProxy (`send-proxy-v2`), and against hand-made
/// headers from chosen loopback addresses (127.0.0.1 is the trusted load balancer, 127.0.0.5 and up are not).
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct ProxyProtocolTests {
    static let imei = "356307042441013"
    static let packet = TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes

    static func refusals(_ server: ServerProcess, _ reason: ProxyRefusal) throws -> Double? {
        try server.scrape()[#"teltonika_proxy_header_refusals_total{reason="\#(reason.rawValue)"}"#]
    }

    /// Peers of the `device.login` lines, once there are `count` (log lines may trail the answers).
    static func loginPeers(_ server: ServerProcess, count: Int) throws -> [String] {
        try server.waitForLog(event: "device.login", timeout: 5, count: count)
        return server.logs.filter { $0["event"] as? String == "device.login" }.compactMap { $0["peer"] as? String }
    }

    /// Devices from 127.0.0.2 and 127.0.0.3 through HAProxy: logged in and ACKed under their own addresses (in
    /// the logs and the device registry), and `MAX_CONNECTIONS_PER_IP` (2) counts 127.0.0.2, not HAProxy's
    /// 127.0.0.1, which holds 4 connections.
    @Test func testDevicesThroughHAProxyAreSeenAndLimitedByTheirOwnAddress() throws {
        let registry = "test:devices:\(UUID().uuidString)"
        let server = try ServerProcess(environment: [
            "PROXY_PROTOCOL": "v2", "PROXY_TRUSTED_CIDRS": "127.0.0.1/32", "MAX_CONNECTIONS_PER_IP": "2", "REDIS_DEVICE_PREFIX": registry,
        ])
        let haproxy = try HAProxyProcess(backendPort: server.port)
        let first = try DeviceClient(port: haproxy.port, source: "127.0.0.2")
        #expect(try first.login(Self.imei))
        try first.send(Self.packet)
        #expect(first.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 1)))
        let second = try DeviceClient(port: haproxy.port, source: "127.0.0.2")
        #expect(try second.login("356307042441014"))
        let third = try DeviceClient(port: haproxy.port, source: "127.0.0.2")
        #expect(third.receive(1, timeout: 10) == .closed([]), "a third connection from 127.0.0.2 is over the limit")
        let refused = try server.waitForLog(event: "server.connection_refused", timeout: 5)
        #expect(refused["reason"] as? String == "per_ip")
        #expect((refused["peer"] as? String)?.hasPrefix("127.0.0.2:") == true, "\(refused)")
        let other = try DeviceClient(port: haproxy.port, source: "127.0.0.3")
        #expect(try other.login("356307042441015"), "127.0.0.3 has its own budget")

        let peers = try Self.loginPeers(server, count: 3)
        #expect(peers.count == 3)
        #expect(
            peers.filter { $0.hasPrefix("127.0.0.2:") }.count == 2 && peers.filter { $0.hasPrefix("127.0.0.3:") }.count == 1,
            "\(peers)"
        )
        let scrape = try server.scrape()
        #expect(scrape[#"teltonika_proxy_headers_total{command="proxy"}"#] == 4)
        #expect(scrape[#"teltonika_connections_refused_total{reason="per_ip"}"#] == 1)
        #expect(scrape[#"teltonika_connections_total{result="accepted"}"#] == 3)
        #expect(scrape["teltonika_connections_active"] == 3, "the refused connection never was a session")
        let redis = try RedisClient(url: TestEnvironment.redisURL)
        #expect(try redis.entries(server.stream).map { $0["device_id"] } == [Self.imei])
        try waitFor(timeout: 5, "the device registry names the device's own address") {
            guard case .string(let peer) = try redis.command(["HGET", "\(registry):{\(Self.imei)}", "peer"]) else { return false }
            return peer.hasPrefix("127.0.0.2:")
        }
    }

    /// `v2`: each kind of bad header, from one client each, is closed and counted once under its reason: a
    /// sender outside the trusted networks, no header, a bad version, a header declaring 65,551 bytes (closed on
    /// its 16 fixed bytes, the rest never sent), a header cut by a close, and one not complete in
    /// `HANDSHAKE_TIMEOUT_MS`. A LOCAL header keeps the load balancer's own address, and a health check that
    /// closes after it (or before any byte) is no error.
    @Test func testBadHeadersAreRefusedAndCounted() throws {
        let server = try ServerProcess(environment: [
            "PROXY_PROTOCOL": "v2", "PROXY_TRUSTED_CIDRS": "127.0.0.1/32", "HANDSHAKE_TIMEOUT_MS": "1000",
        ])
        let untrusted = try DeviceClient(port: server.port, source: "127.0.0.5")
        try untrusted.send(proxyHeaderV4(source: "127.0.0.9") + IMEI(Self.imei)!.loginFrame)
        #expect(untrusted.receive(1, timeout: 5) == .closed([]))

        let missing = try DeviceClient(port: server.port)
        try missing.send(IMEI(Self.imei)!.loginFrame)
        #expect(missing.receive(1, timeout: 5) == .closed([]))

        var badVersion = proxyHeaderV4(source: "127.0.0.9")
        badVersion[12] = 0x31
        let malformed = try DeviceClient(port: server.port)
        try malformed.send(badVersion)
        #expect(malformed.receive(1, timeout: 5) == .closed([]))

        let oversized = try DeviceClient(port: server.port)
        try oversized.send(proxySignature + [0x21, 0x11, 0xFF, 0xFF])
        #expect(oversized.receive(1, timeout: 1) == .closed([]), "closed on the fixed 16 bytes")

        let cut = try DeviceClient(port: server.port)
        try cut.send(Array(proxyHeaderV4(source: "127.0.0.9")[0..<20]))
        cut.shutdownWrite()
        #expect(cut.receive(1, timeout: 5) == .closed([]))

        let slow = try DeviceClient(port: server.port)
        let started = Date()
        try slow.send(Array(proxySignature[0..<5]))
        #expect(slow.receive(1, timeout: 5) == .closed([]))
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 0.9 && waited < 3, "closed after \(waited) s, HANDSHAKE_TIMEOUT_MS 1000")

        let check = try DeviceClient(port: server.port)
        try check.send(proxySignature + [0x20, 0x00, 0x00, 0x00])
        check.shutdownWrite()
        #expect(check.receive(1, timeout: 5) == .closed([]))
        _ = try DeviceClient(port: server.port)  // connects and closes at once, sending nothing
        let local = try DeviceClient(port: server.port)
        try local.send(proxySignature + [0x20, 0x00, 0x00, 0x00] + IMEI(Self.imei)!.loginFrame)
        #expect(local.receive(1, timeout: 5) == .bytes([1]))

        for reason in ProxyRefusal.allCases {
            try waitFor(timeout: 5, "\(reason)") { try Self.refusals(server, reason) == 1 }
        }
        // Only the two LOCAL connections became sessions: one ended by its health check, one still open.
        try waitFor(timeout: 5, "the health check's session ended") {
            try server.scrape()[#"teltonika_disconnects_total{reason="peer_closed"}"#] == 1
        }
        let scrape = try server.scrape()
        #expect(scrape["teltonika_connections_active"] == 1)
        #expect(scrape[#"teltonika_connections_total{result="accepted"}"#] == 2)
        #expect(scrape[#"teltonika_proxy_headers_total{command="local"}"#] == 2)
        #expect(scrape[#"teltonika_proxy_headers_total{command="proxy"}"#] == 0)
        #expect(scrape[#"teltonika_disconnects_total{reason="error"}"#] == 0)
        #expect(
            try Self.loginPeers(server, count: 1).map { $0.hasPrefix("127.0.0.1:") } == [true],
            "LOCAL: the load balancer's own address"
        )
        let lines = server.logs.filter { $0["event"] as? String == "proxy.header_refused" }
        #expect(lines.first?["reason"] as? String == "untrusted")
        #expect((lines.first?["peer"] as? String)?.hasPrefix("127.0.0.5:") == true)
    }

    /// `optional`: anyone may connect without a header (a device from 127.0.0.5, the load balancer itself), a
    /// header from the load balancer names the device, one from anyone else is refused. Failed logins count
    /// against the address the header names (`MAX_LOGIN_FAILURES_PER_IP` 1): 127.0.0.9 is refused once it
    /// failed, 127.0.0.10 behind the same load balancer is not.
    @Test func testOptionalModeAndLoginFailuresByDeviceAddress() throws {
        let server = try ServerProcess(environment: [
            "PROXY_PROTOCOL": "optional", "PROXY_TRUSTED_CIDRS": "127.0.0.1", "MAX_LOGIN_FAILURES_PER_IP": "1",
        ])
        let direct = try DeviceClient(port: server.port, source: "127.0.0.5")
        #expect(try direct.login(Self.imei))
        try direct.send(Self.packet)
        #expect(direct.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 1)))
        let plainFromBalancer = try DeviceClient(port: server.port)
        #expect(try plainFromBalancer.login("356307042441014"))
        let relayed = try DeviceClient(port: server.port)
        try relayed.send(proxyHeaderV4(source: "127.0.0.8") + IMEI("356307042441015")!.loginFrame)
        #expect(relayed.receive(1, timeout: 5) == .bytes([1]))
        let forged = try DeviceClient(port: server.port, source: "127.0.0.6")
        try forged.send(proxyHeaderV4(source: "127.0.0.8"))
        #expect(forged.receive(1, timeout: 5) == .closed([]))

        let failing = try DeviceClient(port: server.port)
        try failing.send(proxyHeaderV4(source: "127.0.0.9") + [0x00, 0x0F] + Array("35630704244101X".utf8))
        #expect(failing.receive(2, timeout: 5) == .closed([0]))
        let again = try DeviceClient(port: server.port)
        try again.send(proxyHeaderV4(source: "127.0.0.9") + IMEI(Self.imei)!.loginFrame)
        #expect(again.receive(1, timeout: 5) == .closed([]), "127.0.0.9 used up its failed logins")
        let neighbour = try DeviceClient(port: server.port)
        try neighbour.send(proxyHeaderV4(source: "127.0.0.10") + IMEI("356307042441016")!.loginFrame)
        #expect(neighbour.receive(1, timeout: 5) == .bytes([1]))

        let peers = try Self.loginPeers(server, count: 4).map { String($0.prefix { $0 != ":" }) }
        #expect(peers == ["127.0.0.5", "127.0.0.1", "127.0.0.8", "127.0.0.10"])
        let refused = try server.waitForLog(event: "server.connection_refused", timeout: 5)
        #expect(refused["reason"] as? String == "login_failures")
        #expect((refused["peer"] as? String)?.hasPrefix("127.0.0.9:") == true)
        #expect(try Self.refusals(server, .untrusted) == 1)
        #expect(try server.scrape()[#"teltonika_proxy_headers_total{command="proxy"}"#] == 4)
        // The forged header's connection is counted as refused at its header, not as closed by its peer.
        try waitFor(timeout: 5) { try server.scrape()[#"teltonika_disconnects_total{reason="proxy_refused"}"#] == 1 }
        #expect(try server.scrape()[#"teltonika_disconnects_total{reason="peer_closed"}"#] == 0)
    }

    /// The TLS port behind HAProxy: the header comes before the ClientHello. HAProxy reaches the server from
    /// 127.0.0.4 (the trusted address); the device (the TLS relay, from 127.0.0.1) logs in over TLS, is ACKed
    /// and is seen as 127.0.0.1.
    @Test func testTLSPortBehindHAProxy() throws {
        let server = try DeviceTLSTests.server(environment: ["PROXY_PROTOCOL": "v2", "PROXY_TRUSTED_CIDRS": "127.0.0.4/32"])
        let haproxy = try HAProxyProcess(backendPort: server.tlsPort, backendSource: "127.0.0.4")
        let relay = try TLSRelay(tlsPort: haproxy.port, options: ["--ca", DeviceTLSTests.certificates.caFile])
        let device = try DeviceClient(port: relay.port)
        #expect(try device.login(Self.imei))
        try device.send(Self.packet)
        #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 1)))
        let peers = try Self.loginPeers(server, count: 1)
        #expect(peers.map { $0.hasPrefix("127.0.0.1:") } == [true], "\(peers)")
        let scrape = try server.scrape()
        #expect(scrape[#"teltonika_proxy_headers_total{command="proxy"}"#] == 1)
        #expect(scrape[#"teltonika_tls_handshakes_total{result="ok",version="tls1.3"}"#] == 1)
        #expect(try RedisClient(url: TestEnvironment.redisURL).entries(server.stream).count == 1)
        // A client that is no TLS client: its failed handshake is logged with its own address, not HAProxy's.
        let notTLS = try DeviceClient(port: haproxy.port)
        try notTLS.send(Array("hello, no ClientHello here\r\n".utf8))
        let failed = try server.waitForLog(event: "tls.handshake_failed", timeout: 10)
        #expect((failed["peer"] as? String)?.hasPrefix("127.0.0.1:") == true, "\(failed)")
    }
}
