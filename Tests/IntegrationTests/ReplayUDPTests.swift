import Codec8
import FixtureSupport
import Foundation
import Testing

/// `replay` of captured UDP traffic: against the real server (UDP_PORT, real Redis), and against
/// scripted UDP servers that stay silent or answer wrong.
extension ReplayTests {
    /// The fixture datagrams (udp-datagrams.tsv) and one the codec refuses (Number of Data 2 changed).
    static var udpTraffic: (valid: [UDPFixture], malformed: [UInt8]) {
        let valid = FixtureCorpus.udpDatagrams.filter { $0.expect.hasPrefix("avl:") }
        var malformed = valid[0].bytes
        malformed[malformed.count - 1] ^= 0x03
        return (valid, malformed)
    }

    /// A capture of one device sending the fixture datagrams and the malformed one (and a resend of the
    /// first, as a device that missed its ACK does), with the server's ACKs going the other way.
    static func udpCapture(format: String, link: CaptureWriter.Link, serverPort: UInt16 = 5027) throws -> URL {
        let traffic = udpTraffic
        var writer = CaptureWriter(format: format, link: link)
        for datagram in traffic.valid.map(\.bytes) + [traffic.malformed] {
            writer.addUDP(from: 40002, to: 5027, payload: datagram)
        }
        for ack in traffic.valid.map(\.ack) { writer.addUDP(from: 5027, to: 40002, payload: ack) }
        writer.addUDP(from: 40002, to: 5027, payload: traffic.valid[0].bytes)
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("replay-\(UUID().uuidString).\(format)")
        try Data(writer.bytes).write(to: url)
        return url
    }

    /// Every captured datagram reaches the real server's UDP port; every ACK is checked (IDs and count),
    /// the malformed datagram gets no answer, the resend is ACKed again, and the stream holds exactly
    /// the fixture's records, once each, marked `transport udp`. The first case shares one port for TCP
    /// and UDP and gives no --udp-port (its default is --port).
    @Test(arguments: [
        ("pcap", CaptureWriter.Link.ethernetIPv4, true), ("pcapng", .ethernetIPv4, false), ("pcapng", .rawIPv6, false),
    ])
    func testUDPCaptureReplaysEveryDatagramWithItsACK(format: String, link: CaptureWriter.Link, sharedPort: Bool) throws {
        let port = sharedPort ? try freeLoopbackPort() : 0
        let server = try ServerProcess(environment: ["TELTONIKA_PORT": "\(port)", "UDP_PORT": "\(port)"])
        let file = try Self.udpCapture(format: format, link: link)
        defer { try? FileManager.default.removeItem(at: file) }
        let udpPort = sharedPort ? [] : ["--udp-port", "\(server.udpPort)"]
        let result = try replay([file.path, "--port", "\(server.port)", "--response-timeout", "1"] + udpPort)
        #expect(result.status == 0, "\(result)")
        let f = fields(result.stdout)
        let valid = Self.udpTraffic.valid
        #expect(f["sessions"] == "1" && f["datagrams"] == "\(valid.count + 2)", "\(result.stdout)")
        #expect(f["acked"] == "\(valid.count + 1)" && f["records_acked"] == "\(valid.count + 1)", "\(result.stdout)")
        #expect(f["rejected"] == "1" && f["mismatched"] == "0" && f["resends"] == "0", "\(result.stdout)")

        let entries = try RedisClient(url: TestEnvironment.redisURL).entries(server.stream)
        let expected = valid.flatMap { FixtureCorpus.udpExpectedRecords[$0.id] ?? [] }
        try #require(entries.count == expected.count, "\(entries)")
        for (entry, record) in zip(entries, expected) {
            let payload = try JSONSerialization.jsonObject(with: Data((entry["payload"] ?? "").utf8))
            #expect(jsonEqual(payload, record), "\(entry)")
            #expect(entry["device_id"] == record["device_id"] as? String && entry["transport"] == "udp", "\(entry)")
        }
        #expect(try server.scrape().value(#"teltonika_udp_datagrams_total{result="reacked"}"#) == 1)
    }

    /// `--loop 2`: the second copy re-encodes every valid datagram under its own IMEI (the last six
    /// digits the copy number), so the server stores it again rather than taking it for a resend; with
    /// `--imei` every datagram carries that IMEI.
    @Test func testUDPCopiesCarryTheirOwnIMEI() throws {
        let server = try ServerProcess(environment: ["UDP_PORT": "0"])
        let file = try Self.udpCapture(format: "pcap", link: .ethernetIPv4)
        defer { try? FileManager.default.removeItem(at: file) }
        let common = [file.path, "--port", "\(server.port)", "--udp-port", "\(server.udpPort)", "--response-timeout", "0.5"]
        let looped = try replay(common + ["--loop", "2", "--concurrency", "2"])
        #expect(looped.status == 0, "\(looped)")
        #expect(fields(looped.stdout)["acked"] == "\(2 * (Self.udpTraffic.valid.count + 1))", "\(looped.stdout)")
        let renamed = try replay(common + ["--imei", "356307042441013"])
        #expect(renamed.status == 0, "\(renamed)")
        var byDevice: [String: Int] = [:]
        for entry in try RedisClient(url: TestEnvironment.redisURL).entries(server.stream) {
            byDevice[entry["device_id"] ?? "", default: 0] += 1
        }
        let records = Self.udpTraffic.valid.count
        #expect(byDevice == ["352093086403655": records, "352093086000001": records, "356307042441013": records], "\(byDevice)")
    }

    /// `--capture-port` picks UDP flows by destination port, whatever they carry: to 5027 the device's
    /// datagrams; to 40002 the captured ACKs, which the codec refuses (so they must get no answer).
    @Test func testCapturePortPicksUDPFlows() throws {
        let file = try Self.udpCapture(format: "pcapng", link: .ethernetIPv4)
        defer { try? FileManager.default.removeItem(at: file) }
        let server = try ScriptedUDPServer { datagram, _ in ScriptedUDPServer.ack(for: datagram) }
        let common = [file.path, "--port", "\(server.port)", "--response-timeout", "0.3"]
        let devices = fields(try replay(common + ["--capture-port", "5027"]).stdout)
        #expect(devices["sessions"] == "1" && devices["acked"] == "\(Self.udpTraffic.valid.count + 1)", "\(devices)")
        let answers = fields(try replay(common + ["--capture-port", "40002"]).stdout)
        #expect(answers["datagrams"] == "\(Self.udpTraffic.valid.count)" && answers["acked"] == "0", "\(answers)")
        #expect(answers["rejected"] == "\(Self.udpTraffic.valid.count)", "\(answers)")
    }

    /// A server that misses the first copy of every datagram: each is sent again after the response
    /// timeout and then ACKed (resends counted, clean). One that never answers: each valid datagram is
    /// sent 1 + --udp-resends times, then reported.
    @Test func testUnansweredDatagramIsSentAgainThenReported() throws {
        let file = try Self.udpCapture(format: "pcap", link: .ethernetIPv4)
        defer { try? FileManager.default.removeItem(at: file) }
        let valid = Self.udpTraffic.valid.count + 1

        let late = try ScriptedUDPServer { datagram, copies in copies % 2 == 0 ? [] : ScriptedUDPServer.ack(for: datagram) }
        let recovered = try replay([file.path, "--port", "\(late.port)", "--response-timeout", "0.3"])
        #expect(recovered.status == 0, "\(recovered)")
        let f = fields(recovered.stdout)
        #expect(f["resends"] == "\(valid)" && f["acked"] == "\(valid)" && f["mismatched"] == "0", "\(recovered.stdout)")

        let silent = try ScriptedUDPServer { _, _ in [] }
        let lost = try replay([file.path, "--port", "\(silent.port)", "--response-timeout", "0.2", "--udp-resends", "1"])
        #expect(lost.status == 1, "\(lost)")
        #expect(fields(lost.stdout)["resends"] == "\(valid)" && fields(lost.stdout)["mismatched"] == "\(valid)", "\(lost.stdout)")
        try waitFor(timeout: 5) { silent.received == 2 * valid + 1 }
        #expect(lost.stderr.contains("got nothing after 2 sends"), "\(lost.stderr)")
    }

    /// A server that sends every ACK twice, as a server does when a resend's ACK follows the late first
    /// one: the second copy arrives while the replay waits for the next datagram's ACK (or for the
    /// malformed one's silence), and is skipped as an answer to an earlier datagram, not a mismatch.
    @Test func testRepeatedACKIsNoAnswerToTheNextDatagram() throws {
        let file = try Self.udpCapture(format: "pcap", link: .ethernetIPv4)
        defer { try? FileManager.default.removeItem(at: file) }
        let twice = try ScriptedUDPServer { datagram, _ in ScriptedUDPServer.ack(for: datagram) + ScriptedUDPServer.ack(for: datagram) }
        let result = try replay([file.path, "--port", "\(twice.port)", "--response-timeout", "0.5"])
        #expect(result.status == 0, "\(result)")
        let f = fields(result.stdout)
        #expect(f["acked"] == "\(Self.udpTraffic.valid.count + 1)" && f["rejected"] == "1" && f["mismatched"] == "0", "\(result.stdout)")
    }

    /// A server that ACKs one record more than the datagram holds, one that swaps the AVL packet ID, and
    /// one that answers the malformed datagram: every wrong answer is a mismatch, named.
    @Test func testWrongUDPAnswersAreMismatches() throws {
        let file = try Self.udpCapture(format: "pcap", link: .ethernetIPv4)
        defer { try? FileManager.default.removeItem(at: file) }
        let first = Self.udpTraffic.valid[0]
        let servers: [(ScriptedUDPServer, expected: Int, named: String)] = [
            (
                try ScriptedUDPServer { datagram, _ in ScriptedUDPServer.ack(for: datagram) { $0.acceptedRecords += 1 } },
                Self.udpTraffic.valid.count + 1, "expected ACK \(Hex.encode(first.ack)), got 0005cafe010502"
            ),
            (
                try ScriptedUDPServer { datagram, _ in ScriptedUDPServer.ack(for: datagram) { $0.avlPacketID &+= 100 } },
                Self.udpTraffic.valid.count + 1, "got 0005cafe016901"
            ),
            (
                try ScriptedUDPServer { datagram, _ in
                    let ack = ScriptedUDPServer.ack(for: datagram)
                    return ack.isEmpty ? [[0, 5, 0, 0, 1, 0, 0]] : ack
                },
                1, "a record_count_mismatch datagram must get no answer, got 00050000010000"
            ),
        ]
        for (server, expected, named) in servers {
            let result = try replay([file.path, "--port", "\(server.port)", "--response-timeout", "0.5"])
            #expect(result.status == 1, "\(result)")
            #expect(fields(result.stdout)["mismatched"] == "\(expected)", "\(result.stdout)")
            #expect(result.stderr.contains(named), "\(result.stderr)")
        }
    }
}
