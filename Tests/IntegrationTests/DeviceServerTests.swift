import Codec8
import FixtureSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real binary against a real redis-server over real TCP.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct DeviceServerTests {
    static let imei = "356307042441013"

    /// Checks that the stream holds exactly `ids`' expected records, in order, for `imei`, each with the
    /// `record_id` of its bytes (pinned against xxhsum in `RecordIDTests`).
    static func expectStreamHolds(_ ids: [String], stream: String, imei: String = imei, redis: RedisClient? = nil) throws {
        let entries = try (redis ?? RedisClient(url: TestEnvironment.redisURL)).entries(stream)
        let expected = ids.flatMap { TestEnvironment.expectedRecords[$0]! }
        let ids16 = try ids.flatMap { id in try TestEnvironment.fixtures.first { $0.id == id }!.recordIDs(imei: imei) }
        try #require(entries.count == expected.count, "stream has \(entries.count) entries, expected \(expected.count)")
        for ((entry, want), recordID) in zip(zip(entries, expected), ids16) {
            #expect(entry["device_id"] == imei)
            #expect(entry["record_id"] == recordID)
            #expect(entry["codec"] == want["codec"] as? String)
            #expect(entry["ts"] == want["timestamp"] as? String)
            let payload = try JSONSerialization.jsonObject(with: Data((entry["payload"] ?? "").utf8)) as! [String: Any]
            #expect(payload["device_id"] as? String == imei)
            for (key, value) in want {
                #expect(jsonEqual(payload[key], value), "\(key): \(String(describing: payload[key])) != \(value)")
            }
        }
    }

    /// A device that missed its ACK sends the packet again: both copies are stored, under the same
    /// `record_id` (the pinned value of w-c8-1's record for this IMEI), so consumers can drop the second.
    @Test func testResentRecordKeepsItsRecordID() throws {
        let server = try ServerProcess()
        let frame = TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes
        for _ in 0..<2 {
            let device = try DeviceClient(port: server.port)
            #expect(try device.login(DeviceServerTests.imei))
            try device.send(frame)
            #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 1)))
        }
        let entries = try RedisClient(url: TestEnvironment.redisURL).entries(server.stream)
        #expect(entries.map { $0["record_id"] } == ["d8961f926a0bf0cb", "d8961f926a0bf0cb"])
    }

    @Test func testHandshakeAcceptAndReject() throws {
        let server = try ServerProcess()
        let good = try DeviceClient(port: server.port)
        #expect(try good.login(DeviceServerTests.imei))
        let bad = try DeviceClient(port: server.port)
        try bad.send([0x00, 0x0F] + Array("35630704244101X".utf8))
        #expect(bad.receive(2, timeout: 5) == .closed([0]))
        let garbage = try DeviceClient(port: server.port)
        try garbage.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        #expect(garbage.receive(2, timeout: 5) == .closed([0]))
        try server.waitForLog(event: "device.login_rejected", timeout: 5, count: 2)
    }

    /// Every fixture frame after a login gets its answer, sent whole, one byte at a time, or with keep-alives.
    @Test(arguments: ["whole", "dribble", "keepalive"])
    func testEveryFixtureFrameGetsTheRightAnswer(_ style: String) throws {
        try Self.expectEveryFixtureAnswered(by: try ServerProcess(), style: style, redis: RedisClient(url: TestEnvironment.redisURL))
    }

    /// Sends every fixture frame after a login (`style`: whole, dribble or keepalive) and checks each
    /// answer, then that `redis` holds exactly the records ACKed and the device messages. Each device
    /// connects to `port` (default: the server's TCP port).
    static func expectEveryFixtureAnswered(by server: ServerProcess, style: String, redis: RedisClient, port: Int? = nil) throws {
        let probe = TestEnvironment.fixtures.first { $0.id == "w-c8-2" }!.bytes
        var stored: [String] = []
        for fixture in TestEnvironment.fixtures where fixture.expect != "imei" {
            let device = try DeviceClient(port: port ?? server.port)
            #expect(try device.login(DeviceServerTests.imei), "\(fixture.id)")
            // A keep-alive after a truncated frame would be read as its missing bytes, so only before it.
            let trailer: [UInt8] = fixture.expect == "error:truncated" ? [] : [0xFF]
            let bytes = style == "keepalive" ? [0xFF, 0xFF] + fixture.bytes + trailer : fixture.bytes
            if style == "dribble" { try device.dribble(bytes) } else { try device.send(bytes) }
            if fixture.expect.hasPrefix("avl:") {
                let n = UInt32(fixture.expect.dropFirst(4))!
                #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: n)), "\(fixture.id)")
                stored.append(fixture.id)
            } else if fixture.expect.hasPrefix("message:") {
                // No ACK for a message: the next 4 bytes are the ACK of the probe packet sent after it.
                try device.send(probe)
                #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 1)), "\(fixture.id)")
                stored.append("w-c8-2")
            } else if fixture.expect == "error:truncated" {
                // The rest of the frame may still come: no answer; when the device gives up, the server closes.
                #expect(device.receive(4, timeout: 0.5) == .timeout([]), "\(fixture.id)")
                device.shutdownWrite()
                #expect(device.receive(4, timeout: 10) == .closed([]), "\(fixture.id) must close without ACK")
            } else {
                #expect(device.receive(4, timeout: 10) == .closed([]), "\(fixture.id) must close without ACK")
            }
        }
        try DeviceServerTests.expectStreamHolds(stored, stream: server.stream, redis: redis)
        try server.waitForLog(event: "frame.truncated", timeout: 2, count: 2)
        let messages = TestEnvironment.fixtures.filter { $0.expect.hasPrefix("message:") }.count
        let responses = try redis.entries(server.responses)
        #expect(responses.count == messages)
        for entry in responses {
            #expect(["12", "13", "14", "15"].contains(entry["codec"] ?? ""))
            let payload = try JSONSerialization.jsonObject(with: Data((entry["payload"] ?? "").utf8)) as? [String: Any]
            #expect(payload?["device_id"] as? String == DeviceServerTests.imei)
            #expect(payload?["codec"] as? String == entry["codec"])
            #expect((payload?["type"] as? NSNumber)?.stringValue == entry["type"])
            #expect(payload?["payload_hex"] is String)
        }
        #expect(responses.contains { ($0["payload"] ?? "").contains("\"text\":\"Ver:03.18.14_04") })
    }

    /// Only the 8-byte header of a frame declaring 4 GiB: the connection closes within a second, before
    /// any body arrives, and nothing was even reserved for it (VmPeak, which an untouched 4 GiB
    /// allocation would raise where RSS would not, stays put).
    @Test func testMaliciousLengthClosesAtOnceAndMemoryDoesNotMove() throws {
        let server = try ServerProcess()
        let warm = try DeviceClient(port: server.port)
        #expect(try warm.login(DeviceServerTests.imei))
        let peakBefore = vmPeakKiB(pid: server.process.processIdentifier)
        for _ in 0..<50 {
            let device = try DeviceClient(port: server.port)
            #expect(try device.login(DeviceServerTests.imei))
            try device.send([0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
            #expect(device.receive(4, timeout: 1) == .closed([]), "closed within 1 s on the header alone")
        }
        let peakAfter = vmPeakKiB(pid: server.process.processIdentifier)
        #expect(peakBefore > 0 && peakAfter - peakBefore < 64 * 1024, "VmPeak grew from \(peakBefore) to \(peakAfter) KiB")
        // The log lines may trail the closes: wait for the 50th, then no more than 50.
        _ = try server.waitForLog(event: "frame.rejected", timeout: 5, count: 50)
        #expect(server.logs.filter { $0["error"] as? String == "too_large" }.count == 50)
        #expect(try server.scrape()[#"teltonika_frames_total{codec="unknown",result="too_large"}"#] == 50)
    }

    /// Both timeouts from both sides: not before the configured time (less a small margin), not long
    /// after; a keep-alive byte restarts the idle timer.
    @Test func testHandshakeAndIdleTimeoutsClose() throws {
        let server = try ServerProcess(environment: ["HANDSHAKE_TIMEOUT_MS": "300", "IDLE_TIMEOUT_MS": "1000"])
        let silent = try DeviceClient(port: server.port)
        let connected = Date()
        #expect(silent.receive(1, timeout: 3) == .closed([]))
        let handshake = Date().timeIntervalSince(connected)
        #expect(handshake >= 0.25 && handshake < 1.5, "closed after \(handshake) s, HANDSHAKE_TIMEOUT_MS 300")
        _ = try server.waitForLog(event: "device.handshake_timeout", timeout: 2)

        let idle = try DeviceClient(port: server.port)
        #expect(try idle.login(DeviceServerTests.imei))
        // A keep-alive every 400 ms for 2.4 s (more than twice the idle timeout): the connection stays.
        var lastByte = Date()
        for _ in 0..<6 {
            try idle.send([0xFF])
            lastByte = Date()
            #expect(idle.receive(1, timeout: 0.4) == .timeout([]), "keep-alives restart the idle timer")
        }
        #expect(idle.receive(1, timeout: 4) == .closed([]))
        let silence = Date().timeIntervalSince(lastByte)
        #expect(silence >= 0.95 && silence < 2.5, "closed \(silence) s after the last keep-alive, IDLE_TIMEOUT_MS 1000")
        _ = try server.waitForLog(event: "device.idle_timeout", timeout: 2)
        // A disconnect is counted when the connection has closed, which may trail the log line.
        try waitFor(timeout: 5) {
            try server.scrape().value(#"teltonika_disconnects_total{reason="idle_timeout"}"#) >= 1
        }
        let scrape = try server.scrape()
        #expect(try scrape.value("teltonika_keepalive_total") == 6)
        #expect(try scrape.value(#"teltonika_handshake_total{result="timeout"}"#) == 1)
        #expect(try scrape.value(#"teltonika_disconnects_total{reason="handshake_timeout"}"#) == 1)
        #expect(try scrape.value(#"teltonika_disconnects_total{reason="idle_timeout"}"#) == 1)
    }

    /// A device that resets its connection (RST): one `device.connection_error` line, the session ends
    /// and its slot is free; the server serves on.
    @Test func testAResetConnectionIsLoggedAndEnds() throws {
        let server = try ServerProcess()
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(DeviceServerTests.imei))
        try device.send([0, 0, 0, 0])  // half a header: the server waits for the rest
        device.reset()
        let error = try server.waitForLog(event: "device.connection_error", timeout: 5)
        #expect((error["error"] as? String)?.contains("reset") == true, "\(error)")
        try waitFor(timeout: 5, "the session ended") { try server.scrape().value("teltonika_connections_active") == 0 }
        let next = try DeviceClient(port: server.port)
        #expect(try next.login(DeviceServerTests.imei))
    }

    @Test func testNewerLoginReplacesTheOlderConnection() throws {
        let server = try ServerProcess()
        let old = try DeviceClient(port: server.port)
        #expect(try old.login(DeviceServerTests.imei))
        let new = try DeviceClient(port: server.port)
        #expect(try new.login(DeviceServerTests.imei))
        #expect(old.receive(1, timeout: 3) == .closed([]))
        try new.send(TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes)
        #expect(new.receive(4, timeout: 5) == .bytes([0, 0, 0, 1]))
        try server.waitForLog(event: "device.replaced", timeout: 2)
        // One device online (the replaced connection does not count twice), then a second, then none.
        #expect(try server.scrape().value("teltonika_devices_online") == 1)
        #expect(try server.scrape().value("teltonika_connections_replaced_total") == 1)
        var other: DeviceClient? = try DeviceClient(port: server.port)
        #expect(try other!.login("356307042441014"))
        #expect(try server.scrape().value("teltonika_devices_online") == 2)
        other = nil
        try waitFor(timeout: 5, "the second device is offline") { try server.scrape().value("teltonika_devices_online") == 1 }
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_disconnects_total{reason="replaced"}"#) == 1, "the old connection, closed by its own handler")
        #expect(try scrape.value(#"teltonika_disconnects_total{reason="peer_closed"}"#) == 1, "the second device hung up")
    }

    @Test func testConnectionsBeyondTheLimitAreRefused() throws {
        let server = try ServerProcess(environment: ["MAX_CONNECTIONS": "2"])
        let a = try DeviceClient(port: server.port)
        let b = try DeviceClient(port: server.port)
        #expect(try a.login("356307042441013"))
        #expect(try b.login("356307042441014"))
        let c = try DeviceClient(port: server.port)
        #expect(c.receive(1, timeout: 3) == .closed([]))
        try server.waitForLog(event: "server.connection_refused", timeout: 2)
    }

    @Test func testRedisDownMeansNoACKUntilItIsBack() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(redisURL: redis.url, environment: ["PUBLISH_TIMEOUT_MS": "60000", "REDIS_TIMEOUT_MS": "500"])
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(DeviceServerTests.imei))
        let frame = TestEnvironment.fixtures.first { $0.id == "w-c8-3" }!.bytes
        try device.send(frame)
        #expect(device.receive(4, timeout: 5) == .bytes([0, 0, 0, 2]))
        redis.stop()
        try device.send(frame)
        #expect(device.receive(4, timeout: 2) == .timeout([]), "no ACK while Redis is down")
        try redis.start()
        #expect(device.receive(4, timeout: 15) == .bytes([0, 0, 0, 2]), "ACK once Redis is back")
        // The restarted Redis has no persistence: it holds exactly the records ACKed since.
        #expect(try RedisClient(url: redis.url).xlen(server.stream) == 2)
        try server.waitForLog(event: "redis.connected", timeout: 1, count: 2)
    }

    @Test func testRedisThatNeverComesBackClosesWithoutACK() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(redisURL: redis.url, environment: ["PUBLISH_TIMEOUT_MS": "1000", "REDIS_TIMEOUT_MS": "200"])
        redis.stop()
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(DeviceServerTests.imei))
        try device.send(TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes)
        let sent = Date()
        #expect(device.receive(4, timeout: 10) == .closed([]))
        let waited = Date().timeIntervalSince(sent)
        #expect(waited >= 0.9 && waited < 4, "closed \(waited) s after the packet, PUBLISH_TIMEOUT_MS 1000")
        _ = try server.waitForLog(event: "publish.failed", timeout: 2)
        let scrape = try server.scrape()
        #expect(try scrape.value("teltonika_acks_total") == 0)
        #expect(try scrape.value(#"teltonika_publish_failed_total{kind="packet",reason="timeout"}"#) == 1)
    }
}
