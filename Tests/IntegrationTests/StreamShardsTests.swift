import Codec8
import FixtureSupport
import Foundation
import Testing

/// `REDIS_STREAM_SHARDS=4` with the real binary: every device's entries in its own key, in order; the
/// stream checks and metrics cover every key; `simulate --verify` reads them all.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct StreamShardsTests {
    /// Shards of these IMEIs out of 4 (pinned against xxhsum in Codec8Tests' `StreamShardsTests`).
    static let devices: [(imei: String, shard: Int)] = [
        ("356307042441013", 3), ("356307042441014", 1), ("356307042441015", 2), ("350000000000000", 0),
    ]

    @Test func testEachDevicesEntriesAreInItsShardInOrder() throws {
        let server = try ServerProcess(environment: [
            "REDIS_STREAM_SHARDS": "4", "REDIS_STREAM_MAXLEN": "1000", "REDIS_CHECK_INTERVAL_MS": "1000",
        ])
        let redis = try RedisClient(url: TestEnvironment.redisURL)
        let packets = ["w-c8-3", "w-c16-1", "w-c8-1"].map { id in TestEnvironment.fixtures.first { $0.id == id }!.bytes }
        let message = TestEnvironment.fixtures.first { $0.id == "w-c12-rsp" }!.bytes
        for (imei, _) in Self.devices {
            let device = try DeviceClient(port: server.port)
            #expect(try device.login(imei))
            for (packet, records) in zip(packets, [2, 2, 1] as [UInt32]) {
                try device.send(packet)
                #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: records)))
            }
            try device.send(message + packets[2])
            #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 1)))
        }
        #expect(try redis.xlen(server.stream) == 0, "nothing under the unsharded name")
        #expect(try redis.xlen(server.responses) == 0)
        for (imei, shard) in Self.devices {
            let entries = try redis.entries("\(server.stream):{\(shard)}")
            #expect(entries.map { $0["device_id"] } == [String](repeating: imei, count: 6), "shard \(shard)")
            let expected = try ["w-c8-3", "w-c16-1", "w-c8-1", "w-c8-1"].flatMap { id in
                try TestEnvironment.fixtures.first { $0.id == id }!.recordIDs(imei: imei)
            }
            #expect(entries.map { $0["record_id"] } == expected, "records in the order sent, shard \(shard)")
            #expect(try redis.entries("\(server.responses):{\(shard)}").map { $0["device_id"] } == [imei])
        }

        // Every key is watched: its length, its share of the cap, a consumer group's lag on one shard.
        _ = try redis.command(["XGROUP", "CREATE", "\(server.stream):{1}", "archiver", "0"])
        try waitFor(timeout: 10, "every shard's length and the group's lag read") {
            let scrape = try server.scrape()
            let lengths = (0..<4).map { scrape[#"teltonika_stream_length{stream="telemetry",shard="\#($0)"}"#] }
            return lengths.allSatisfy { $0 == 6 }
                && scrape[#"teltonika_stream_group_lag{stream="telemetry",shard="1",group="archiver"}"#] == 6
        }
        let scrape = try server.scrape()
        for shard in 0..<4 {
            #expect(scrape[#"teltonika_stream_maxlen{stream="telemetry",shard="\#(shard)"}"#] == 250)
            #expect(scrape[#"teltonika_stream_maxlen{stream="responses",shard="\#(shard)"}"#] == 2500)
            #expect(scrape[#"teltonika_stream_length{stream="responses",shard="\#(shard)"}"#] == 1)
        }
        #expect(scrape[#"teltonika_stream_length{stream="telemetry"}"#] == nil, "no unsharded series")
    }

    /// `simulate --verify --stream-shards 4` finds every ACKed record across the shards; told one key only,
    /// it misses the records of the other shards (exit 1), so the flag is what reads them.
    @Test func testSimulateVerifiesEveryShard() throws {
        let server = try ServerProcess(environment: ["REDIS_STREAM_SHARDS": "4"])
        let common = [
            "--devices", "12", "--packets-per-device", "3", "--duration", "10", "--port", "\(server.port)", "--records-per-packet", "5",
            "--verify", "--redis-url", TestEnvironment.redisURL, "--stream", server.stream, "--seed", "3",
        ]
        let run = try runSimulate(common + ["--stream-shards", "4"])
        #expect(run.status == 0, "\(run)")
        let verify = try #require(run.line("verify:"), "\(run)")
        #expect(verify.int("acked_records") == 12 * 3 * 5)
        #expect(verify.int("missing") == 0 && verify.int("duplicates") == 0 && verify.int("trimmed") == 0)
        #expect(verify.int("stream_entries") == 12 * 3 * 5)
        let shardCounts = try (0..<4).map { try RedisClient(url: TestEnvironment.redisURL).xlen("\(server.stream):{\($0)}") }
        #expect(shardCounts.reduce(0, +) == 12 * 3 * 5, "\(shardCounts)")
        #expect(shardCounts.filter { $0 > 0 }.count >= 3, "12 devices spread over the shards: \(shardCounts)")

        let oneKey = try runSimulate(common)
        #expect(oneKey.status == 1, "\(oneKey)")
        #expect(try #require(oneKey.line("verify:")).int("missing") == 12 * 3 * 5)
    }
}
