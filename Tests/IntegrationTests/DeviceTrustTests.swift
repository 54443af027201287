import Codec8
import FixtureSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 13 against the real binary over real TCP: one hostile address cannot take the port from
/// devices at other addresses; a slowloris frame is cut at FRAME_TIMEOUT_MS.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
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
        // Counted when the server has seen the connection go, which may follow the device seeing it close.
        try waitFor(timeout: 5) { try server.scrape().value(#"teltonika_disconnects_total{reason="frame_timeout"}"#) == 1 }
        let line = try server.waitForLog(event: "frame.timeout", timeout: 1)
        #expect(line["timeout_ms"] as? Int == 1500)
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        try device.send(Self.frame)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]))
    }
}

/// Device authority (issue 13): file and Redis allowlists against the real binary and a real Redis.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct DeviceAuthorityTests {
    static let known = "356307042441013"
    static let other = "356307042441014"

    static func allowlistFile(_ text: String) throws -> URL {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("allowlist-\(UUID().uuidString).txt")
        try text.write(to: file, atomically: true, encoding: .utf8)
        return file
    }

    /// File mode: only listed IMEIs log in; SIGHUP swaps the list, closes the connection of a device
    /// taken off it and admits the one added; a bad file keeps the last good list.
    @Test func testFileAllowlistAndSIGHUP() throws {
        let file = try Self.allowlistFile("# fleet A\n\(Self.known)  # truck 7\n\n")
        defer { try? FileManager.default.removeItem(at: file) }
        let server = try ServerProcess(environment: ["DEVICE_AUTHORITY_MODE": "file", "DEVICE_ALLOWLIST_FILE": file.path])
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.known))
        try device.send(DeviceTrustTests.frame)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]))
        let stranger = try DeviceClient(port: server.port)
        try stranger.send(IMEI(Self.other)!.loginFrame)
        #expect(stranger.receive(2, timeout: 5) == .closed([0]))
        var scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_handshake_total{result="unknown_device"}"#) == 1)
        #expect(try scrape.value("teltonika_allowlist_size") == 1)
        #expect(try scrape.value(#"teltonika_allowlist_refreshes_total{result="ok"}"#) == 1)
        #expect(try scrape.value("teltonika_allowlist_last_success_timestamp_seconds") > 1_700_000_000)
        let unknown = try server.waitForLog(event: "device.unknown", timeout: 1)
        #expect(unknown["imei"] as? String == Self.other)
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == 1)

        // The list now holds the other IMEI only: SIGHUP closes the known device's live connection.
        try "\(Self.other)\n".write(to: file, atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        #expect(device.receive(4, timeout: 10) == .closed([]))
        try waitFor(timeout: 5) { try server.scrape().value(#"teltonika_disconnects_total{reason="revoked"}"#) == 1 }
        let loaded = try server.waitForLog(event: "allowlist.loaded", timeout: 5, count: 2)
        #expect(loaded["removed"] as? Int == 1 && loaded["added"] as? Int == 1 && loaded["connections_closed"] as? Int == 1)
        #expect(try DeviceClient(port: server.port).login(Self.other))

        // A bad line: the refresh fails, the last good list stays in force.
        try "\(Self.other)\nnot-an-imei\n".write(to: file, atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        let failed = try server.waitForLog(event: "allowlist.refresh_failed", timeout: 5)
        #expect((failed["error"] as? String)?.contains(":2: not an IMEI") == true)
        scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_allowlist_refreshes_total{result="failed"}"#) == 1)
        #expect(try scrape.value("teltonika_allowlist_size") == 1)
        #expect(try DeviceClient(port: server.port).login(Self.other))
        #expect(try server.http("/readyz").status == 200)
    }

    /// Redis mode: SADD and SREM while a device sends are picked up at the next refresh; Redis stalled
    /// during a refresh keeps the last list (logins go on), and its return refreshes again.
    @Test func testRedisAllowlistFollowsSADDAndSREMUnderLoad() throws {
        let redis = try OwnRedis()
        defer { redis.resume() }
        let client = try RedisClient(url: redis.url)
        let key = "allowlist:\(UUID().uuidString)"
        _ = try client.command(["SADD", key, Self.known])
        let server = try ServerProcess(
            redisURL: redis.url,
            environment: [
                "DEVICE_AUTHORITY_MODE": "redis", "REDIS_DEVICE_ALLOWLIST_KEY": key, "DEVICE_ALLOWLIST_REFRESH_MS": "1000",
                "REDIS_TIMEOUT_MS": "300",
            ]
        )
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.known))
        #expect(try server.scrape().value("teltonika_allowlist_size") == 1)
        // Under load: the device keeps sending while the set changes.
        _ = try client.command(["SADD", key, Self.other])
        _ = try client.command(["SREM", key, Self.known])
        var acked = 0
        var revoked = false
        let deadline = Date().addingTimeInterval(15)
        while !revoked && Date() < deadline {
            try? device.send(try LifecycleTests.packet(records: 1, at: 1_700_000_000_000 + UInt64(acked)))
            switch device.receive(4, timeout: 5) {
            case .bytes: acked += 1
            case .closed, .timeout: revoked = true
            }
        }
        #expect(revoked, "the removed device was never disconnected")
        #expect(acked > 0)
        // Every ACKed record stored; the packet in flight at the close may be stored too, unACKed.
        let stored = try RedisClient(url: redis.url).xlen(server.stream)
        #expect(stored == acked || stored == acked + 1, "\(stored) stored, \(acked) ACKed")
        #expect(try DeviceClient(port: server.port).login(Self.other))
        let stranger = try DeviceClient(port: server.port)
        try stranger.send(IMEI(Self.known)!.loginFrame)
        #expect(stranger.receive(2, timeout: 5) == .closed([0]))

        // Redis stalled: refreshes fail, the last list stays (a login needs no Redis).
        redis.pause()
        try waitFor(timeout: 10, "a refresh failed") {
            try server.scrape().value(#"teltonika_allowlist_refreshes_total{result="failed"}"#) >= 1
        }
        #expect(try DeviceClient(port: server.port).login(Self.other))
        redis.resume()
        let failedBefore = try server.scrape().value(#"teltonika_allowlist_refreshes_total{result="ok"}"#)
        try waitFor(timeout: 10, "refreshed again") {
            try server.scrape().value(#"teltonika_allowlist_refreshes_total{result="ok"}"#) > failedBefore
        }
    }

    /// No list ever loaded (the file is missing at start): not ready, every login refused; once the file
    /// is there, SIGHUP loads it and the server is ready.
    @Test func testNotReadyAndNoLoginsUntilAListIsLoaded() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("allowlist-\(UUID().uuidString).txt")
        defer { try? FileManager.default.removeItem(at: file) }
        let server = try ServerProcess(environment: ["DEVICE_AUTHORITY_MODE": "file", "DEVICE_ALLOWLIST_FILE": file.path])
        try waitFor(timeout: 10) { try server.scrape().value("teltonika_redis_up") == 1 }
        let ready = try server.http("/readyz")
        #expect(ready.status == 503)
        #expect(ready.body.contains("allowlist not loaded"), "\(ready.body)")
        let device = try DeviceClient(port: server.port)
        try device.send(IMEI(Self.known)!.loginFrame)
        #expect(device.receive(2, timeout: 5) == .closed([0]))
        let line = try server.waitForLog(event: "device.unknown", timeout: 1)
        #expect(line["allowlist"] as? String == "not_loaded")
        try "\(Self.known)\n".write(to: file, atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        try waitFor(timeout: 5) { try server.http("/readyz").status == 200 }
        #expect(try DeviceClient(port: server.port).login(Self.known))
    }

    /// UDP: a datagram from an IMEI not on the list gets no ACK and stores nothing.
    @Test func testUDPDatagramsFromUnknownDevicesAreDropped() throws {
        let fixture = FixtureCorpus.udpDatagrams[0]
        let file = try Self.allowlistFile("\(Self.known)\n")
        defer { try? FileManager.default.removeItem(at: file) }
        let server = try ServerProcess(
            environment: ["DEVICE_AUTHORITY_MODE": "file", "DEVICE_ALLOWLIST_FILE": file.path, "UDP_PORT": "0"]
        )
        let udp = try UDPDeviceClient(port: server.udpPort)
        try udp.send(fixture.bytes)  // IMEI 352093086403655: not on the list
        try waitFor(timeout: 5) { try server.scrape().value(#"teltonika_udp_datagrams_total{result="unknown_device"}"#) == 1 }
        #expect(udp.receive(timeout: 0.2) == nil)
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == 0)
        try udp.send(try UDPServerTests.datagram(imei: IMEI(Self.known)!, id: 1))
        #expect(udp.receive(timeout: 10).flatMap(UDPAck.init)?.acceptedRecords == 1)
    }
}
