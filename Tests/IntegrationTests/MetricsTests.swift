import Codec8
import FixtureSupport
import Foundation
import RedisWire
import Testing

@testable import Ingest

#if canImport(Glibc)
import Glibc
#endif

/// The metrics port of the real binary: exact counter movements for real traffic, a scrape that
/// promtool accepts, readiness that follows Redis, and dashboards and alerts that name real metrics.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct MetricsTests {
    static let twoRecords = TestEnvironment.fixtures.first { $0.id == "w-c8-3" }!.bytes

    /// A Codec 8 frame whose codec id is 0x99, with a correct CRC: only the codec is wrong.
    static var unknownCodecFrame: [UInt8] {
        var frame = TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes
        frame[8] = 0x99
        let crc = CRC16IBM.checksum(frame[8..<(frame.count - 4)])
        frame[frame.count - 2] = UInt8(crc >> 8)
        frame[frame.count - 1] = UInt8(crc & 0xFF)
        return frame
    }

    /// Every labelled series exists from the start, at 0, before its first event (rates and alerts
    /// need that), and so do the unlabelled counters: a missing one is an error, not a 0.
    @Test func testEverySeriesExistsAtZeroFromTheStart() throws {
        let server = try ServerProcess(redisURL: "redis://127.0.0.1:\(TestEnvironment.freePort())")
        let scrape = try server.scrape()
        var expected: [String] = []
        for codec in FrameCodec.allCases {
            for result in FrameResult.allCases {
                expected.append(#"teltonika_frames_total{codec="\#(codec.rawValue)",result="\#(result.rawValue)"}"#)
            }
        }
        expected += ConnectionResult.allCases.map { #"teltonika_connections_total{result="\#($0.rawValue)"}"# }
        expected += HandshakeResult.allCases.map { #"teltonika_handshake_total{result="\#($0.rawValue)"}"# }
        expected += IngestMetrics.avlCodecs.map { #"teltonika_records_total{codec="\#($0.rawValue)"}"# }
        expected += IngestMetrics.messageCodecs.map { #"teltonika_device_messages_total{codec="\#($0.rawValue)"}"# }
        expected += RedisErrorKind.allCases.filter { $0 != .connect }.map { #"teltonika_redis_errors_total{kind="\#($0.rawValue)"}"# }
        expected += PublishedThing.allCases.flatMap { thing in
            PublishFailure.allCases.map { #"teltonika_publish_failed_total{kind="\#(thing.rawValue)",reason="\#($0.rawValue)"}"# }
        }
        expected += [
            "teltonika_acks_total", "teltonika_keepalive_total", "teltonika_records_published_total", "teltonika_bytes_received_total",
            "teltonika_publish_overflow_total", "teltonika_unknown_codec_total", "teltonika_connections_replaced_total",
            "teltonika_device_messages_rate_limited_total", "teltonika_metrics_connections_refused_total",
            "teltonika_redis_reconnects_total", "teltonika_connections_active", "teltonika_redis_primary_changes_total",
            "teltonika_redis_sentinel_watch",
            "teltonika_redis_replicas_acknowledged", "teltonika_redis_replica_waits_short_total",
            "teltonika_publish_jobs_held_for_replicas_total", "teltonika_devices_online", "teltonika_redis_memory_used_bytes",
            "teltonika_redis_maxmemory_bytes", "teltonika_udp_window_entries", "teltonika_buffered_bytes",
            "teltonika_publish_oldest_age_seconds", "teltonika_buffer_budget_refusals_total", "teltonika_allowlist_size",
            "teltonika_allowlist_last_success_timestamp_seconds",
            #"teltonika_allowlist_refreshes_total{result="ok"}"#, #"teltonika_allowlist_refreshes_total{result="failed"}"#,
            #"teltonika_config_reloads_total{result="ok"}"#, #"teltonika_config_reloads_total{result="failed"}"#,
            "teltonika_tls_connections_active", "teltonika_tls_certificate_expiry_timestamp_seconds",
            "teltonika_publish_queue_depth_records",
        ]
        expected += RefusalReason.allCases.map { #"teltonika_connections_refused_total{reason="\#($0.rawValue)"}"# }
        expected += AcceptError.allCases.map { #"teltonika_accept_errors_total{reason="\#($0.rawValue)"}"# }
        expected += DisconnectReason.allCases.map { #"teltonika_disconnects_total{reason="\#($0.rawValue)"}"# }
        expected += IngestMetrics.streamRoles.map { #"teltonika_stream_length{stream="\#($0)"}"# }
        expected += UDPResult.allCases.map { #"teltonika_udp_datagrams_total{result="\#($0.rawValue)"}"# }
        expected += TLSVersionLabel.allCases.map { #"teltonika_tls_handshakes_total{result="ok",version="\#($0.rawValue)"}"# }
        expected.append(#"teltonika_tls_handshakes_total{result="failed",version="unknown"}"#)
        expected += ReloadResult.allCases.map { #"teltonika_tls_reloads_total{result="\#($0.rawValue)"}"# }
        expected += CommandOutcome.allCases.map { #"teltonika_commands_total{outcome="\#($0.rawValue)"}"# }
        expected += [
            #"teltonika_commands_sent_total{codec="12"}"#, #"teltonika_commands_sent_total{codec="14"}"#, "teltonika_commands_in_flight",
            "teltonika_command_responses_uncorrelated_total", "teltonika_notices_total", "teltonika_command_latency_seconds_count",
        ]
        expected += ProxyCommandLabel.allCases.map { #"teltonika_proxy_headers_total{command="\#($0.rawValue)"}"# }
        expected += ProxyRefusal.allCases.map { #"teltonika_proxy_header_refusals_total{reason="\#($0.rawValue)"}"# }
        expected += [
            #"teltonika_redis_cluster_redirects_total{kind="moved"}"#, #"teltonika_redis_cluster_redirects_total{kind="ask"}"#,
            #"teltonika_redis_cluster_slot_refreshes_total{result="ok"}"#,
            #"teltonika_redis_cluster_slot_refreshes_total{result="failed"}"#,
            "teltonika_redis_cluster_node_failures_total",
        ]
        #expect(expected.count == 41 + 2 + 6 + 3 + 4 + 8 + 6 + 2 + 15 + 2 + 31 + 8 + 4 + 3 + 2 + 7 + 6 + 2 + 6 + 5)
        for series in expected { #expect(scrape[series] == 0, "\(series): \(String(describing: scrape[series]))") }
        for mode in IngestMetrics.redisDurabilityModes {
            #expect(scrape[#"teltonika_redis_durability{mode="\#(mode)"}"#] != nil, "durability \(mode)")
        }
        // Redis is unreachable here: the connect errors are the one series that may have moved already.
        #expect(scrape[#"teltonika_redis_errors_total{kind="connect"}"#] != nil)
        #expect(scrape["teltonika_device_store_errors_total"] != nil)
    }

    /// Device messages go to the responses stream and are not telemetry records: records_published_total
    /// counts only the records, so it can be compared with records_total.
    @Test func testRecordsPublishedCountsTelemetryRecordsOnly() throws {
        let server = try ServerProcess()
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        try device.send(Self.twoRecords)
        #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 2)))
        try device.send(DeviceMessage(codec: .codec12, type: DeviceMessage.typeResponse, payload: Array("ok".utf8)).encoded())
        try waitFor(timeout: 10) { try RedisClient(url: TestEnvironment.redisURL).xlen(server.responses) == 1 }
        try waitFor(timeout: 10) { try server.scrape().value("teltonika_publish_duration_seconds_count") == 2 }
        let scrape = try server.scrape()
        #expect(scrape[#"teltonika_device_messages_total{codec="12"}"#] == 1)
        #expect(scrape[#"teltonika_records_total{codec="8"}"#] == 2)
        #expect(scrape["teltonika_records_published_total"] == 2, "the message is not a record")
    }

    /// The streams' health, read every REDIS_CHECK_INTERVAL_MS: length, cap, and each consumer group's lag.
    @Test func testStreamLengthAndConsumerLag() throws {
        let server = try ServerProcess(environment: ["REDIS_CHECK_INTERVAL_MS": "1000", "REDIS_STREAM_MAXLEN": "5000"])
        let redis = try RedisClient(url: TestEnvironment.redisURL)
        _ = try redis.command(["XGROUP", "CREATE", server.stream, "archiver", "0", "MKSTREAM"])
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(DeviceServerTests.imei))
        try device.send(try LifecycleTests.packet(records: 3, at: 1_700_000_000_000))
        #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 3)))
        let lag = #"teltonika_stream_group_lag{stream="telemetry",group="archiver"}"#
        try waitFor(timeout: 10, "length 3, lag 3") {
            let scrape = try server.scrape()
            return try scrape.value(#"teltonika_stream_length{stream="telemetry"}"#) == 3 && scrape[lag] == 3
        }
        #expect(try server.scrape().value(#"teltonika_stream_maxlen{stream="telemetry"}"#) == 5000)
        #expect(try server.scrape().value(#"teltonika_stream_maxlen{stream="responses"}"#) == 10000)
        _ = try redis.command(["XREADGROUP", "GROUP", "archiver", "c1", "COUNT", "2", "STREAMS", server.stream, ">"])
        try waitFor(timeout: 10, "the consumer read two") { try server.scrape()[lag] == 1 }
    }

    /// Redis' memory and its limit, read with the streams' health.
    @Test func testRedisMemoryAgainstItsLimit() throws {
        let redis = try OwnRedis(arguments: ["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"])
        let server = try ServerProcess(redisURL: redis.url, environment: ["REDIS_CHECK_INTERVAL_MS": "1000"])
        try waitFor(timeout: 10, "the limit is read") { try server.scrape().value("teltonika_redis_maxmemory_bytes") == 64 * 1_048_576 }
        let used = try server.scrape().value("teltonika_redis_memory_used_bytes")
        #expect(used > 100_000 && used < 64 * 1_048_576, "used_memory \(used)")
    }

    @Test func testCountersMoveExactlyWithTraffic() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(
            redisURL: redis.url,
            environment: [
                "PUBLISH_QUEUE_CAPACITY": "255", "OVERFLOW_WAIT_MS": "300", "REDIS_TIMEOUT_MS": "20000", "PUBLISH_TIMEOUT_MS": "60000",
            ]
        )
        let before = try server.scrape()
        #expect(before["teltonika_publish_queue_capacity_records"] == 255)
        #expect(before["teltonika_connections_active"] == 0)

        // Good frames and a keep-alive: ACKed, counted.
        let good = try DeviceClient(port: server.port)
        #expect(try good.login("356307042441013"))
        try good.send(Self.twoRecords)
        #expect(good.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        try good.send([0xFF])
        try good.send(Self.twoRecords)
        #expect(good.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        // A CRC failure and an unknown codec: closed, no ACK.
        let corrupt = try DeviceClient(port: server.port)
        #expect(try corrupt.login("356307042441014"))
        var bad = Self.twoRecords
        bad[bad.count - 1] ^= 0x01
        try corrupt.send(bad)
        #expect(corrupt.receive(4, timeout: 5) == .closed([]))
        let unknown = try DeviceClient(port: server.port)
        #expect(try unknown.login("356307042441015"))
        try unknown.send(Self.unknownCodecFrame)
        #expect(unknown.receive(4, timeout: 5) == .closed([]))
        // A bad IMEI.
        let stranger = try DeviceClient(port: server.port)
        try stranger.send([0x00, 0x0F] + Array("35630704244101X".utf8))
        #expect(stranger.receive(1, timeout: 5) == .bytes([0]))
        #expect(stranger.receive(1, timeout: 5) == .closed([]))

        // Only `good` is still open (the server counts a close just after the peer can see it).
        try waitFor(timeout: 5) { try server.scrape()["teltonika_connections_active"] == 1 }
        let mid = try server.scrape()
        #expect(mid["teltonika_connections_total{result=\"accepted\"}"] == 4)
        #expect(mid["teltonika_handshake_total{result=\"accepted\"}"] == 3)
        #expect(mid["teltonika_handshake_total{result=\"rejected\"}"] == 1)
        #expect(mid["teltonika_frames_total{codec=\"8\",result=\"ok\"}"] == 2)
        #expect(mid["teltonika_frames_total{codec=\"8\",result=\"crc_fail\"}"] == 1)
        #expect(mid["teltonika_frames_total{codec=\"unknown\",result=\"unknown_codec\"}"] == 1)
        #expect(mid["teltonika_unknown_codec_total"] == 1)
        #expect(mid["teltonika_records_total{codec=\"8\"}"] == 4)
        #expect(mid["teltonika_records_published_total"] == 4)
        #expect(mid["teltonika_acks_total"] == 2)
        #expect(mid["teltonika_keepalive_total"] == 1)
        #expect(mid["teltonika_ack_latency_seconds_count"] == 2)
        #expect(mid["teltonika_publish_duration_seconds_count"] == 2)
        #expect(mid["teltonika_publish_batch_size_records_sum"] == 4)
        let sent = 3 * 17 + 2 * Self.twoRecords.count + 1 + bad.count + Self.unknownCodecFrame.count + 17
        #expect(mid["teltonika_bytes_received_total"] == Double(sent))
        #expect(mid["teltonika_publish_overflow_total"] == 0)
        #expect(mid["teltonika_redis_up"] == 1)
        #expect(mid["teltonika_ready"] == 1)

        // An overflow: Redis stalls with 200 of 255 records held; 100 more do not fit.
        let big = (0..<200).map { AVLRecord(timestampMs: 1_700_000_000_000 + UInt64($0), ioElements: [IOElement(id: 1, value: .u8(1))]) }
        let second = try DeviceClient(port: server.port)
        #expect(try second.login("356307042441016"))
        redis.pause()
        try good.send(try AVLPacketEncoder.encode(big, codec: .codec8))
        try waitFor(timeout: 10, "200 records held") { try server.scrape()["teltonika_publish_queue_depth_records"] == 200 }
        #expect(good.receive(4, timeout: 0.2) == .timeout([]))
        try second.send(try AVLPacketEncoder.encode(Array(big.prefix(100)), codec: .codec8))
        #expect(second.receive(4, timeout: 5) == .closed([]))
        redis.resume()
        #expect(good.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 200)))

        let after = try server.scrape()
        #expect(after["teltonika_publish_overflow_total"] == 1)
        #expect(after["teltonika_records_total{codec=\"8\"}"] == 304)
        #expect(after["teltonika_records_published_total"] == 204)
        #expect(after["teltonika_acks_total"] == 3)
        #expect(after["teltonika_publish_queue_depth_records"] == 0)
        #expect(try RedisClient(url: redis.url).xlen(server.stream) == 204)
        // The names without a unit stay one release (OPERATIONS.md, "Deprecated metric names"), with the same values.
        for (old, new) in [
            ("teltonika_publish_queue_depth", "teltonika_publish_queue_depth_records"),
            ("teltonika_publish_queue_capacity", "teltonika_publish_queue_capacity_records"),
            ("teltonika_publish_batch_size_sum", "teltonika_publish_batch_size_records_sum"),
            ("teltonika_publish_batch_size_count", "teltonika_publish_batch_size_records_count"),
            (#"teltonika_publish_batch_size_bucket{le="250.0"}"#, #"teltonika_publish_batch_size_records_bucket{le="250.0"}"#),
        ] {
            #expect(
                after[old] != nil && after[old] == after[new],
                "\(old) \(String(describing: after[old])), \(new) \(String(describing: after[new]))"
            )
        }
        #expect(try after.value("teltonika_publish_batch_size_records_sum") == 204)
        #expect(try after.value("teltonika_publish_queue_capacity_records") == 255)
    }

    @Test func testScrapePassesPromtoolAndNamesEveryDashboardAndAlertMetric() throws {
        let server = try ServerProcess(environment: ["REDIS_CHECK_INTERVAL_MS": "1000"])
        // A consumer group, so that its lag series exists too (a group appears once the server has seen it).
        _ = try RedisClient(url: TestEnvironment.redisURL).command(["XGROUP", "CREATE", server.stream, "archiver", "0", "MKSTREAM"])
        try waitFor(timeout: 10, "the group's lag is read") { try server.scrape().text.contains("teltonika_stream_group_lag{") }
        let scrape = try server.scrape()
        // Every metric the issue names is there, with HELP text.
        for name in [
            "teltonika_connections_active", "teltonika_connections_total", "teltonika_handshake_total", "teltonika_frames_total",
            "teltonika_unknown_codec_total", "teltonika_records_total", "teltonika_records_published_total", "teltonika_acks_total",
            "teltonika_keepalive_total", "teltonika_device_messages_total", "teltonika_bytes_received_total",
            "teltonika_publish_queue_depth_records", "teltonika_publish_queue_capacity_records", "teltonika_publish_overflow_total",
            "teltonika_publish_batch_size_records", "teltonika_publish_duration_seconds", "teltonika_ack_latency_seconds",
            "teltonika_redis_up",
            "teltonika_redis_errors_total", "teltonika_redis_reconnects_total", "teltonika_ready", "teltonika_build_info",
            "process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_cpu_seconds_total",
            "process_start_time_seconds",
        ] {
            #expect(scrape.text.contains("# HELP \(name) "), "no HELP for \(name)")
        }
        #expect(try scrape.value("process_open_fds") > 5)
        #expect(try scrape.value("process_resident_memory_bytes") > 1_000_000)
        #expect(try abs(scrape.value("process_start_time_seconds") - Date().timeIntervalSince1970) < 120)
        #expect(scrape.text.contains("teltonika_build_info{version=\""))

        // promtool, on this very scrape.
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("scrape-\(UUID().uuidString).txt")
        try scrape.text.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let promtool = try run(["/bin/sh", "-c", "promtool check metrics < '\(file.path)'"])
        #expect(promtool.status == 0, "promtool: \(promtool.output)")
        #expect(promtool.output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "promtool: \(promtool.output)")

        // The dashboard and the alert rules only use metrics this scrape has.
        let root = FixtureCorpus.repositoryRoot
        let used = try run([
            "/usr/bin/env", "python3", "\(root)/scripts/metric-names.py", "\(root)/deploy/grafana/teltonika-ingest.json",
            "\(root)/deploy/prometheus/alerts.yml",
        ])
        #expect(used.status == 0, "metric-names.py: \(used.output)")
        let names = used.output.split(separator: "\n").map(String.init)
        #expect(names.count >= 15, "\(names)")
        let exposed = Set(
            scrape.names.map { n in ["_bucket", "_sum", "_count"].reduce(n) { $0.hasSuffix($1) ? String($0.dropLast($1.count)) : $0 } }
        )
        for name in names { #expect(exposed.contains(name), "\(name) is used by the dashboard or alerts but not exposed") }
    }

    /// With 10,000 logged-in devices a scrape still answers, whole and exact, and so do the health
    /// endpoints. How fast it answers is a benchmark figure (docs/PERFORMANCE.md), not asserted here.
    @Test func testScrapeIsWholeWithTenThousandConnections() throws {
        let count = 10_000
        let server = try ServerProcess(environment: ["MAX_CONNECTIONS": "\(count + 100)", "LOG_LEVEL": "info"])
        var devices: [DeviceClient] = []
        devices.reserveCapacity(count)
        for d in 0..<count {
            // From 12 addresses: MAX_CONNECTIONS_PER_IP (1,000) holds for each.
            let device = try DeviceClient(port: server.port, source: "127.0.0.\(1 + d / 900)")
            try device.send(IMEI(FleetTests.imei(d))!.loginFrame)
            devices.append(device)
        }
        let loggedIn = devices.filter { $0.receive(1, timeout: 10) == .bytes([1]) }.count
        #expect(loggedIn == count)
        try waitFor(timeout: 10) { try server.scrape()["teltonika_connections_active"] == Double(count) }
        let scrape = try server.scrape()
        #expect(scrape["teltonika_handshake_total{result=\"accepted\"}"] == Double(count))
        #expect(scrape["teltonika_connections_total{result=\"accepted\"}"] == Double(count))
        // Counted every 5 s on the metrics loop, not in the scrape.
        try waitFor(timeout: 15) { try server.scrape().value("process_open_fds") >= Double(count) }
        #expect(scrape.names.contains("teltonika_build_info"))
        #expect(try server.http("/healthz").status == 200)
        #expect(try server.http("/readyz").status == 200)
        devices.removeAll()  // every socket closed; a debug build under TSan takes tens of seconds to see them all
        try waitFor(timeout: 90) { try server.scrape()["teltonika_connections_active"] == 0 }
        try waitFor(timeout: 15) { try server.scrape().value("process_open_fds") < Double(count) }
    }

    /// The persistence Redis reports is a metric and a log line: a warning for no AOF or an evicting
    /// policy, re-read when the server reconnects; a Redis that refuses CONFIG GET is `unknown`.
    @Test func testRedisDurabilityIsReportedAndFollowsItsSettings() throws {
        func modes(_ scrape: Scrape) -> [String] {
            IngestMetrics.redisDurabilityModes.filter { scrape["teltonika_redis_durability{mode=\"\($0)\"}"] == 1 }
        }
        let redis = try OwnRedis(arguments: ["--maxmemory-policy", "allkeys-lru"])  // and --appendonly no
        let server = try ServerProcess(redisURL: redis.url)
        let risky = try server.waitForLog(event: "redis.durability", timeout: 10)
        #expect(risky["level"] as? String == "warning")
        #expect(risky["mode"] as? String == "none")
        #expect(risky["maxmemory_policy"] as? String == "allkeys-lru")
        #expect(risky["evicts_streams"] as? Bool == true)
        #expect(modes(try server.scrape()) == ["none"])

        let client = try RedisClient(url: redis.url)
        for setting in [["appendonly", "yes"], ["appendfsync", "always"], ["maxmemory-policy", "noeviction"]] {
            #expect(try client.command(["CONFIG", "SET"] + setting) == .string("OK"))
        }
        _ = try client.command(["CLIENT", "KILL", "TYPE", "normal"])  // the server's connection, not this one
        let safe = try server.waitForLog(event: "redis.durability", timeout: 10, count: 2)
        #expect(safe["level"] as? String == "info")
        #expect(safe["mode"] as? String == "aof_always")
        #expect(modes(try server.scrape()) == ["aof_always"])

        let locked = try OwnRedis(arguments: ["--rename-command", "CONFIG", ""])
        let other = try ServerProcess(redisURL: locked.url)
        let unknown = try other.waitForLog(event: "redis.durability", timeout: 10)
        #expect(unknown["mode"] as? String == "unknown")
        try waitFor(timeout: 10) { try other.http("/readyz").status == 200 }  // still serves
        #expect(modes(try other.scrape()) == ["unknown"])
    }

    @Test func testReadinessFollowsRedis() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(redisURL: redis.url, environment: ["REDIS_TIMEOUT_MS": "300"])
        try waitFor(timeout: 10) { try server.http("/readyz").status == 200 }
        #expect(try server.http("/readyz").body.contains("\"ok\""))
        #expect(try server.http("/healthz").status == 200)
        redis.stop()
        try waitFor(timeout: 10) { try server.http("/readyz").status == 503 }
        #expect(try server.http("/readyz").body.contains("redis down"))
        #expect(try server.scrape()["teltonika_redis_up"] == 0)
        #expect(try server.scrape()["teltonika_ready"] == 0)
        #expect(try server.http("/healthz").status == 200)  // alive all the same
        try redis.start()
        try waitFor(timeout: 15) { try server.http("/readyz").status == 200 }
        #expect(try server.scrape()["teltonika_redis_up"] == 1)
        #expect(try server.scrape().value("teltonika_redis_reconnects_total") >= 1)
        // A stalled Redis (SIGSTOP) is down too, once its PING times out.
        redis.pause()
        try waitFor(timeout: 10) { try server.http("/readyz").status == 503 }
        #expect(try server.scrape().value("teltonika_redis_errors_total{kind=\"timeout\"}") >= 1)
        redis.resume()
        try waitFor(timeout: 15) { try server.http("/readyz").status == 200 }
        #expect(try server.http("/nope").status == 404)
    }
}

/// The real binary run to completion with `arguments` and `environment` added to the test's: its exit
/// status and standard output (standard error dropped).
func runBinary(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, stdout: String) {
    let process = Process()
    let out = Pipe()
    process.executableURL = URL(fileURLWithPath: TestEnvironment.binary)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Runs a command to completion; stdout and stderr together.
func run(_ command: [String]) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: command[0])
    p.arguments = Array(command.dropFirst())
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    while p.isRunning { usleep(5_000) }
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}
