import Codec8
import FixtureSupport
import Foundation
import RedisWire
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The publisher against Redis servers that need a password and a database, listen on a unix
/// socket, or stall; and the full-queue policy.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct PublisherFaultTests {
    static let frame = TestEnvironment.fixtures.first { $0.id == "w-c8-3" }!.bytes

    @Test func testPasswordUserAndDatabaseAreUsed() throws {
        let redis = try OwnRedis(arguments: ["--requirepass", "s3cret:pw", "--user", "ingest", "on", ">u-pass", "~*", "+@all"]) { port, _ in
            "redis://127.0.0.1:\(port)"
        }
        // The default user with its password, database 3.
        let server = try ServerProcess(redisURL: "redis://:s3cret%3Apw@127.0.0.1:\(redis.port)/3")
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        try device.send(PublisherFaultTests.frame)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        #expect(try RedisClient(url: "redis://:s3cret%3Apw@127.0.0.1:\(redis.port)/3").xlen(server.stream) == 2)
        #expect(try RedisClient(url: "redis://:s3cret%3Apw@127.0.0.1:\(redis.port)/0").xlen(server.stream) == 0)
        // A named ACL user.
        let named = try ServerProcess(redisURL: "redis://ingest:u-pass@127.0.0.1:\(redis.port)")
        let other = try DeviceClient(port: named.port)
        #expect(try other.login("356307042441013"))
        try other.send(PublisherFaultTests.frame)
        #expect(other.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        // A wrong password never gets an ACK.
        let wrong = try ServerProcess(redisURL: "redis://:nope@127.0.0.1:\(redis.port)", environment: ["PUBLISH_TIMEOUT_MS": "1000"])
        let refused = try DeviceClient(port: wrong.port)
        #expect(try refused.login("356307042441013"))
        try refused.send(PublisherFaultTests.frame)
        #expect(refused.receive(4, timeout: 10) == .closed([]))
        #expect(wrong.logs.contains { ($0["error"] as? String)?.hasPrefix("auth") == true })
    }

    @Test func testUnixSocket() throws {
        let redis = try OwnRedis(arguments: ["--unixsocket", "$DIR/redis.sock", "--unixsocketperm", "700"]) { _, dir in
            "unix://\(dir)/redis.sock"
        }
        let server = try ServerProcess(redisURL: redis.url + "?db=2")
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        try device.send(PublisherFaultTests.frame)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        #expect(try RedisClient(url: redis.url + "?db=2").xlen(server.stream) == 2)
    }

    /// Redis refusing writes (`OOM` at `maxmemory` with `noeviction`) answers with an error reply: counted
    /// and logged, never ACKed, retried with backoff on the same connection until Redis takes it; then
    /// ACKed once and stored once.
    @Test func testErrorRepliesAreRetriedWithBackoffAndNeverACKed() throws {
        let redis = try OwnRedis(arguments: ["--maxmemory-policy", "noeviction"])
        let server = try ServerProcess(redisURL: redis.url, environment: ["PUBLISH_TIMEOUT_MS": "60000"])
        let client = try RedisClient(url: redis.url)
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        #expect(try client.command(["CONFIG", "SET", "maxmemory", "1"]) == .string("OK"))  // every write refused
        try device.send(PublisherFaultTests.frame)
        let refused = try server.waitForLog(event: "redis.error_reply", timeout: 10)
        #expect((refused["error"] as? String ?? "").hasPrefix("OOM"), "\(refused)")
        #expect(device.receive(4, timeout: 1.5) == .timeout([]))
        #expect(try client.xlen(server.stream) == 0)
        let scrape = try server.scrape()
        let replies = try scrape.value("teltonika_redis_errors_total{kind=\"reply\"}")
        #expect(replies >= 2, "retried")
        #expect(replies <= 20, "\(replies) refusals in ~1.5 s: retried without backoff")
        #expect(scrape["teltonika_redis_up"] == 1, "an error reply is not a lost connection")
        #expect(try client.command(["CONFIG", "SET", "maxmemory", "0"]) == .string("OK"))
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        #expect(try client.xlen(server.stream) == 2)
    }

    /// A stream Redis keeps refusing (the responses key holds a string: `WRONGTYPE`) does not hold back
    /// the telemetry behind it: the device message is retried, never stored; AVL packets of another
    /// device are ACKed one after the other as usual.
    @Test func testAStreamRedisRefusesDoesNotHoldBackTheOthers() throws {
        let redis = try OwnRedis()
        // The refused message is given up after 3 s (so that stopping the server does not wait for it).
        let server = try ServerProcess(redisURL: redis.url, environment: ["PUBLISH_TIMEOUT_MS": "3000"])
        let client = try RedisClient(url: redis.url)
        #expect(try client.command(["SET", server.responses, "not a stream"]) == .string("OK"))
        let message = try #require(TestEnvironment.fixtures.first { $0.expect.hasPrefix("message:") })
        let talker = try DeviceClient(port: server.port)
        #expect(try talker.login("356307042441013"))
        try talker.send(message.bytes)
        let refused = try server.waitForLog(event: "redis.error_reply", timeout: 10)
        #expect((refused["error"] as? String ?? "").hasPrefix("WRONGTYPE"), "\(refused)")
        let tracker = try DeviceClient(port: server.port)
        #expect(try tracker.login("356307042441014"))
        for round in 0..<10 {
            let record = AVLRecord(timestampMs: 1_700_000_000_000 + UInt64(round), ioElements: [IOElement(id: 1, value: .u8(1))])
            try tracker.send(try AVLPacketEncoder.encode([record], codec: .codec8))
            // Far below the 5 s backoff cap a refusal may wait: the telemetry does not wait for it.
            #expect(tracker.receive(4, timeout: 4) == .bytes([0, 0, 0, 1]), "round \(round)")
        }
        #expect(try client.xlen(server.stream) == 10)
        #expect(try server.scrape().value("teltonika_redis_errors_total{kind=\"reply\"}") >= 2)
        let lost = try server.waitForLog(event: "publish.message_failed", timeout: 10)
        #expect(lost["codec"] as? String == "12")
    }

    /// `CLIENT PAUSE ... WRITE` stalls the XADD past `REDIS_TIMEOUT_MS`: the write is in doubt, so no
    /// ACK; the publisher reconnects and sends it again, and the ACK follows once Redis writes again.
    @Test func testPausedWritesTimeOutUnACKedAndAreSentAgain() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(redisURL: redis.url, environment: ["REDIS_TIMEOUT_MS": "300", "PUBLISH_TIMEOUT_MS": "60000"])
        let client = try RedisClient(url: redis.url)
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        try waitFor(timeout: 10) { try server.http("/readyz").status == 200 }
        #expect(try client.command(["CLIENT", "PAUSE", "2000", "WRITE"]) == .string("OK"))
        try device.send(PublisherFaultTests.frame)
        try server.waitForLog(event: "redis.connection_lost", timeout: 5)
        #expect(device.receive(4, timeout: 0.5) == .timeout([]), "no ACK for a write in doubt")
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        let stored = try client.xlen(server.stream)
        #expect(stored == 2 || stored == 4, "once, or twice when the timed-out write was applied: \(stored)")
        #expect(try server.scrape().value("teltonika_redis_errors_total{kind=\"timeout\"}") >= 1)
    }

    /// REDIS_URL names a read-only replica (a failover moved the primary, no Sentinel configured): every
    /// write is refused READONLY while Redis is up. No ACK; the connection is dropped and made again with a
    /// growing wait (not ten times a second); the packet is given up at PUBLISH_TIMEOUT_MS and counted.
    @Test func testAReadOnlyReplicaIsRefusedCountedAndNotHammered() throws {
        let primary = try OwnRedis()
        let replica = try OwnRedis(arguments: ["--replicaof", "127.0.0.1", "\(primary.port)"])
        let server = try ServerProcess(redisURL: replica.url, environment: ["PUBLISH_TIMEOUT_MS": "3000"])
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        try device.send(PublisherFaultTests.frame)
        let sent = Date()
        #expect(device.receive(4, timeout: 10) == .closed([]), "never ACKed")
        let waited = Date().timeIntervalSince(sent)
        let refusals = server.logs.filter { $0["event"] as? String == "redis.connection_lost" }
        #expect((refusals.first?["error"] as? String)?.contains("READONLY") == true, "\(refusals.first ?? [:])")
        // Backoff 100 ms doubling (jittered 50-100 %): at most about log2 of the wait in 50 ms steps, + 2.
        let bound = Int(log2(max(1, waited / 0.05))) + 2
        #expect(refusals.count >= 2 && refusals.count <= bound, "\(refusals.count) reconnects in \(waited) s (bound \(bound))")
        // Each line says when the next connect comes: 100 ms doubling, jittered to 50-100 %, so never less.
        let waits = refusals.compactMap { $0["retry_in_ms"] as? Int }
        #expect(waits.count == refusals.count && waits.allSatisfy { $0 >= 50 }, "\(refusals)")
        #expect(zip(waits, waits.dropFirst()).allSatisfy { $0 <= $1 }, "growing: \(waits)")
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_publish_failed_total{kind="packet",reason="timeout"}"#) == 1)
        #expect(try scrape.value(#"teltonika_redis_errors_total{kind="reply"}"#) >= Double(refusals.count))
        #expect(try scrape.value("teltonika_acks_total") == 0)
        #expect(try RedisClient(url: primary.url).xlen(server.stream) == 0)
    }

    /// The Redis the server writes to turns into a read-only replica under traffic (REPLICAOF, as a stale
    /// failover leaves the old primary): from then on no packet is ACKed, and /metrics shows it, where before
    /// only the reply errors moved. Made primary again, the same devices are ACKed without a restart.
    @Test func testRedisTurnedReadOnlyUnderTrafficMovesTheCountersOnMetrics() throws {
        let redis = try OwnRedis()
        let elsewhere = try OwnRedis()
        let server = try ServerProcess(redisURL: redis.url, environment: ["PUBLISH_TIMEOUT_MS": "2000"])
        let devices = try (0..<4).map { i in
            let device = try DeviceClient(port: server.port)
            #expect(try device.login(String(356_307_042_441_020 + i)))
            try device.send(PublisherFaultTests.frame)
            #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
            return device
        }
        let before = try server.scrape()
        #expect(try before.value("teltonika_acks_total") == 4)

        #expect(try RedisClient(url: redis.url).command(["REPLICAOF", "127.0.0.1", "\(elsewhere.port)"]) == .string("OK"))
        try waitFor(timeout: 10, "a replica now") {
            guard case .array(let role) = try RedisClient(url: redis.url).command(["ROLE"]) else { return false }
            return role.first == .string("slave")
        }
        for device in devices { try device.send(PublisherFaultTests.frame) }
        for device in devices { #expect(device.receive(4, timeout: 10) == .closed([]), "no ACK from a replica") }
        let during = try server.scrape()
        #expect(try during.value("teltonika_acks_total") == 4)
        #expect(try during.value(#"teltonika_publish_failed_total{kind="packet",reason="timeout"}"#) == 4)
        #expect(
            try during.value(#"teltonika_redis_errors_total{kind="reply"}"#) > before.value(#"teltonika_redis_errors_total{kind="reply"}"#)
        )
        // Counted when the server has seen each connection go, which may follow the device seeing it close.
        try waitFor(timeout: 10) { try server.scrape().value(#"teltonika_disconnects_total{reason="publish_failed"}"#) == 4 }
        #expect(server.logCount(event: "publish.failed") == 4)
        #expect(server.logs.contains { ($0["error"] as? String)?.hasPrefix("READONLY") == true }, "READONLY named in the log")

        #expect(try RedisClient(url: redis.url).command(["REPLICAOF", "NO", "ONE"]) == .string("OK"))
        // The publisher may still be in its reconnect backoff (up to 5 s, past PUBLISH_TIMEOUT_MS): a packet
        // given up meanwhile is closed unACKed, as any device sees it, and sent again.
        var given = 0
        try waitFor(timeout: 30, "ACKed again once it is a primary") {
            let device = try DeviceClient(port: server.port)
            guard try device.login("356307042441030") else { return false }
            try device.send(PublisherFaultTests.frame)
            if device.receive(4, timeout: 15) == .bytes([0, 0, 0, 2]) { return true }
            given += 1
            return false
        }
        #expect(try server.scrape().value("teltonika_acks_total") == 5)
        #expect(try server.scrape().value(#"teltonika_publish_failed_total{kind="packet",reason="timeout"}"#) == Double(4 + given))
    }

    /// A device message finding the queue full is dropped at once and counted; its connection goes on.
    @Test func testADeviceMessageOnAFullQueueIsDroppedAndTheConnectionStays() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(
            redisURL: redis.url,
            environment: ["PUBLISH_QUEUE_CAPACITY": "255", "REDIS_TIMEOUT_MS": "20000", "PUBLISH_TIMEOUT_MS": "60000"]
        )
        let full = (0..<255).map { AVLRecord(timestampMs: 1_700_000_000_000 + UInt64($0), ioElements: [IOElement(id: 1, value: .u8(1))]) }
        let a = try DeviceClient(port: server.port)
        #expect(try a.login("356307042441013"))
        let b = try DeviceClient(port: server.port)
        #expect(try b.login("356307042441014"))
        redis.pause()
        defer { redis.resume() }
        try a.send(try AVLPacketEncoder.encode(full, codec: .codec8))
        try waitFor(timeout: 10, "the queue is full") { try server.scrape()["teltonika_publish_queue_depth_records"] == 255 }
        try b.send(
            DeviceMessage(codec: .codec13, type: DeviceMessage.typeResponse, timestampSeconds: 1_700_000_000, payload: Array("ok".utf8))
                .encoded()
        )
        let overflow = try server.waitForLog(event: "publish.overflow", timeout: 5)
        #expect(overflow["records"] as? Int == 1)
        #expect(b.receive(1, timeout: 0.5) == .timeout([]), "the connection stays open")
        let scrape = try server.scrape()
        #expect(try scrape.value("teltonika_publish_overflow_total") == 1)
        #expect(try scrape.value(#"teltonika_device_messages_total{codec="13"}"#) == 1)
        redis.resume()
        #expect(a.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 255)))
        try b.send(PublisherFaultTests.frame)
        #expect(b.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]), "the same connection's next packet is ACKed")
        #expect(try RedisClient(url: redis.url).xlen(server.responses) == 0, "the dropped message is not stored")
    }

    /// A device that disconnects while its packet waits for Redis: no ACK reaches it, the queue drains,
    /// nothing ACKed is lost. (Whether the packet was already sent decides if it is stored: both are right;
    /// the unsent case alone is pinned by RedisPublisherTests.testACancelledJobIsDroppedUnsent.)
    @Test func testADeviceGoneWhileItsPacketIsQueued() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(redisURL: redis.url, environment: ["REDIS_TIMEOUT_MS": "20000", "PUBLISH_TIMEOUT_MS": "60000"])
        let a = try DeviceClient(port: server.port)
        #expect(try a.login("356307042441013"))
        var b: DeviceClient? = try DeviceClient(port: server.port)
        #expect(try b!.login("356307042441014"))
        redis.pause()
        defer { redis.resume() }
        try a.send(PublisherFaultTests.frame)
        try waitFor(timeout: 10, "A's packet queued") { try server.scrape()["teltonika_publish_queue_depth_records"] == 2 }
        try b!.send(PublisherFaultTests.frame)
        try waitFor(timeout: 10, "B's packet queued") { try server.scrape()["teltonika_publish_queue_depth_records"] == 4 }
        b = nil  // B closes with its packet queued
        try waitFor(timeout: 5, "B's session ended") { try server.scrape().value("teltonika_connections_active") == 1 }
        redis.resume()
        #expect(a.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        try waitFor(timeout: 10, "the queue drained") { try server.scrape()["teltonika_publish_queue_depth_records"] == 0 }
        let stored = try RedisClient(url: redis.url).xlen(server.stream)
        #expect(stored == 2 || stored == 4, "A's records, and B's if they were sent before it left: \(stored)")
        #expect(try server.scrape().value("teltonika_acks_total") == 1, "only A was ACKed")
        #expect(server.process.isRunning)
    }

    @Test func testFullQueueWaitsThenClosesWithoutACK() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(
            redisURL: redis.url,
            environment: [
                "PUBLISH_QUEUE_CAPACITY": "255", "OVERFLOW_WAIT_MS": "300", "REDIS_TIMEOUT_MS": "20000", "PUBLISH_TIMEOUT_MS": "60000",
            ]
        )
        let big = (0..<200).map { AVLRecord(timestampMs: 1_700_000_000_000 + UInt64($0), ioElements: [IOElement(id: 1, value: .u8(1))]) }
        let small = Array(big.prefix(100))
        let a = try DeviceClient(port: server.port)
        #expect(try a.login("356307042441013"))
        let b = try DeviceClient(port: server.port)
        #expect(try b.login("356307042441014"))
        redis.pause()
        try a.send(try AVLPacketEncoder.encode(big, codec: .codec8))
        try waitFor(timeout: 10, "A's 200 records held") { try server.scrape()["teltonika_publish_queue_depth_records"] == 200 }
        #expect(a.receive(4, timeout: 0.2) == .timeout([]))
        // 200 of 255 records are held: 100 more do not fit. B waits 300 ms, then is closed unACKed.
        try b.send(try AVLPacketEncoder.encode(small, codec: .codec8))
        let sent = Date()
        #expect(b.receive(4, timeout: 5) == .closed([]))
        let waited = Date().timeIntervalSince(sent)
        #expect(waited >= 0.25 && waited < 3, "closed \(waited) s after the packet, OVERFLOW_WAIT_MS 300")
        let overflow = try server.waitForLog(event: "publish.overflow", timeout: 2)
        #expect(overflow["records"] as? Int == 100)
        #expect(try server.scrape().value("teltonika_publish_overflow_total") == 1)
        redis.resume()
        #expect(a.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 200)))
        #expect(try RedisClient(url: redis.url).xlen(server.stream) == 200)
    }
}

/// The process survives running out of file descriptors, and serves again once some are free.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct DescriptorExhaustionTests {
    /// With 64 descriptors: a device connected before the exhaustion keeps being served while the
    /// server holds every descriptor it may, the process lives on, and once clients go, new devices are
    /// served again.
    @Test func testServerSurvivesRunningOutOfFileDescriptors() throws {
        let server = try ServerProcess(launcher: ["/usr/bin/prlimit", "--nofile=64:64", "--"])
        let low = try server.waitForLog(event: "process.fd_limit_low", timeout: 1)
        #expect(low["soft"] as? Int == 64 && low["max_connections"] as? Int == 10000, "\(low)")
        let pid = server.process.processIdentifier
        // Descriptors numbered below the limit (0-63): when all 64 are taken, no new one can be made. (The
        // process may also hold higher ones inherited from the test runner; they do not count.)
        func openDescriptors() -> Int {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
            return names.compactMap { Int($0) }.filter { $0 < 64 }.count
        }
        let early = try DeviceClient(port: server.port)
        #expect(try early.login("356307042441013"))

        var clients: [DeviceClient] = []
        for i in 0..<120 {
            let client = try DeviceClient(port: server.port)  // the kernel completes the handshake from the backlog
            try client.send(IMEI("3500000000\(String(format: "%05d", i))")!.loginFrame)
            clients.append(client)
        }
        var most = 0
        do {
            try waitFor(timeout: 10, "the server holds all 64 descriptors") {
                most = max(most, openDescriptors())
                return most == 64
            }
        } catch {
            Issue.record("at most \(most) descriptors open, now \(openDescriptors())")
            throw error
        }
        let loggedIn = clients.filter { $0.receive(1, timeout: 0.05) == .bytes([1]) }.count
        #expect(loggedIn > 0 && loggedIn < clients.count, "logged in: \(loggedIn) of \(clients.count)")

        // Out of descriptors, the device connected before is still served (ACK after Redis).
        try early.send(TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes)
        #expect(early.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]))
        #expect(openDescriptors() == 64, "still exhausted while it was served")
        #expect(server.process.isRunning)

        let refused = try server.waitForLog(event: "server.accept_failed", timeout: 5)
        #expect(refused["reason"] as? String == "fd_limit", "\(refused)")
        clients.removeAll()  // closes every socket
        try waitFor(timeout: 10, "descriptors released") { openDescriptors() < 40 }
        #expect(try server.scrape().value(#"teltonika_accept_errors_total{reason="fd_limit"}"#) >= 1)
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441014"))
        try device.send(TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]))
        #expect(server.process.isRunning)
    }

    /// A soft limit below the hard one is raised at start: the process can hold as many descriptors as
    /// the hard limit allows.
    @Test func testTheSoftLimitIsRaisedToTheHardOne() throws {
        let server = try ServerProcess(environment: ["MAX_CONNECTIONS": "100"], launcher: ["/usr/bin/prlimit", "--nofile=64:512", "--"])
        let limit = try server.waitForLog(event: "process.fd_limit", timeout: 1)
        #expect(limit["soft_before"] as? Int == 64 && limit["soft"] as? Int == 512 && limit["hard"] as? Int == 512)
        #expect(server.logCount(event: "process.fd_limit_low") == 0, "512 is enough for 100 connections")
        #expect(try server.scrape().value("process_max_fds") == 512)
    }
}
