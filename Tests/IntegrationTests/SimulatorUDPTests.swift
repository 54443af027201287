import Codec8
import FixtureSupport
import Foundation
import RedisWire
import Testing

/// `teltonika-ingest simulate --transport udp` against the real server (UDP_PORT, real Redis) and
/// against scripted UDP servers.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct SimulatorUDPTests {
    /// 200 devices, 50 datagrams each (10,000 packets), 5 % of the right ACKs ignored on purpose: every
    /// ignored ACK makes its device send the same datagram again, the server answers the resend from its
    /// window (reacked) and stores nothing twice. The oracle finds every ACKed record, none twice, and
    /// the server stored each packet exactly once (acked == packets), with more datagrams than packets.
    @Test func testFleetWithDroppedACKsLosesNothingAndStoresNothingTwice() throws {
        let server = try ServerProcess(environment: ["UDP_PORT": "0"])
        let started = Date()
        let run = try runSimulate([
            "--transport", "udp", "--devices", "200", "--packets-per-device", "50", "--duration", "45", "--port", "\(server.udpPort)",
            "--drop-acks", "0.05", "--response-timeout-ms", "400", "--records-per-packet", "5",
            "--verify", "--redis-url", TestEnvironment.redisURL, "--stream", server.stream, "--seed", "21",
        ])
        let wall = Date().timeIntervalSince(started)
        #expect(run.status == 0, "\(run)")
        let summary = try #require(run.line("simulate:"), "\(run)")
        let verify = try #require(run.line("verify:"), "\(run)")
        #expect(summary.int("packets_sent") == 10_000 && summary.int("packets_acked") == 10_000, "\(run)")
        #expect(summary.int("records_acked") == 50_000 && summary.int("unacked_at_end") == 0, "\(run)")
        let dropped = summary.int("acks_dropped")
        #expect(dropped > 0 && summary.int("resends") >= dropped, "\(run)")
        #expect(summary.int("wrong_acks") == 0 && summary.int("protocol_errors") == 0 && summary.int("socket_errors") == 0)
        #expect(verify.int("acked_records") == 50_000 && verify.int("missing") == 0, "\(run)")
        #expect(verify.int("duplicates") == 0 && verify.int("stream_entries") == 50_000, "\(run)")
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == 50_000)
        let scrape = try server.scrape()
        let reacked = try scrape.value(#"teltonika_udp_datagrams_total{result="reacked"}"#)
        let joined = try scrape.value(#"teltonika_udp_datagrams_total{result="joined"}"#)
        #expect(reacked > 0)
        #expect(reacked + joined >= Double(dropped), "every ignored ACK was answered again")
        #expect(try scrape.value(#"teltonika_udp_datagrams_total{result="acked"}"#) == 10_000, "each packet stored once")
        print(
            "udp fleet: 200 devices, \(summary.int("packets_sent")) packets, \(summary.int("packets_sent") + summary.int("resends")) "
                + "datagrams, acks_dropped=\(dropped) resends=\(summary.int("resends")) timeouts=\(summary.int("timeouts")) "
                + "reacked=\(Int(reacked)) joined=\(Int(joined)) missing=\(verify.int("missing")) duplicates=\(verify.int("duplicates")) "
                + "run_s=\(summary.fields["duration_s"] ?? "?") wall_s=\(String(format: "%.2f", wall)) "
                + "ack_p50_ms=\(summary.fields["ack_p50_ms"] ?? "?") ack_p99_ms=\(summary.fields["ack_p99_ms"] ?? "?")"
        )
    }

    /// The oracle's duplicate counter counts, and over UDP a duplicate fails the run: two copies of one
    /// record of device 0 are in the stream before the run. UDP: duplicates=1, exit 1, named; TCP (another
    /// fleet, the same planted duplicate): duplicates=1, exit 0 (a TCP resend is stored again by design).
    @Test func testVerifyCountsDuplicatesAndUDPFailsOnThem() throws {
        let server = try ServerProcess(environment: ["UDP_PORT": "0"])
        let redis = try RedisClient(url: TestEnvironment.redisURL)
        for base in ["352000000000000", "353000000000000"] {
            for _ in 0..<2 { _ = try redis.command(["XADD", server.stream, "*", "device_id", base, "payload", #"{"timestamp_ms":1}"#]) }
        }
        let common = [
            "--devices", "2", "--packets-per-device", "3", "--duration", "10", "--verify", "--redis-url", TestEnvironment.redisURL,
        ]
        let udp = try runSimulate(
            common + ["--transport", "udp", "--port", "\(server.udpPort)", "--imei-base", "352000000000000", "--stream", server.stream]
        )
        #expect(udp.status == 1, "\(udp)")
        let udpVerify = try #require(udp.line("verify:"), "\(udp)")
        #expect(udpVerify.int("duplicates") == 1 && udpVerify.int("missing") == 0, "\(udp)")
        #expect(udp.stderr.contains("1 records stored more than once"), "\(udp.stderr)")
        let tcp = try runSimulate(common + ["--port", "\(server.port)", "--imei-base", "353000000000000", "--stream", server.stream])
        #expect(tcp.status == 0, "\(tcp)")
        #expect(try #require(tcp.line("verify:"), "\(tcp)").int("duplicates") == 1, "\(tcp)")
    }

    /// A UDP server that ACKs without storing: the oracle finds every ACKed record missing, exit 1.
    @Test func testVerifyFailsWhenACKedDatagramsAreNotStored() throws {
        let server = try ScriptedUDPServer { datagram, _ in ScriptedUDPServer.ack(for: datagram) }
        let run = try runSimulate([
            "--transport", "udp", "--devices", "3", "--packets-per-device", "4", "--duration", "10", "--port", "\(server.port)",
            "--verify", "--redis-url", TestEnvironment.redisURL, "--stream", "test:empty:\(UUID().uuidString)",
        ])
        #expect(run.status == 1, "\(run)")
        let acked = try #require(run.line("simulate:"), "\(run)").int("records_acked")
        #expect(acked == 3 * 4 * 10)
        #expect(try #require(run.line("verify:"), "\(run)").int("missing") == acked)
        #expect(run.stderr.contains("ACKed records missing"), "\(run.stderr)")
    }

    /// A server that misses the first copy of every datagram: each is sent again, byte for byte (the
    /// server saw every distinct datagram exactly twice), and each device's packets carry IDs one apart.
    @Test func testResendIsTheSameDatagram() throws {
        let server = try ScriptedUDPServer { datagram, copies in copies == 0 ? [] : ScriptedUDPServer.ack(for: datagram) }
        let run = try runSimulate([
            "--transport", "udp", "--devices", "5", "--packets-per-device", "4", "--duration", "10", "--port", "\(server.port)",
            "--response-timeout-ms", "100", "--imei-base", "354000000000000",
        ])
        #expect(run.status == 0, "\(run)")
        let summary = try #require(run.line("simulate:"), "\(run)")
        #expect(summary.int("packets_acked") == 20 && summary.int("resends") == 20 && summary.int("timeouts") == 20, "\(run)")
        let seen = server.datagrams
        #expect(seen.count == 20 && seen.values.allSatisfy { $0 == 2 }, "\(seen.values)")
        // Per device, in the order the server first saw them: both IDs one more per new packet.
        var last: [String: (packetID: UInt16, avlPacketID: UInt8)] = [:]
        var distinct = Set<[UInt8]>()
        for datagram in server.arrivals where distinct.insert(datagram).inserted {
            let (imei, packetID, avlPacketID) = try UDPDatagramView.withDecoded(datagram) {
                ($0.imei.description, $0.packetID, $0.avlPacketID)
            }
            if let previous = last[imei] {
                #expect(packetID == previous.packetID &+ 1 && avlPacketID == previous.avlPacketID &+ 1, "\(imei)")
            }
            last[imei] = (packetID, avlPacketID)
        }
        #expect(last.count == 5)
    }

    /// A server that sends every ACK twice: the second copy comes after the packet was done and is
    /// counted as stale, never as a protocol error or an ACK of the next packet. One that ACKs a record
    /// too many: never accepted, the run fails with the wrong ACKs unrecovered. One that echoes another
    /// AVL packet ID: no ACK of any packet of the device's, a protocol error, never accepted.
    @Test func testRepeatedAndWrongACKs() throws {
        let twice = try ScriptedUDPServer { datagram, _ in ScriptedUDPServer.ack(for: datagram) + ScriptedUDPServer.ack(for: datagram) }
        let clean = try runSimulate([
            "--transport", "udp", "--devices", "4", "--packets-per-device", "5", "--duration", "10", "--port", "\(twice.port)",
        ])
        #expect(clean.status == 0, "\(clean)")
        let summary = try #require(clean.line("simulate:"), "\(clean)")
        #expect(summary.int("packets_acked") == 20 && summary.int("protocol_errors") == 0 && summary.int("resends") == 0, "\(clean)")
        #expect(summary.int("stale_acks") >= 20 - 4, "\(clean)")

        let wrongCount = try ScriptedUDPServer { datagram, _ in ScriptedUDPServer.ack(for: datagram) { $0.acceptedRecords += 1 } }
        let wrongID = try ScriptedUDPServer { datagram, _ in ScriptedUDPServer.ack(for: datagram) { $0.avlPacketID &+= 1 } }
        for (server, counter) in [(wrongCount, "wrong_acks"), (wrongID, "protocol_errors")] {
            let failed = try runSimulate([
                "--transport", "udp", "--devices", "2", "--duration", "0.5", "--port", "\(server.port)", "--response-timeout-ms", "100",
            ])
            #expect(failed.status == 1, "\(failed)")
            let bad = try #require(failed.line("simulate:"), "\(failed)")
            #expect(bad.int("packets_acked") == 0 && bad.int(counter) > 0 && bad.int("resends") > 0, "\(failed)")
            #expect(bad.int("unrecovered_wrong_acks") == (counter == "wrong_acks" ? 2 : 0), "\(failed)")
        }
    }

    /// `--packets-per-device` ends each device after that many packets, over TCP as over UDP, long
    /// before `--duration`.
    @Test(arguments: ["tcp", "udp"])
    func testPacketsPerDeviceBoundsTheRun(_ transport: String) throws {
        let server = try ServerProcess(environment: ["UDP_PORT": "0"])
        let port = transport == "udp" ? server.udpPort : server.port
        let run = try runSimulate([
            "--transport", transport, "--devices", "6", "--packets-per-device", "7", "--duration", "60", "--port", "\(port)",
            "--records-per-packet", "3",
        ])
        #expect(run.status == 0, "\(run)")
        let summary = try #require(run.line("simulate:"), "\(run)")
        #expect(summary.int("packets_sent") == 42 && summary.int("packets_acked") == 42, "\(run)")
        #expect(summary.double("duration_s") < 30, "\(run)")
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == 42 * 3)
    }

    @Test(arguments: [
        ["--drop-acks", "0.1"], ["--transport", "udp", "--drop-acks", "1.5"], ["--transport", "udp", "--churn", "1"],
        ["--transport", "udp", "--corrupt-ratio", "0.1"], ["--transport", "quic"], ["--packets-per-device", "-1"],
    ])
    func testUsageErrorsExitTwo(_ arguments: [String]) throws {
        let run = try runSimulate(["--devices", "1", "--duration", "1"] + arguments)
        #expect(run.status == 2, "\(arguments): \(run)")
        #expect(!run.stderr.isEmpty)
    }
}
