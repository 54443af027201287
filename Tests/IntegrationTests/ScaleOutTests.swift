import Codec8
import FixtureSupport
import Foundation
import NIOConcurrencyHelpers
import RedisWire
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 12's proof, every part at once with real processes: a 3-primary Redis Cluster with a replica
/// each, HAProxy (`mode tcp`, `send-proxy-v2`) in front of 3 instances of the binary (`PROXY_PROTOCOL=v2`,
/// `REDIS_MODE=cluster`, `REDIS_STREAM_SHARDS=6`), and 200 simulated devices through HAProxy.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct ScaleOutTests {
    static let shards = 6
    static let devices = 200

    /// While the fleet sends (3 packets/s per device, 5 records each: about 3,000 records/s, well within
    /// 2 cores shared by 6 Redis nodes, 3 instances, HAProxy and the fleet), one after the other and each
    /// waited for by its effect: a shard's slot is migrated to another primary (the instances are
    /// redirected: `ASK`, then `MOVED`); a replica is stopped until a record is stored twice (its primary's
    /// packets are written, not ACKed, and sent again), so that duplicates are there to be reported; a
    /// primary holding other shards is `kill -9`ed and, while its slots have none, an instance holding
    /// packets for them is `kill -9`ed too (its devices reconnect through HAProxy: the other two hold all
    /// 200); the replica is promoted and, once the old primary is back as the new one's replica, those
    /// shards' ACKs resume.
    /// `REDIS_MIN_REPLICAS=1`: an ACK means a replica has the record, so the failover loses no ACKed
    /// record (with 0 it can: RedisClusterTests' failover test shows it). Then `simulate --verify` reads
    /// the 6 shards through a replica of the cluster (every read is redirected): 0 ACKed records missing,
    /// each device's records in the order sent, duplicates labelled by record_id (reported, not failed).
    /// HAProxy connects from 127.0.0.4, the devices from 127.0.0.1: the instances log 127.0.0.1.
    @Test func testAFleetBehindHAProxyOnAClusterLosesNoACKedRecordThroughEveryFault() throws {
        let began = Date()
        let cluster = try ClusterRedis(primaries: 3, replicasEach: 1)
        let stream = "scale-out:\(UUID().uuidString)"
        let keys = StreamShards.keys(stream, count: Self.shards)
        let homes = try keys.map { try cluster.primaryPort(slot: ClusterSlot.of($0)) }
        let primaries = cluster.nodes.prefix(cluster.primaries)
        #expect(Set(homes).count == 3, "six shards over the three primaries: \(homes)")
        // The roles: shard 0 migrates from its primary to the one with the fewest shards; the third is killed.
        let migrated = 0
        let source = cluster.node(port: homes[migrated])
        let target = primaries.filter { $0.port != source.port }.min { a, b in
            homes.count(where: { $0 == a.port }) < homes.count(where: { $0 == b.port })
        }!
        let killed = primaries.first { $0.port != source.port && $0.port != target.port }!
        let failedShard = try #require(homes.firstIndex(of: killed.port))
        let failedSlot = ClusterSlot.of(keys[failedShard])
        let promoted = cluster.node(port: try cluster.replicaPort(slot: failedSlot))
        let verifyNode = cluster.node(port: try cluster.replicaPort(slot: ClusterSlot.of(keys[migrated])))

        let shared = [
            "REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": cluster.seeds, "REDIS_STREAM_SHARDS": "\(Self.shards)",
            "REDIS_TELEMETRY_STREAM": stream, "REDIS_RESPONSES_STREAM": stream + ":responses", "REDIS_DEVICE_PREFIX": stream + ":devices",
            "REDIS_NOTICES_STREAM": stream + ":notices", "REDIS_COMMAND_PREFIX": stream + ":commands",
            "REDIS_COMMAND_EVENTS_STREAM": stream + ":command-events", "REDIS_MIN_REPLICAS": "1", "REDIS_REPLICA_TIMEOUT_MS": "500",
            "REDIS_TIMEOUT_MS": "1000", "PUBLISH_TIMEOUT_MS": "15000", "PROXY_PROTOCOL": "v2", "PROXY_TRUSTED_CIDRS": "127.0.0.4/32",
            "LOG_LEVEL": "info",
        ]
        // Instance 0 logs each login (debug), with the peer the PROXY header named.
        let instances = try (0..<3).map { index in
            try ServerProcess(
                redisURL: "redis://127.0.0.1:1",
                environment: shared.merging(["LOG_LEVEL": index == 0 ? "debug" : "info"]) { $1 }
            )
        }
        let haproxy = try HAProxyProcess(backendPorts: instances.map(\.port), backendSource: "127.0.0.4")
        let survivors = Array(instances.prefix(2))
        let victim = instances[2]

        let result = NIOLockedValueBox<SimulateRun?>(nil)
        let arguments = [
            "--devices", "\(Self.devices)", "--duration", "25", "--port", "\(haproxy.port)", "--rate", "3", "--records-per-packet", "5",
            "--response-timeout-ms", "2000", "--verify", "--redis-url", verifyNode.url, "--stream", stream, "--stream-shards",
            "\(Self.shards)", "--seed", "41",
        ]
        let simulation = Thread {
            let run = try? runSimulate(arguments)
            result.withLockedValue { $0 = run }
        }
        simulation.start()
        func stored() throws -> Int {
            // A fresh connection each time: the slots move under it.
            let reader = try RedirectFollowingConnection(url: try RedisURL(parsing: target.url), timeoutMs: 2000)
            return try keys.reduce(0) { sum, key in
                guard case .integer(let n) = try reader.command(["XLEN", key], key: key) else { throw TestFailure("XLEN \(key)") }
                return sum + Int(n)
            }
        }
        func sum(_ series: String, _ servers: [ServerProcess]) throws -> Double {
            try servers.reduce(0) { $0 + (try $1.scrape()[series] ?? 0) }
        }

        try waitFor(timeout: 20, "2,000 records stored before the first fault", every: 0.2) { try stored() >= 2000 }

        // 1. Shard 0's slot migrates under traffic: ASK while its key is on the target, MOVED once the slot is.
        let slot = ClusterSlot.of(keys[migrated])
        let (sourceID, targetID) = (try cluster.id(of: source), try cluster.id(of: target))
        func ok(_ reply: RedisConnection.Reply, _ what: String) throws {
            guard reply == .string("OK") else { throw TestFailure("\(what): \(reply)") }
        }
        let from = try RedisClient(url: source.url)
        try ok(try RedisClient(url: target.url).command(["CLUSTER", "SETSLOT", "\(slot)", "IMPORTING", sourceID]), "IMPORTING")
        try ok(try from.command(["CLUSTER", "SETSLOT", "\(slot)", "MIGRATING", targetID]), "MIGRATING")
        guard case .array(let inSlot) = try from.command(["CLUSTER", "GETKEYSINSLOT", "\(slot)", "100"]) else {
            throw TestFailure("GETKEYSINSLOT")
        }
        let slotKeys = inSlot.compactMap { if case .string(let key) = $0 { key } else { nil } }
        #expect(slotKeys.contains(keys[migrated]), "\(slotKeys)")
        try ok(try from.command(["MIGRATE", "127.0.0.1", "\(target.port)", "", "0", "10000", "KEYS"] + slotKeys), "MIGRATE")
        try waitFor(timeout: 15, "writes redirected with ASK", every: 0.1) {
            try sum(#"teltonika_redis_cluster_redirects_total{kind="ask"}"#, survivors) > 0
        }
        for node in [target, source, killed] {
            try ok(try RedisClient(url: node.url).command(["CLUSTER", "SETSLOT", "\(slot)", "NODE", targetID]), "SETSLOT NODE")
        }
        try waitFor(timeout: 15, "writes redirected with MOVED", every: 0.1) {
            try sum(#"teltonika_redis_cluster_redirects_total{kind="moved"}"#, survivors) > 0
        }
        #expect(try RedisClient(url: source.url).command(["CLUSTER", "COUNTKEYSINSLOT", "\(slot)"]) == .integer(0))

        // 2. The source primary's replica stalls (SIGSTOP): its WAITs come back short, so packets of that
        // primary's shards are written but not ACKed; their devices time out (2 s) and send them again: the
        // same records stored twice, which the oracle must report by record_id and not count as a failure.
        let stalled = verifyNode
        let stalledShard = try #require(homes.indices.first { homes[$0] == source.port && $0 != migrated })
        stalled.pause()
        defer { stalled.resume() }
        let onSource = try RedisClient(url: source.url)
        try waitFor(timeout: 20, "a record stored twice while the replica is stopped", every: 0.3) {
            guard case .array(let recent) = try onSource.command(["XREVRANGE", keys[stalledShard], "+", "-", "COUNT", "3000"]) else {
                return false
            }
            var seen = Set<String>()
            for case .array(let entry) in recent {
                guard entry.count == 2, case .array(let fields) = entry[1],
                    let index = fields.firstIndex(of: .string("record_id")), index + 1 < fields.count,
                    case .string(let recordID) = fields[index + 1]
                else { continue }
                if !seen.insert(recordID).inserted { return true }
            }
            return false
        }
        stalled.resume()

        // 3. kill -9 of the third primary, and while its slots have no primary, kill -9 of an instance that holds
        // packets for them: unACKed, so their devices send them again through HAProxy to the other two
        // instances (a server that ACKed before storing would lose them here). The replica is promoted; once the
        // old primary is back (as the new one's replica, so WAIT 1 can be met), its shards' ACKs resume.
        killed.stop()
        let killedAt = Date()
        #expect(try victim.scrape().value("teltonika_connections_active") > 0, "the victim holds devices")
        try waitFor(timeout: 10, "the victim holds packets for the dead primary", every: 0.05) {
            try victim.scrape().value("teltonika_publish_queue_depth_records") >= 10
        }
        victim.signal(SIGKILL)
        let killedInstanceAt = Date()
        #expect(victim.waitForExit(timeout: 10)?.bySignal == true)
        let afterKill = try sum("teltonika_acks_total", survivors)
        try waitFor(timeout: 30, "the cluster promotes the replica", every: 0.2) {
            try cluster.primaryPort(slot: failedSlot, asking: target) == promoted.port
        }
        let promotedIn = Date().timeIntervalSince(killedAt)
        try killed.start()
        let newPrimary = try RedisClient(url: promoted.url)
        let lengthAtRestart = try newPrimary.xlen(keys[failedShard])
        try waitFor(timeout: 30, "ACKs of the failed-over shard resume", every: 0.2) {
            try newPrimary.xlen(keys[failedShard]) >= lengthAtRestart + 100
        }
        try waitFor(timeout: 20, "the 200 devices on the two other instances", every: 0.2) {
            try sum("teltonika_connections_active", survivors) == Double(Self.devices)
        }
        let reconnected = Date().timeIntervalSince(killedInstanceAt)
        let faultsDone = Date().timeIntervalSince(began)
        #expect(result.withLockedValue { $0 } == nil, "every fault came while the fleet was sending")

        try waitFor(timeout: 90, "the simulation ends", every: 0.2) { result.withLockedValue { $0 } != nil }
        let run = try #require(result.withLockedValue { $0 })
        let (acked, verify) = try run.expectEveryACKedRecordStored()
        let fields = try #require(run.line("verify:"), "\(run)")
        #expect(fields.int("order_violations") == 0, "\(run)")
        #expect(fields.int("record_id_mismatches") == 0, "\(run)")
        // Reported, labelled by record_id, not a failure.
        #expect(fields.int("duplicate_records") > 0 && fields.int("duplicate_records") <= fields.int("duplicates"), "\(run)")
        #expect(
            run.stderr.range(of: #"records stored more than once .* e\.g\. 35\d{13}/[0-9a-f]{16}x\d"#, options: .regularExpression) != nil,
            "duplicates named by device and record_id: \(run.stderr)"
        )
        #expect(acked > 10_000, "\(run)")
        #expect(try sum("teltonika_acks_total", survivors) > afterKill, "the survivors went on ACKing")
        for key in keys {
            #expect(
                try RedisClient(url: "redis://127.0.0.1:\(try cluster.primaryPort(slot: ClusterSlot.of(key), asking: target))").xlen(key)
                    > 0
            )
        }
        #expect(survivors.allSatisfy { $0.process.isRunning })
        #expect(
            survivors[1].logs.contains {
                $0["event"] as? String == "redis.cluster_node_down" && $0["node"] as? String == "127.0.0.1:\(killed.port)"
            }
        )

        // The devices' own address in the logs, not HAProxy's.
        let logins = survivors[0].stderrLines.filter { $0.contains(#""event":"device.login""#) }.compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["peer"] as? String
        }
        #expect(!logins.isEmpty)
        #expect(logins.allSatisfy { $0.hasPrefix("127.0.0.1:") }, "\(logins.filter { !$0.hasPrefix("127.0.0.1:") })")
        let moved = try sum(#"teltonika_redis_cluster_redirects_total{kind="moved"}"#, survivors)
        let ask = try sum(#"teltonika_redis_cluster_redirects_total{kind="ask"}"#, survivors)
        print(
            "scale-out: \(acked) records ACKed, verify \(verify.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")); "
                + "devices all on 2 instances \(String(format: "%.1f", reconnected)) s after the instance's kill, \(Int(ask)) ASK and \(Int(moved)) MOVED redirects, "
                + "replica promoted in \(String(format: "%.1f", promotedIn)) s, faults done at \(String(format: "%.1f", faultsDone)) s, "
                + "\(logins.count) logins seen on instance 0, wall \(String(format: "%.1f", Date().timeIntervalSince(began))) s"
        )
    }
}
