import Codec8
import FixtureSupport
import Foundation
import Ingest
import NIOConcurrencyHelpers
import RedisWire
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `REDIS_MODE=cluster` with the real binary against a real 3-primary Redis Cluster on loopback. Until
/// the streams are sharded one server writes one stream key, so each test runs a server per primary it
/// needs, each with a telemetry stream whose slot that primary serves.
@Suite(.serialized, .blocking, .timeLimit(.minutes(5)))
struct RedisClusterTests {
    static func packet(records: Int, at t: UInt64) throws -> [UInt8] { try LifecycleTests.packet(records: records, at: t) }

    /// A server in cluster mode writing `stream`; `REDIS_URL` gives no node (only credentials would be read).
    static func server(_ cluster: ClusterRedis, stream: String, _ extra: [String: String] = [:]) throws -> ServerProcess {
        try ServerProcess(
            redisURL: "redis://127.0.0.1:1",
            environment: [
                "REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": cluster.seeds, "REDIS_TELEMETRY_STREAM": stream, "LOG_LEVEL": "info",
            ].merging(extra) { $1 }
        )
    }

    /// One server per primary, each stream on another primary: every device is ACKed, and every record is
    /// in its stream on the primary that serves its slot; nothing was redirected. The side connections
    /// route too: the first server loads its allowlist (`DEVICE_AUTHORITY_MODE=redis`) from the set's
    /// primary, and reads its stream's length and consumer-group lag and the primaries' persistence.
    @Test func testDevicesAreACKedWithTheirRecordsOnEveryPrimary() throws {
        let cluster = try ClusterRedis(primaries: 3)
        let run = UUID().uuidString
        let allowlist = "cluster-allow:\(run)"
        _ = try cluster.client(for: allowlist).command(["SADD", allowlist, DeviceServerTests.imei])
        var servers: [(server: ServerProcess, stream: String, primary: Int)] = []
        for (index, node) in cluster.nodes.enumerated() {
            let stream = try cluster.key(onPrimary: node.port, prefix: "cluster-test:\(run)")
            var settings = ["REDIS_CHECK_INTERVAL_MS": "1000"]
            if index == 0 {
                settings["DEVICE_AUTHORITY_MODE"] = "redis"
                settings["REDIS_DEVICE_ALLOWLIST_KEY"] = allowlist
                _ = try cluster.client(for: stream).command(["XGROUP", "CREATE", stream, "archiver", "$", "MKSTREAM"])
            }
            servers.append((try Self.server(cluster, stream: stream, settings), stream, node.port))
        }
        #expect(Set(servers.map(\.primary)).count == 3)
        for (index, entry) in servers.enumerated() {
            let device = try DeviceClient(port: entry.server.port)
            #expect(try device.login(DeviceServerTests.imei))
            for p in 0..<3 {
                try device.send(try Self.packet(records: 2 + index, at: 1_700_000_000_000 + UInt64(p * 1000)))
                #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: UInt32(2 + index))), "server \(index), packet \(p)")
            }
            let primary = try RedisClient(url: "redis://127.0.0.1:\(entry.primary)")
            #expect(try primary.xlen(entry.stream) == 3 * (2 + index), "on the primary of its slot")
            let connected = try entry.server.waitForLog(event: "redis.connected", timeout: 5)
            #expect((connected["endpoint"] as? String)?.split(separator: ",").count == 3, "\(connected)")
            let scrape = try entry.server.scrape()
            #expect(try scrape.value(#"teltonika_redis_cluster_redirects_total{kind="moved"}"#) == 0)
            #expect(try scrape.value(#"teltonika_redis_cluster_redirects_total{kind="ask"}"#) == 0)
            #expect(try scrape.value(#"teltonika_redis_cluster_slot_refreshes_total{result="ok"}"#) >= 1)
            #expect(try scrape.value("teltonika_redis_up") == 1)
            try waitFor(timeout: 10, "the stream's length, read on its primary") {
                try entry.server.scrape().value(#"teltonika_stream_length{stream="telemetry"}"#) == Double(3 * (2 + index))
            }
            #expect(try scrape.value(#"teltonika_redis_durability{mode="none"}"#) == 1, "the primaries run without AOF")
        }
        let first = try servers[0].server.scrape()
        #expect(try first.value("teltonika_allowlist_size") == 1, "the allowlist set read from its primary")
        try waitFor(timeout: 10, "the consumer group's lag, read on the stream's primary") {
            try servers[0].server.scrape()[#"teltonika_stream_group_lag{stream="telemetry",group="archiver"}"#] == 6
        }
        // One publishing connection per primary, named like the single one.
        for node in cluster.nodes {
            guard case .string(let clients) = try RedisClient(url: node.url).command(["CLIENT", "LIST"]) else { continue }
            #expect(clients.components(separatedBy: "name=teltonika-ingest ").count - 1 >= 3, "node \(node.port): \(clients)")
        }
    }

    /// One server with `REDIS_STREAM_SHARDS=4`: the keys `<stream>:{0..3}` live on all three primaries
    /// (slots 13907, 9842, 5649 and 1584), a device in each shard; packets sent by all four at once (batches
    /// that span primaries) are ACKed and every record is in its device's shard, on that shard's primary.
    @Test func testOneServersShardsAreStoredOnEveryPrimary() throws {
        let cluster = try ClusterRedis(primaries: 3)
        let stream = "cluster-shards:\(UUID().uuidString)"
        let keys = (0..<4).map { StreamShards.key(stream, shard: $0, count: 4) }
        let primaries = try keys.map { try cluster.primaryPort(slot: ClusterSlot.of($0)) }
        #expect(Set(primaries).count == 3, "{0} to {3} hash to slots of all three primaries: \(primaries)")
        // One IMEI per shard.
        var imeis: [String] = Array(repeating: "", count: 4)
        for n in 0..<1000 where imeis.contains("") {
            let text = String(356_307_042_441_000 + n)
            let imei = try #require(IMEI(text))
            let shard = StreamShards.shard(of: imei, count: 4)
            if imeis[shard].isEmpty { imeis[shard] = text }
        }
        let server = try Self.server(cluster, stream: stream, ["REDIS_STREAM_SHARDS": "4"])
        let devices = try imeis.map { imei in
            let device = try DeviceClient(port: server.port)
            #expect(try device.login(imei))
            return device
        }
        for p in 0..<4 {
            for (shard, device) in devices.enumerated() {
                try device.send(try Self.packet(records: 1 + shard, at: 1_700_000_000_000 + UInt64(p * 1000)))
            }
            for (shard, device) in devices.enumerated() {
                #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: UInt32(1 + shard))), "shard \(shard), packet \(p)")
            }
        }
        for (shard, key) in keys.enumerated() {
            let entries = try RedisClient(url: "redis://127.0.0.1:\(primaries[shard])").entries(key)
            #expect(entries.count == 4 * (1 + shard), "\(key) on its primary")
            #expect(Set(entries.map { $0["device_id"] ?? "" }) == [imeis[shard]], "only its shard's device")
        }
        #expect(try server.scrape().value(#"teltonika_redis_cluster_redirects_total{kind="moved"}"#) == 0)
    }

    /// The stream's slot migrates to another primary while 20 simulated devices send: `MIGRATING`/`IMPORTING`,
    /// `MIGRATE` of the key (writes now get `ASK`), then `SETSLOT NODE` everywhere (writes now get `MOVED`).
    /// Both kinds of redirect are counted, the map is read again, and the simulator's oracle finds every
    /// ACKed record on the new primary.
    @Test func testASlotMigratedUnderTrafficLosesNoACKedRecord() throws {
        let cluster = try ClusterRedis(primaries: 3)
        let (source, target) = (cluster.nodes[0], cluster.nodes[1])
        let stream = try cluster.key(onPrimary: source.port, prefix: "cluster-migrate:\(UUID().uuidString)")
        let slot = ClusterSlot.of(stream)
        let server = try Self.server(cluster, stream: stream, ["PUBLISH_TIMEOUT_MS": "15000"])
        let (sourceID, targetID) = (try cluster.id(of: source), try cluster.id(of: target))
        let (sourceURL, targetURL, targetPort, metricsPort) = (source.url, target.url, target.port, server.metricsPort)
        let allURLs = cluster.nodes.map(\.url)
        let chaos = NIOLockedValueBox<(done: Bool, error: String?)>((false, nil))
        let thread = Thread {
            do {
                func counter(_ kind: String) throws -> Double {
                    try Scrape(text: httpGet(port: metricsPort, path: "/metrics").body).value(
                        #"teltonika_redis_cluster_redirects_total{kind="\#(kind)"}"#
                    )
                }
                func ok(_ reply: RedisConnection.Reply, _ what: String) throws {
                    guard reply == .string("OK") else { throw TestFailure("\(what): \(reply)") }
                }
                let from = try RedisClient(url: sourceURL)
                let to = try RedisClient(url: targetURL)
                try waitFor(timeout: 15, "500 records before the migration") { try from.xlen(stream) >= 500 }
                try ok(try to.command(["CLUSTER", "SETSLOT", "\(slot)", "IMPORTING", sourceID]), "IMPORTING")
                try ok(try from.command(["CLUSTER", "SETSLOT", "\(slot)", "MIGRATING", targetID]), "MIGRATING")
                try ok(try from.command(["MIGRATE", "127.0.0.1", "\(targetPort)", stream, "0", "5000"]), "MIGRATE")
                try waitFor(timeout: 10, "writes redirected with ASK") { try counter("ask") > 0 }
                for url in [targetURL, sourceURL] + allURLs.filter({ $0 != targetURL && $0 != sourceURL }) {
                    try ok(try RedisClient(url: url).command(["CLUSTER", "SETSLOT", "\(slot)", "NODE", targetID]), "SETSLOT NODE")
                }
                try waitFor(timeout: 10, "writes redirected with MOVED") { try counter("moved") > 0 }
                chaos.withLockedValue { $0.done = true }
            } catch {
                chaos.withLockedValue { $0.error = "\(error)" }
            }
        }
        thread.start()
        let run = try runSimulate([
            "--devices", "20", "--duration", "12", "--port", "\(server.port)", "--records-per-packet", "5", "--response-timeout-ms",
            "15000",
            "--verify", "--redis-url", target.url, "--stream", stream, "--seed", "23",
        ])
        let outcome = chaos.withLockedValue { $0 }
        #expect(outcome.done && outcome.error == nil, "\(outcome)")
        let (acked, verify) = try run.expectEveryACKedRecordStored()
        #expect(acked > 1000)
        #expect(try cluster.primaryPort(slot: slot) == target.port)
        #expect(
            try RedisClient(url: source.url).command(["CLUSTER", "COUNTKEYSINSLOT", "\(slot)"]) == .integer(0),
            "the key left the source"
        )
        let scrape = try server.scrape()
        let moved = try scrape.value(#"teltonika_redis_cluster_redirects_total{kind="moved"}"#)
        let ask = try scrape.value(#"teltonika_redis_cluster_redirects_total{kind="ask"}"#)
        print(
            "slot migration under traffic: \(acked) records ACKed, \(Int(ask)) ASK and \(Int(moved)) MOVED redirects, \(verify["missing"] ?? "?") missing"
        )
        let refreshed = server.logs.filter {
            $0["event"] as? String == "redis.cluster_slots_refreshed" && $0["reason"] as? String == "moved"
        }
        #expect(refreshed.contains { $0["changed_slots"] as? String == "1" }, "\(refreshed)")
    }

    /// One primary stopped (SIGSTOP): the server whose stream lives there ACKs nothing until it resumes;
    /// the server whose stream lives on another primary keeps ACKing, although its own health and settings
    /// checks hit the stopped node too. Both stay ready. Once resumed, the held packet is ACKed and stored.
    @Test func testAStoppedPrimaryStopsOnlyTheACKsOfItsSlots() throws {
        let cluster = try ClusterRedis(primaries: 3)
        let (stopped, running) = (cluster.nodes[0], cluster.nodes[1])
        let run = UUID().uuidString
        let (streamA, streamB) = (
            try cluster.key(onPrimary: stopped.port, prefix: "cluster-stop:\(run)"),
            try cluster.key(onPrimary: running.port, prefix: "cluster-stop:\(run)")
        )
        let settings = ["REDIS_TIMEOUT_MS": "1000", "PUBLISH_TIMEOUT_MS": "60000", "REDIS_CHECK_INTERVAL_MS": "1000"]
        let (a, b) = (try Self.server(cluster, stream: streamA, settings), try Self.server(cluster, stream: streamB, settings))
        let (deviceA, deviceB) = (try DeviceClient(port: a.port), try DeviceClient(port: b.port))
        #expect(try deviceA.login(DeviceServerTests.imei))
        #expect(try deviceB.login("356307042441014"))
        for device in [deviceA, deviceB] {
            try device.send(try Self.packet(records: 2, at: 1_700_000_000_000))
            #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 2)))
        }

        stopped.pause()
        defer { stopped.resume() }
        try deviceA.send(try Self.packet(records: 3, at: 1_700_000_001_000))
        // B's settings check (every second, to every primary) times out on the stopped node: B sees it down.
        try waitFor(timeout: 15, "B's publisher sees the stopped primary down") {
            b.logs.contains {
                $0["event"] as? String == "redis.cluster_node_down" && $0["connection"] as? String == "teltonika-ingest"
                    && $0["node"] as? String == "127.0.0.1:\(stopped.port)"
            }
        }
        let started = Date()
        for p in 1...5 {
            try deviceB.send(try Self.packet(records: 4, at: 1_700_000_001_000 + UInt64(p * 1000)))
            #expect(deviceB.receive(4, timeout: 3) == .bytes(AVLAck.bytes(count: 4)), "B's packet \(p) while the other primary is stopped")
        }
        let seconds = Date().timeIntervalSince(started)
        #expect(try RedisClient(url: running.url).xlen(streamB) == 2 + 5 * 4)
        #expect(deviceA.receive(4, timeout: 0.5) == .timeout([]), "A's primary is stopped: no ACK")
        #expect(try a.http("/readyz").status == 200 && b.http("/readyz").status == 200, "Redis answers on the other primaries")
        #expect(try a.scrape().value("teltonika_acks_total") == 1)
        print(
            "one primary stopped: the other server ACKed 5 packets in \(String(format: "%.2f", seconds)) s; the stopped primary's server none"
        )

        stopped.resume()
        #expect(deviceA.receive(4, timeout: 20) == .bytes(AVLAck.bytes(count: 3)), "ACKed once its primary answers again")
        // The write that timed out while the node was stopped may have been applied on resume: a duplicate.
        #expect(try RedisClient(url: stopped.url).xlen(streamA) >= 2 + 3)
        _ = try a.waitForLog(event: "redis.cluster_node_up", timeout: 10)
    }

    /// A primary `kill -9`ed under traffic: replication to its replica is cut for a second first (replica
    /// stopped, its link killed) while the primary takes writes, then the primary is killed and the replica
    /// resumed; the cluster promotes it, the server finds the new primary by itself (no restart), and once
    /// the old primary is back (as the new one's replica) ACKs for the stream resume. With
    /// `REDIS_MIN_REPLICAS=1` (a `WAIT` per primary) the oracle, reading the promoted node, finds every ACKed
    /// record; with 0 the cut's writes were ACKed on the primary's word and died with it: the oracle must
    /// find them missing (the proof that this test can fail).
    @Test(arguments: [1, 0])
    func testAKilledPrimaryFailsOverWithoutLosingAnACKedRecord(minReplicas: Int) throws {
        let cluster = try ClusterRedis(primaries: 3, replicasEach: 1)
        let primary = cluster.nodes[0]
        let stream = try cluster.key(onPrimary: primary.port, prefix: "cluster-failover:\(UUID().uuidString)")
        let slot = ClusterSlot.of(stream)
        let replica = cluster.node(port: try cluster.replicaPort(slot: slot))
        let server = try Self.server(
            cluster,
            stream: stream,
            [
                "REDIS_MIN_REPLICAS": "\(minReplicas)", "REDIS_REPLICA_TIMEOUT_MS": "500", "REDIS_TIMEOUT_MS": "1000",
                "PUBLISH_TIMEOUT_MS": "15000",
            ]
        )
        let result = NIOLockedValueBox<SimulateRun?>(nil)
        let (port, replicaURL) = (server.port, replica.url)
        let simulation = Thread {
            let run = try? runSimulate([
                "--devices", "20", "--duration", "20", "--port", "\(port)", "--records-per-packet", "5", "--response-timeout-ms", "15000",
                "--verify", "--redis-url", replicaURL, "--stream", stream, "--seed", "29",
            ])
            result.withLockedValue { $0 = run }
        }
        simulation.start()
        let other = cluster.nodes[1]
        let old = try RedisClient(url: primary.url)
        try waitFor(timeout: 15, "1,000 records before the cut") { try old.xlen(stream) >= 1000 }
        replica.pause()
        _ = try old.command(["CLIENT", "KILL", "TYPE", "replica"])
        let before = try old.xlen(stream)
        // The cut: writes only the primary has. With REDIS_MIN_REPLICAS=0 they are ACKed at once and come by
        // the hundred; wait for 100. With 1 there may be none: every device's packet can be in the batch
        // whose WAIT falls short, and a held packet is not followed by its device's next one. Those held
        // packets are then written again on the new primary, which the oracle checks.
        if minReplicas == 0 {
            try waitFor(timeout: 15, "100 writes only the primary has") { try old.xlen(stream) - before >= 100 }
        } else {
            usleep(1_000_000)
        }
        let duringCut = try old.xlen(stream) - before
        primary.stop()
        let killed = Date()
        replica.resume()
        try waitFor(timeout: 30, "the cluster promotes the replica") { try cluster.primaryPort(slot: slot, asking: other) == replica.port }
        let promoted = Date().timeIntervalSince(killed)
        try waitFor(timeout: 15, "the server reads the new map") {
            server.logs.contains {
                $0["event"] as? String == "redis.cluster_slots_refreshed"
                    && ($0["primaries"] as? String)?.contains("\(replica.port)") == true
            }
        }
        let acksBefore = try server.scrape().value("teltonika_acks_total")
        try primary.start()  // rejoins as the new primary's replica: WAIT 1 can be met again
        try waitFor(timeout: 30, "ACKs resume on the new primary") { try server.scrape().value("teltonika_acks_total") > acksBefore + 20 }
        try waitFor(timeout: 40, "the simulation ends") { result.withLockedValue { $0 } != nil }
        let run = try #require(result.withLockedValue { $0 })
        let summary = try #require(run.line("simulate:"), "\(run)")
        let verify = try #require(run.line("verify:"), "\(run)")
        print(
            "cluster failover, REDIS_MIN_REPLICAS=\(minReplicas): \(duringCut) records written during the cut, promoted in "
                + "\(String(format: "%.1f", promoted)) s, \(summary.int("records_acked")) ACKed, missing \(verify.int("missing"))"
        )
        if minReplicas == 0 { #expect(duringCut >= 100, "the primary took writes during the cut") }
        #expect(
            server.process.isRunning,
            "followed the failover without a restart: \(server.stderrLines.suffix(40).joined(separator: "\n"))"
        )
        #expect(
            server.logs.contains {
                $0["event"] as? String == "redis.cluster_node_down" && $0["node"] as? String == "127.0.0.1:\(primary.port)"
            }
        )
        if minReplicas == 0 {
            #expect(run.status == 1 && verify.int("missing") > 0, "the cut's writes were ACKed and lost: \(run)")
            return
        }
        let (acked, _) = try run.expectEveryACKedRecordStored()
        #expect(acked > 1000)
    }

    /// The tools against a cluster, started at a node that does not serve the device's keys: `device` (its node
    /// from `REDIS_MODE=cluster` and `REDIS_CLUSTER_NODES`, as on a server's host) reads the registry entry the
    /// server wrote, `command send` (`--redis-url`) queues a command the server then delivers; each key was
    /// reached by following `MOVED` (without it, the first reply is the redirect: `device` exits 1, `command
    /// send` is "not queued").
    @Test func testTheToolsFollowRedirectsToEachKeysNode() throws {
        let cluster = try ClusterRedis(primaries: 3)
        let imei = DeviceServerTests.imei
        let stream = try cluster.key(onPrimary: cluster.nodes[0].port, prefix: "cluster-tools:\(UUID().uuidString)")
        let server = try Self.server(cluster, stream: stream, ["COMMAND_LOGIN_GRACE_MS": "0"])
        let (devices, commands) = (DeviceKeys(prefix: server.stream + ":devices"), CommandKeys(prefix: server.stream + ":commands"))
        let (events, notices) = (server.stream + ":command-events", server.stream + ":notices")
        // Not the node of the device's keys ({IMEI}: its registry entry, its command queue and commands).
        let imeiNode = try cluster.primaryPort(slot: ClusterSlot.of(devices.device(imei)))
        let wrong = try #require(cluster.nodes.first { $0.port != imeiNode })
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(imei))
        try waitFor(timeout: 10, "the registry entry") {
            try cluster.client(for: devices.device(imei)).command(["EXISTS", devices.device(imei)]) == .integer(1)
        }

        let shown = try runBinary(
            ["device", imei, "--json"],
            environment: [
                "REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": "127.0.0.1:\(wrong.port)", "REDIS_URL": "redis://127.0.0.1:1",
                "REDIS_DEVICE_PREFIX": server.stream + ":devices", "REDIS_COMMAND_PREFIX": server.stream + ":commands",
            ]
        )
        #expect(shown.status == 0, "\(shown)")
        let fields = (try? JSONSerialization.jsonObject(with: Data(shown.stdout.utf8))) as? [String: String] ?? [:]
        #expect(fields["online"] == "yes" && fields["peer"]?.hasPrefix("127.0.0.1:") == true, "\(shown)")

        let sent = try runBinary([
            "command", "send", imei, "getinfo", "--redis-url", wrong.url, "--prefix", server.stream + ":commands", "--events-stream",
            events, "--notices-stream", notices,
        ])
        #expect(sent.status == 0, "\(sent)")
        let id = String(sent.stdout.split(separator: "\n").first ?? "")
        #expect(try cluster.client(for: commands.command(imei, id: id)).command(["EXISTS", commands.command(imei, id: id)]) == .integer(1))
        #expect(try cluster.client(for: events).xlen(events) >= 1, "the queued event, on its node")
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 0]), "the server delivers it: a Codec 12 frame")
    }

    /// Cluster settings that cannot work stop the process at start with exit 2, naming the setting.
    @Test(arguments: [
        (["REDIS_MODE": "sharded"], "REDIS_MODE", "single or cluster"),
        (["REDIS_CLUSTER_NODES": "127.0.0.1:7000"], "REDIS_CLUSTER_NODES", "REDIS_MODE is single"),
        (["REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": "127.0.0.1"], "REDIS_CLUSTER_NODES", "host:port"),
        (["REDIS_MODE": "cluster", "REDIS_SENTINELS": "127.0.0.1:26379"], "REDIS_SENTINELS", "REDIS_MODE=cluster"),
        (["REDIS_MODE": "cluster", "REDIS_URL": "redis://127.0.0.1:7000/2"], "REDIS_URL", "database 0"),
    ])
    func testClusterSettingErrorsExitTwoNamingTheSetting(_ settings: [String: String], _ key: String, _ reason: String) throws {
        let server = try ServerProcess(environment: settings, waitUntilListening: false)
        let exit = try #require(server.waitForExit(timeout: 20), "\(settings) must stop the process")
        #expect(exit.status == 2 && !exit.bySignal, "exit \(exit) for \(settings)")
        let text = server.stderrLines.joined(separator: "\n")
        #expect(text.contains("invalid setting \(key): ") && text.contains(reason), "\(settings): \(text)")
    }
}
