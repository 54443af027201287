import Codec8
import FixtureSupport
import Foundation
import NIOConcurrencyHelpers
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One hostile client at a time against the real binary (a release of the bounded-memory issue): each
/// flood runs for 10 s from a single connection, the server's RSS must grow by less than 64 MiB, and a
/// normal device on another connection gets its ACK during the flood and after it.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct HostileClientTests {
    static let floodSeconds = 10.0
    static let rssBudgetKiB = 64 * 1024

    /// Samples the server's RSS every 50 ms while a flood runs; a normal device sends one packet every
    /// 500 ms and checks each ACK.
    final class Watch {
        let server: ServerProcess
        let baselineKiB: Int
        private let peak = NIOLockedValueBox(0)
        private let acks = NIOLockedValueBox((sent: 0, acked: 0, wrong: 0))
        private let running = NIOLockedValueBox(true)
        private var threads: [Thread] = []
        let device: DeviceClient
        private var sequence: UInt64 = 0

        init(server: ServerProcess) throws {
            self.server = server
            device = try DeviceClient(port: server.port)
            guard try device.login("356307042440000") else { throw TestFailure("normal device not logged in") }
            // Warm up the normal path once, then take the baseline.
            guard try Watch.roundTrip(device, sequence: 0) else { throw TestFailure("normal device not ACKed before the flood") }
            baselineKiB = server.rssKiB
            peak.withLockedValue { $0 = baselineKiB }
            let pid = server.process.processIdentifier
            let sampler = Thread { [peak, running] in
                while running.withLockedValue({ $0 }) {
                    let rss = rssKiB(pid: pid)
                    peak.withLockedValue { $0 = max($0, rss) }
                    usleep(50_000)
                }
            }
            let normal = Thread { [acks, running, device] in
                var n: UInt64 = 1
                while running.withLockedValue({ $0 }) {
                    let ok = (try? Watch.roundTrip(device, sequence: n)) ?? false
                    acks.withLockedValue {
                        $0.sent += 1
                        if ok { $0.acked += 1 } else { $0.wrong += 1 }
                    }
                    n += 1
                    usleep(500_000)
                }
            }
            threads = [sampler, normal]
            for t in threads { t.start() }
        }

        /// One packet of one record; true when its ACK (1) arrived within 5 s.
        static func roundTrip(_ device: DeviceClient, sequence: UInt64) throws -> Bool {
            let record = AVLRecord(timestampMs: 1_700_000_000_000 + sequence, ioElements: [IOElement(id: 1, value: .u8(1))])
            try device.send(try AVLPacketEncoder.encode([record], codec: .codec8))
            return device.receive(4, timeout: 5) == .bytes([0, 0, 0, 1])
        }

        /// Stops watching; the peak RSS growth (KiB) and the normal device's ACK tally during the flood.
        func finish() -> (growthKiB: Int, sent: Int, acked: Int, wrong: Int) {
            running.withLockedValue { $0 = false }
            while threads.contains(where: { !$0.isFinished }) { usleep(10_000) }
            let tally = acks.withLockedValue { $0 }
            return (peak.withLockedValue { $0 } - baselineKiB, tally.sent, tally.acked, tally.wrong)
        }

        /// After the flood: the normal device still gets its ACK.
        func ackAfter() throws -> Bool { try Watch.roundTrip(device, sequence: 1_000_000) }
    }

    /// A raw socket that writes as fast as the server takes bytes, in odd-sized writes, never reading.
    final class Flooder {
        let fd: Int32
        convenience init(port: Int) throws {
            try self.init(fd: try connectLoopback(port: port))
        }

        init(fd: Int32) throws {
            self.fd = fd
            var tv = timeval(tv_sec: 0, tv_usec: 100_000)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        deinit { close(fd) }

        /// Sends `stream` over and over from where it left off, in writes of the `sizes` in turn, for
        /// `seconds`; returns the bytes the kernel took. Stops early when the server closes.
        func flood(_ stream: [UInt8], sizes: [Int], seconds: Double) -> (bytes: Int, closedByServer: Bool) {
            let end = Date().addingTimeInterval(seconds)
            var offset = 0
            var total = 0
            var turn = 0
            while Date() < end {
                let size = min(sizes[turn % sizes.count], stream.count - offset)
                turn += 1
                let n = stream.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, size, Int32(MSG_NOSIGNAL)) }
                if n > 0 {
                    total += n
                    offset = (offset + n) % stream.count
                } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                    continue
                } else {
                    return (total, true)
                }
            }
            return (total, false)
        }

        /// True once the server has closed the connection (EOF or reset), within `timeout` seconds;
        /// bytes the server sent before are read and dropped.
        func closedByServer(within timeout: Double) -> Bool {
            let end = Date().addingTimeInterval(timeout)
            var buffer = [UInt8](repeating: 0, count: 65536)
            while Date() < end {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 100) > 0 else { continue }
                let n = recv(fd, &buffer, buffer.count, 0)
                if n <= 0 { return true }
            }
            return false
        }
    }

    static func expectBounded(_ watch: Watch, _ what: String) throws {
        let result = watch.finish()
        print(
            "\(what): RSS +\(result.growthKiB) KiB (baseline \(watch.baselineKiB) KiB); normal device \(result.acked)/\(result.sent) ACKed"
        )
        #expect(result.growthKiB < rssBudgetKiB, "\(what): RSS grew \(result.growthKiB) KiB")
        #expect(
            result.sent >= 10 && result.wrong == 0,
            "\(what): the normal device got \(result.acked) of \(result.sent) ACKs during the flood"
        )
        #expect(try watch.ackAfter(), "\(what): the normal device is ACKed after the flood")
    }

    /// A logged-in client streams Codec 13 messages back to back (never ACKed, so nothing would stop
    /// it) in writes that never line up with frames. The per-connection budget stores 50 + 10/s and
    /// drops the rest (counted); the responses stream stays within that; the logs carry a handful of
    /// lines, not one per message.
    @Test func testACodec13StreamFromOneConnection() throws {
        let server = try ServerProcess()
        let watch = try Watch(server: server)
        let flooder = try Flooder(port: server.port)
        try flooder.sendAll(IMEI("356307042449999")!.loginFrame)
        var stream: [UInt8] = []
        for i in 0..<200 {
            stream += DeviceMessage(
                codec: .codec13,
                type: DeviceMessage.typeResponse,
                timestampSeconds: 1_700_000_000,
                payload: Array("answer \(i) ".utf8) + [UInt8](repeating: 0x42, count: 97 * (i % 40))
            ).encoded()
        }
        let started = Date()
        let sent = flooder.flood(stream, sizes: [4093, 1, 7919, 13, 16_411], seconds: Self.floodSeconds)
        let elapsed = Date().timeIntervalSince(started)
        try Self.expectBounded(watch, "Codec 13 stream (\(sent.bytes / 1_048_576) MiB sent)")
        #expect(!sent.closedByServer, "messages are dropped, the connection stays")
        #expect(sent.bytes > 50 * 1_048_576, "the flood was real: \(sent.bytes) bytes")

        // The server may still be reading the flood's last bytes (and storing an admitted message) for a
        // moment after the flood ends: every message decoded is, once that settles, stored or dropped.
        let redis = try RedisClient(url: TestEnvironment.redisURL)
        var (messages, dropped, stored) = (0, 0, 0)
        do {
            try waitFor(timeout: 10, "every message stored or dropped") {
                let scrape = try server.scrape()
                messages = Int(try scrape.value("teltonika_device_messages_total{codec=\"13\"}"))
                dropped = Int(try scrape.value("teltonika_device_messages_rate_limited_total"))
                stored = try redis.xlen(server.responses)
                return messages - dropped == stored
            }
        } catch {
            Issue.record("\(messages) messages, \(dropped) dropped, \(stored) stored: every message is either stored or counted as dropped")
        }
        let budget = 50 + Int(10 * (elapsed + 1))
        print("Codec 13 stream: \(messages) messages, \(dropped) dropped, \(stored) stored (budget \(budget))")
        #expect(stored <= budget, "the responses stream holds \(stored), the budget allows \(budget)")
        #expect(stored >= 50, "the burst is stored")
        let messageLines = server.logCount(event: "device.message")
        let limitedLines = server.logCount(event: "device.message_rate_limited")
        #expect(messageLines >= 1 && messageLines <= Int(elapsed / 10) + 2, "\(messageLines) device.message lines")
        #expect(limitedLines >= 1 && limitedLines <= Int(elapsed / 10) + 2, "\(limitedLines) rate-limit lines")
    }

    /// One client opens 300 connections and never logs in: each is closed at the handshake timeout and
    /// counted, but the log gets the sampler's burst (50 lines, then 5 a second), not 300 lines. Each line
    /// says how many were left out before it, so once one more timeout is logged later, the lines and
    /// their `suppressed` counts add up to every timeout.
    @Test func testHandshakeTimeoutsFromOneClientAreSampledInTheLog() throws {
        let server = try ServerProcess(environment: ["HANDSHAKE_TIMEOUT_MS": "500", "MAX_LOGIN_FAILURES_PER_IP": "0"])
        let connections = try (0..<300).map { _ in try connectLoopback(port: server.port) }
        defer { for fd in connections { close(fd) } }
        let timeouts = #"teltonika_disconnects_total{reason="handshake_timeout"}"#
        try waitFor(timeout: 30, "300 handshake timeouts") { try server.scrape()[timeouts] == 300 }
        // One more, after the sampler has earned a token again (0.2 s at 5 a second): its line reports the rest.
        usleep(300_000)
        let late = try connectLoopback(port: server.port)
        defer { close(late) }
        try waitFor(timeout: 10, "the late timeout") { try server.scrape()[timeouts] == 301 }
        func lines() -> [[String: Any]] { server.logs.filter { $0["event"] as? String == "device.handshake_timeout" } }
        try waitFor(timeout: 10, "lines and suppressed counts adding up to 301") {
            lines().reduce(0) { $0 + 1 + ($1["suppressed"] as? Int ?? 0) } == 301
        }
        #expect(lines().count >= 51 && lines().count < 100, "\(lines().count) lines for 301 timeouts")
        #expect(lines().allSatisfy { $0["suppressed"] is Int }, "every line says how many it stands for")
    }

    /// The responses stream's own cap bounds what device messages take in Redis, whatever gets past
    /// the per-connection budget (here the budget is lifted).
    @Test func testTheResponsesCapBoundsRedis() throws {
        let server = try ServerProcess(environment: ["REDIS_RESPONSES_MAXLEN": "1000", "DEVICE_MESSAGE_RATE": "1000000"])
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042449998"))
        var stream: [UInt8] = []
        for i in 0..<5000 {
            stream += DeviceMessage(codec: .codec12, type: DeviceMessage.typeResponse, payload: Array("r\(i)".utf8)).encoded()
        }
        try device.send(stream)
        try waitFor(timeout: 90) { try server.scrape()["teltonika_device_messages_total{codec=\"12\"}"] == 5000 }
        try waitFor(timeout: 10) { try server.scrape()["teltonika_publish_queue_depth_records"] == 0 }
        let length = try RedisClient(url: TestEnvironment.redisURL).xlen(server.responses)
        // MAXLEN ~ trims whole stream nodes (100 entries by default), so a little over the cap.
        #expect(length >= 1000 && length <= 1100, "responses stream length \(length) with REDIS_RESPONSES_MAXLEN=1000")
    }

    /// AVL packets pipelined without waiting for ACKs, and the ACKs never read: the server reads one
    /// packet at a time and stops reading while its ACKs are not taken.
    @Test func testPipelinedAVLWithoutReadingTheACKs() throws {
        let server = try ServerProcess()
        let watch = try Watch(server: server)
        let flooder = try Flooder(port: server.port)
        try flooder.sendAll(IMEI("356307042449997")!.loginFrame)
        // Packets near the frame cap (about 13 KiB: 30 records of 40 IO elements), so the flood carries
        // many megabytes a second even through a debug build.
        let io = (0..<40).map { IOElement(id: UInt16(100 + $0), value: .u64(UInt64($0) * 1_000_003)) }
        var stream: [UInt8] = []
        for i in 0..<20 {
            let records = (0..<30).map { AVLRecord(timestampMs: 1_700_000_000_000 + UInt64(i * 100 + $0), ioElements: io) }
            stream += try AVLPacketEncoder.encode(records, codec: .codec8Extended)
        }
        let sent = flooder.flood(stream, sizes: [4093, 1, 7919, 13, 16_411], seconds: Self.floodSeconds)
        try Self.expectBounded(watch, "pipelined AVL (\(sent.bytes / 1024) KiB sent)")
        #expect(!sent.closedByServer)
        #expect(try server.scrape().value("teltonika_acks_total") > 100, "the flood's packets were handled")
    }

    /// Not hostile at all: one device sending large packets (about 13 KiB, 30 records) one after another
    /// for 10 s, each ACKed. Memory stays flat: nothing keeps a packet's encoded records once Redis has
    /// them. (The publish queue kept each sent job until 1,024 had piled up: about 68 MiB here.)
    @Test func testSteadyLargePacketsKeepMemoryFlat() throws {
        let server = try ServerProcess(environment: ["LOG_LEVEL": "info"])
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042449996"))
        let io = (0..<40).map { IOElement(id: UInt16(100 + $0), value: .u64(UInt64($0) * 1_000_003)) }
        func packet(_ i: Int) throws -> [UInt8] {
            let records = (0..<30).map { AVLRecord(timestampMs: 1_700_000_000_000 + UInt64(i * 100 + $0), ioElements: io) }
            return try AVLPacketEncoder.encode(records, codec: .codec8Extended)
        }
        try device.send(try packet(0))
        #expect(device.receive(4, timeout: 5) == .bytes([0, 0, 0, 30]))
        let baseline = server.rssKiB
        var peak = baseline
        var acked = 1
        let end = Date().addingTimeInterval(Self.floodSeconds)
        while Date() < end {
            try device.send(try packet(acked))
            try #require(device.receive(4, timeout: 5) == .bytes([0, 0, 0, 30]))
            acked += 1
            if acked % 50 == 0 { peak = max(peak, server.rssKiB) }
        }
        peak = max(peak, server.rssKiB)
        print("steady large packets: \(acked) packets ACKed; RSS +\(peak - baseline) KiB (baseline \(baseline) KiB)")
        #expect(acked > 100, "the traffic was real (about 3,000 in a debug build, 400 under ThreadSanitizer)")
        #expect(peak - baseline < 16 * 1024, "RSS grew \(peak - baseline) KiB under steady traffic")
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == 30 * acked)
    }

    /// `GET /metrics` pipelined on one connection, the answers never read: one response at a time is
    /// written, the rest wait unread, and the connection is closed (more than 16 requests waiting, or a
    /// response not taken in 10 s).
    @Test func testPipelinedMetricsRequestsNeverRead() throws {
        let server = try ServerProcess()
        let watch = try Watch(server: server)
        let flooder = try Flooder(port: server.metricsPort)
        let request = Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        let started = Date()
        let sent = flooder.flood(Array((0..<100).map { _ in request }.joined()), sizes: [4093, 1, 333, 16_411], seconds: Self.floodSeconds)
        while Date().timeIntervalSince(started) < Self.floodSeconds { usleep(100_000) }
        #expect(try server.http("/metrics").status == 200, "another scrape is answered meanwhile")
        try Self.expectBounded(watch, "pipelined GET /metrics (\(sent.bytes / 1024) KiB sent)")
        #expect(flooder.closedByServer(within: 15), "the connection is closed")
    }

    /// Each limit of one metrics connection, pushed past from one client: a request head over 8 KiB
    /// gets 400 and a close; pipelined requests never read are bounded (closed at once when more than
    /// 16 wait, else at the write timeout); a response the client does not take within 10 s closes the
    /// connection (not sooner).
    @Test func testEachMetricsConnectionLimit() throws {
        let server = try ServerProcess()

        let big = try Flooder(port: server.metricsPort)
        let header = "X-Filler: " + String(repeating: "a", count: 9 * 1024)
        try big.sendAll(Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\(header)\r\n\r\n".utf8))
        let answer = big.readUntilClosed(within: 5)
        #expect(answer.closed, "an oversized head closes the connection")
        #expect(
            String(decoding: answer.bytes, as: UTF8.self).hasPrefix("HTTP/1.1 400"),
            "\(String(decoding: answer.bytes.prefix(40), as: UTF8.self))"
        )

        let body = try Flooder(port: server.metricsPort)
        try body.sendAll(Array("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".utf8))
        try body.sendAll([UInt8](repeating: 0x61, count: 9 * 1024))
        #expect(body.readUntilClosed(within: 5) == ([], true), "a body over 8 KiB closes the connection, unanswered")

        // A client with a 4 KiB receive window that never reads and pipelines 600 scrapes: the server
        // answers until its send queue is full, then either more than 16 requests of the read in hand wait
        // (closed at once) or the read ended first (closed by the 10 s write timeout): which one depends
        // on where the stall falls in the read, so what is asserted is the bound, timed from the stall
        // (a loaded machine may take long to fill the kernel's buffers first).
        let piling = try Flooder(port: server.metricsPort, receiveBuffer: 4096)
        let scrape = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        try piling.sendAll(Array((0..<600).map { _ in scrape }.joined().utf8))
        var (queued, stuckSince) = (-1, Date())
        try waitFor(timeout: 60) {
            guard let now = piling.serverSendQueue(port: server.metricsPort) else { return true }
            if now != queued { (queued, stuckSince) = (now, Date()) }
            return false
        }
        let stuck = Date().timeIntervalSince(stuckSince)
        #expect(stuck < 13, "closed \(stuck) s after the writes stalled (at once, or at the 10 s write timeout)")

        // One request at a time, each sent once the previous response is in the server's send queue:
        // when a response cannot be written, the connection is closed 10 s after that write began.
        // The server's side is watched in /proc/net/tcp: the client reads nothing, so the FIN waits
        // behind the data.
        let slow = try Flooder(port: server.metricsPort, receiveBuffer: 4096)
        let firstSent = Date()
        var lastSent = Date()
        for _ in 0..<2000 {
            let before = slow.serverSendQueue(port: server.metricsPort) ?? 0
            try slow.sendAll(Array(scrape.utf8))
            lastSent = Date()
            var grew = false
            for _ in 0..<10 {
                usleep(30_000)
                if (slow.serverSendQueue(port: server.metricsPort) ?? 0) > before {
                    grew = true
                    break
                }
            }
            if !grew { break }
        }
        try waitFor(timeout: 20) { slow.serverSendQueue(port: server.metricsPort) == nil }
        // The stuck write began after the first request and before the last one (which was not read).
        let sinceFirst = Date().timeIntervalSince(firstSent)
        let sinceLast = Date().timeIntervalSince(lastSent)
        print("metrics limits: a response not taken: closed \(sinceFirst) s after the first request, \(sinceLast) s after the last")
        #expect(sinceFirst >= 10, "closed \(sinceFirst) s after the first request: before the 10 s write timeout")
        #expect(sinceLast < 12.5, "closed \(sinceLast) s after the last request: long after the 10 s write timeout")
        #expect(try server.http("/metrics").status == 200)
    }

    /// 1,000 connections to the metrics port that never send anything: `METRICS_MAX_CONNECTIONS` (32)
    /// stay open, the rest are closed at once and counted; devices keep their descriptors.
    @Test func testAThousandIdleMetricsConnections() throws {
        let server = try ServerProcess()
        let watch = try Watch(server: server)
        var sockets: [Flooder] = []
        for _ in 0..<1000 { sockets.append(try Flooder(port: server.metricsPort)) }
        var closed = Set<Int32>()
        try waitFor(timeout: 10) {
            for s in sockets where !closed.contains(s.fd) {
                var pfd = pollfd(fd: s.fd, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, 0) > 0 {
                    var byte: UInt8 = 0
                    if recv(s.fd, &byte, 1, 0) <= 0 { closed.insert(s.fd) }
                }
            }
            return closed.count == 1000 - 32
        }
        let start = Date()
        while Date().timeIntervalSince(start) < Self.floodSeconds { usleep(100_000) }
        try Self.expectBounded(watch, "1,000 idle metrics connections")
        let refused = try server.waitForLog(event: "metrics.connection_refused", timeout: 1)
        #expect(refused["limit"] as? Int == 32)
        sockets.removeAll()
        try waitFor(timeout: 5) { try server.http("/metrics").status == 200 }
        #expect(try server.scrape()["teltonika_metrics_connections_refused_total"] == 968)
        #expect(server.logCount(event: "metrics.connection_refused") <= 2, "refusals are logged once per 10 s")
    }

    /// A Redis outage with 200 devices sending packets: connect attempts follow the backoff schedule
    /// (100 ms doubling to 5 s, jittered 50-100 %): 6 or 7 in the first 5 s, however much work arrives.
    @Test func testRedisOutageAttemptsFollowTheBackoffSchedule() throws {
        let deadPort = TestEnvironment.freePort()
        let server = try ServerProcess(redisURL: "redis://127.0.0.1:\(deadPort)", environment: ["PUBLISH_TIMEOUT_MS": "30000"])
        var devices: [DeviceClient] = []
        for i in 0..<200 {
            let device = try DeviceClient(port: server.port)
            #expect(try device.login(String(356_307_042_440_100 + i)))
            let record = AVLRecord(timestampMs: 1_700_000_000_000, ioElements: [IOElement(id: 1, value: .u8(1))])
            try device.send(try AVLPacketEncoder.encode([record], codec: .codec8))
            devices.append(device)
            if i % 20 == 19 { usleep(200_000) }
        }
        let first = try server.waitForLog(event: "redis.connect_failed", timeout: 5)
        let t0 = try #require(Self.seconds(first["ts"]))
        while Date().timeIntervalSince1970 < t0 + 5.6 { usleep(50_000) }
        let attempts = server.logs.filter { $0["event"] as? String == "redis.connect_failed" }
        let inFirstFive = attempts.filter { (Self.seconds($0["ts"]) ?? .infinity) <= t0 + 5.0 }
        let delays = attempts.prefix(8).compactMap { $0["retry_in_ms"] as? Int }
        print("redis outage with 200 devices: \(inFirstFive.count) connect attempts in the first 5 s; delays \(delays) ms")
        #expect((6...7).contains(inFirstFive.count), "\(inFirstFive.count) attempts in 5 s")
        for (n, delay) in delays.enumerated() {
            let full = min(5000, 100 << n)
            #expect(delay >= full / 2 && delay <= full, "attempt \(n + 1): waited \(delay) ms, schedule \(full / 2)...\(full)")
        }
        for (a, b) in zip(attempts, attempts.dropFirst()).prefix(6) {
            let gap = (Self.seconds(b["ts"]) ?? 0) - (Self.seconds(a["ts"]) ?? 0)
            let kept = Double(a["retry_in_ms"] as? Int ?? 0) / 1000
            #expect(gap >= kept - 0.005, "the next attempt came \(gap) s after a \(kept) s delay")
        }
        #expect(try server.scrape()["teltonika_acks_total"] == 0)
    }

    /// `ts` of a log line (ISO-8601 with milliseconds, UTC) as UNIX seconds.
    static func seconds(_ value: Any?) -> Double? {
        guard let text = value as? String else { return nil }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)?.timeIntervalSince1970
    }
}

/// The normal device is used by one thread at a time (the watch's), never concurrently.
extension DeviceClient: @unchecked Sendable {}

extension HostileClientTests.Flooder {
    convenience init(port: Int, receiveBuffer: Int32) throws {
        try self.init(fd: try connectLoopback(port: port, receiveBuffer: receiveBuffer))
    }

    /// The server's side of this connection in /proc/net/tcp (local port `port`, remote port ours):
    /// its send queue in bytes, or nil once it is no longer ESTABLISHED (closed by the server). Seen
    /// without reading anything, which would let a stuck response through.
    func serverSendQueue(port: Int) -> Int? {
        var addr = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        let ours = String(format: ":%04X", Int(UInt16(bigEndian: addr.sin_port)))
        let theirs = String(format: ":%04X", port)
        let table = readWholeFile("/proc/net/tcp")
        for line in table.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count > 4, f[1].hasSuffix(theirs), f[2].hasSuffix(ours), f[3] == "01" else { continue }
            return Int(f[4].split(separator: ":")[0], radix: 16) ?? 0
        }
        return nil
    }

    /// What the server sends until it closes, or until `within` seconds pass.
    func readUntilClosed(within timeout: Double) -> (bytes: [UInt8], closed: Bool) {
        let end = Date().addingTimeInterval(timeout)
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while Date() < end {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 50) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { return (out, true) }
            out += buffer[0..<n]
        }
        return (out, false)
    }

    func sendAll(_ bytes: [UInt8]) throws { try IntegrationTests.sendAll(fd, bytes) }
}
