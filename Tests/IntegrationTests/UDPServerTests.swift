import Codec8
import FixtureSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real binary's UDP port (issue 14) against a real Redis: ACK bytes and stream entries for the
/// documentation's datagrams, resends, Redis paused, malformed and oversized datagrams, a flood, and
/// the drain.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct UDPServerTests {
    static let imei = IMEI("352093086403655")!

    /// A datagram of `records` Codec 8 records from `imei`, with AVL packet ID `id`.
    /// Its channel packet ID is `packetID`, or `0x0100 | id`.
    static func datagram(
        imei: IMEI = imei,
        id: UInt8,
        packetID: UInt16? = nil,
        records: Int = 1,
        at t: UInt64 = 1_700_000_000_000
    ) throws -> [UInt8] {
        let frame = try LifecycleTests.packet(records: records, at: t)
        return UDPDatagramView.encode(
            packetID: packetID ?? (0x0100 | UInt16(id)),
            avlPacketID: id,
            imei: imei,
            avlData: frame[8..<(frame.count - 4)]
        )
    }

    /// A server with its own Redis, ready; then Redis paused and `datagram` sent: its `records` wait in the queue.
    static func waitingForPausedRedis(
        _ datagram: [UInt8],
        records: Int
    ) throws -> (OwnRedis, ServerProcess, UDPDeviceClient) {
        let redis = try OwnRedis()
        let server = try ServerProcess(redisURL: redis.url, environment: ["UDP_PORT": "0"])
        let device = try UDPDeviceClient(port: server.udpPort)
        try waitFor(timeout: 10) { try server.http("/readyz").status == 200 }
        redis.pause()
        try device.send(datagram)
        try waitFor(timeout: 5, "the packet queued") {
            try server.scrape().value("teltonika_publish_queue_depth_records") == Double(records)
        }
        return (redis, server, device)
    }

    @Test func testEveryUDPExampleGetsItsACKAndItsEntries() throws {
        let server = try ServerProcess(environment: ["UDP_PORT": "0"])
        let device = try UDPDeviceClient(port: server.udpPort)
        for fixture in FixtureCorpus.udpDatagrams {
            try device.send(fixture.bytes)
            #expect(device.receive(timeout: 10) == fixture.ack, "\(fixture.id)")
        }
        let entries = try RedisClient(url: TestEnvironment.redisURL).entries(server.stream)
        let expected = FixtureCorpus.udpDatagrams.flatMap { FixtureCorpus.udpExpectedRecords[$0.id] ?? [] }
        try #require(entries.count == expected.count)
        #expect(expected.count == 2)
        for (entry, want) in zip(entries, expected) {
            #expect(entry["transport"] == "udp")
            #expect(entry["device_id"] == "352093086403655")
            #expect(entry["codec"] == want["codec"] as? String)
            #expect(entry["ts"] == want["timestamp"] as? String)
            let payload = try JSONSerialization.jsonObject(with: Data((entry["payload"] ?? "").utf8))
            #expect(jsonEqual(payload, want), "payload \(entry["payload"] ?? "")")
        }
        #expect(try server.scrape().value("teltonika_udp_datagrams_total{result=\"acked\"}") == 2)
    }

    /// UDP_PORT may equal TELTONIKA_PORT, as Traccar serves both on one port.
    @Test func testTCPAndUDPOnTheSamePort() throws {
        let port = try freeLoopbackPort()
        let server = try ServerProcess(environment: ["TELTONIKA_PORT": "\(port)", "UDP_PORT": "\(port)"])
        #expect(server.port == port && server.udpPort == port)
        let tcp = try DeviceClient(port: port)
        #expect(try tcp.login("356307042441013"))
        try tcp.send(TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes)
        #expect(tcp.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]))
        let udp = try UDPDeviceClient(port: port)
        try udp.send(FixtureCorpus.udpDatagrams[0].bytes)
        #expect(udp.receive(timeout: 10) == FixtureCorpus.udpDatagrams[0].ack)
    }

    /// The device misses the first ACK and resends: ACKed again, stored once.
    @Test func testResendAfterALostACKIsAcknowledgedAgainAndStoredOnce() throws {
        let server = try ServerProcess(environment: ["UDP_PORT": "0"])
        let device = try UDPDeviceClient(port: server.udpPort)
        let datagram = try Self.datagram(id: 7, records: 3)
        try device.send(datagram)
        let first = try #require(device.receive(timeout: 10), "no first ACK")
        #expect(UDPAck(first) == UDPAck(packetID: 0x0107, avlPacketID: 7, acceptedRecords: 3))
        // "Lost": the device resends the same datagram twice more.
        for _ in 0..<2 {
            try device.send(datagram)
            #expect(device.receive(timeout: 10) == first)
        }
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == 3)
        let scrape = try server.scrape()
        #expect(try scrape.value("teltonika_udp_datagrams_total{result=\"acked\"}") == 1)
        #expect(try scrape.value("teltonika_udp_datagrams_total{result=\"reacked\"}") == 2)
    }

    /// Redis paused: no ACK while the device keeps resending; resumed: one ACK, every record stored once.
    @Test func testRedisPausedMeansNoACKUntilItIsBack() throws {
        let datagram = try Self.datagram(id: 1, records: 4)
        let (redis, server, device) = try Self.waitingForPausedRedis(datagram, records: 4)
        defer { redis.resume() }
        for _ in 0..<3 {
            #expect(device.receive(timeout: 0.3) == nil, "an ACK while Redis is paused")
            try device.send(datagram)
        }
        try waitFor(timeout: 5) { try server.scrape().value("teltonika_udp_datagrams_total{result=\"joined\"}") == 3 }
        redis.resume()
        let ack = try #require(try device.sendUntilAcknowledged(datagram), "no ACK after Redis came back")
        #expect(UDPAck(ack) == UDPAck(packetID: 0x0101, avlPacketID: 1, acceptedRecords: 4))
        let entries = try RedisClient(url: redis.url).entries(server.stream)
        #expect(entries.count == 4)
        let times = entries.compactMap { $0["ts"] }
        #expect(Set(times).count == 4, "a record stored twice: \(times)")
    }

    /// Every length from 0 to 64 bytes, and the largest UDP payload (65,507 bytes): no ACK, each counted
    /// once as malformed, and the port keeps serving.
    @Test func testEveryShortLengthAndTheLargestDatagramAreRefused() throws {
        let server = try ServerProcess(environment: ["UDP_PORT": "0"])
        let device = try UDPDeviceClient(port: server.udpPort)
        let whole = try #require(FixtureCorpus.udpDatagrams.first).bytes
        var bad: [[UInt8]] = (0..<whole.count).map { Array(whole.prefix($0)) }
        var badCodec = whole
        badCodec[23] = 0x07
        bad += [badCodec, whole + [0]]
        let largest = UDPDatagramView.encode(packetID: 1, avlPacketID: 1, imei: Self.imei, avlData: [UInt8](repeating: 0, count: 65_484))
        #expect(largest.count == 65_507)
        bad.append(largest)
        for datagram in bad { try device.send(datagram) }
        try waitFor(timeout: 10, "every bad datagram counted") {
            try server.scrape().value("teltonika_udp_datagrams_total{result=\"malformed\"}") == Double(bad.count)
        }
        #expect(bad.count == 66)
        #expect(device.receive(timeout: 0.2) == nil)
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == 0)
        // Logged at a limited rate: the first line, the rest held back (one sender cannot flood the log).
        #expect(server.logCount(event: "udp.rejected") == 1)
        #expect(server.logs.first { $0["event"] as? String == "udp.rejected" }?["error"] as? String == "truncated")
        try device.send(whole)
        #expect(device.receive(timeout: 10) == FixtureCorpus.udpDatagrams[0].ack)
    }

    /// A flood from one sender while Redis is paused: the queue stays at its bound (the excess is refused,
    /// counted, not ACKed), a TCP device on the same server still logs in, and once Redis is back every
    /// ACKed datagram's records are in the stream. (Datagrams still in the socket's receive buffer when
    /// Redis returns are stored too, so the stream may hold more than the queue's bound.)
    @Test func testFloodStaysWithinTheQueueBoundAndEveryACKIsBacked() throws {
        let redis = try OwnRedis()
        defer { redis.resume() }
        let server = try ServerProcess(redisURL: redis.url, environment: ["UDP_PORT": "0", "PUBLISH_QUEUE_CAPACITY": "255"])
        let flood = try UDPDeviceClient(port: server.udpPort)
        try waitFor(timeout: 10) { try server.http("/readyz").status == 200 }
        redis.pause()
        // 2,000 distinct packets: 10 devices, 200 AVL packet IDs each; the channel packet ID numbers them.
        var sent: [(imei: IMEI, time: UInt64)] = []
        for n in 0..<2000 {
            let imei = IMEI(String(352_093_086_400_000 + UInt64(n / 200)))!
            let time = 1_700_000_000_000 + UInt64(n) * 1000
            try flood.send(try Self.datagram(imei: imei, id: UInt8(n % 200), packetID: UInt16(n), at: time))
            sent.append((imei, time))
        }
        try waitFor(timeout: 10, "overflow counted") {
            try server.scrape().value("teltonika_udp_datagrams_total{result=\"overflow\"}") > 0
        }
        #expect(try server.scrape().value("teltonika_publish_queue_depth_records") <= 255)
        #expect(flood.receive(timeout: 0.3) == nil, "an ACK while Redis is paused")
        // TCP devices are still served (login answered) while the UDP port is flooded.
        let tcp = try DeviceClient(port: server.port)
        #expect(try tcp.login("356307042441013"))
        redis.resume()
        var acked: [UDPAck] = []
        while let bytes = flood.receive(timeout: 2) {
            if let ack = UDPAck(bytes) { acked.append(ack) }
        }
        #expect(!acked.isEmpty)
        // The no-loss oracle: every ACK names a packet whose record is in the stream.
        let stored = Set(
            try RedisClient(url: redis.url).entries(server.stream).compactMap { entry -> String? in
                let payload = try? JSONSerialization.jsonObject(with: Data((entry["payload"] ?? "").utf8)) as? [String: Any]
                guard let device = entry["device_id"], let ms = (payload?["timestamp_ms"] as? NSNumber)?.uint64Value else { return nil }
                return "\(device)/\(ms)"
            }
        )
        for ack in acked {
            let packet = sent[Int(ack.packetID)]
            #expect(stored.contains("\(packet.imei)/\(packet.time)"), "ACK \(ack) without its record in the stream")
            #expect(ack.avlPacketID == UInt8(Int(ack.packetID) % 200))
        }
    }

    /// SIGTERM with a UDP packet waiting for Redis: new datagrams are no longer published (no ACK), the
    /// waiting one is ACKed once Redis is back, and the process exits 0.
    @Test func testDrainAnswersWhatWaitsAndPublishesNothingNew() throws {
        let (redis, server, device) = try Self.waitingForPausedRedis(try Self.datagram(id: 1, records: 2), records: 2)
        defer { redis.resume() }
        server.signal(SIGTERM)
        try server.waitForLog(event: "server.draining", timeout: 5)
        try device.send(try Self.datagram(id: 2, records: 1, at: 1_700_000_100_000))
        try waitFor(timeout: 15) { try server.scrape().value("teltonika_udp_datagrams_total{result=\"draining\"}") == 1 }
        redis.resume()
        #expect(device.receive(timeout: 10).flatMap(UDPAck.init) == UDPAck(packetID: 0x0101, avlPacketID: 1, acceptedRecords: 2))
        let exit = try #require(server.waitForExit(timeout: 10))
        #expect(exit.status == 0 && !exit.bySignal, "exit \(exit)")
        #expect(try RedisClient(url: redis.url).xlen(server.stream) == 2)
    }
}
