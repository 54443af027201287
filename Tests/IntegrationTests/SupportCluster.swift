/// Test support: a Redis Cluster of the test's own on loopback (redis-server --cluster-enabled yes).
import Foundation
import RedisWire

#if canImport(Glibc)
import Glibc
#endif

/// Primaries (and optionally a replica each) with every slot assigned by `redis-cli --cluster create`,
/// `cluster-require-full-coverage no` (a failed primary's slots stop, the others go on serving),
/// returned once every node reports `cluster_state:ok` and the same slot map. Each node has a free
/// port and a free cluster-bus port (`cluster-port`: the default, port + 10000, may not be free or even
/// exist). Stopped and deleted with the object.
final class ClusterRedis {
    /// Primaries first (in `--cluster create` order), then replicas.
    let nodes: [OwnRedis]
    let primaries: Int

    init(primaries: Int = 3, replicasEach: Int = 0) throws {
        self.primaries = primaries
        nodes = try (0..<(primaries * (1 + replicasEach))).map { _ in
            try OwnRedis(arguments: [
                "--cluster-enabled", "yes", "--cluster-config-file", "$DIR/nodes.conf", "--cluster-port", "\(TestEnvironment.freePort())",
                "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no", "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0",
            ])
        }
        let create = Process()
        create.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
        create.arguments =
            ["--cluster", "create"] + nodes.map { "127.0.0.1:\($0.port)" } + ["--cluster-replicas", "\(replicasEach)", "--cluster-yes"]
        create.standardOutput = FileHandle.nullDevice
        create.standardError = FileHandle.nullDevice
        try create.run()
        let started = Date()
        while create.isRunning && Date().timeIntervalSince(started) < 30 { usleep(20_000) }
        guard !create.isRunning, create.terminationStatus == 0 else { throw TestFailure("redis-cli --cluster create failed") }
        try waitFor(timeout: 30, "cluster_state:ok and one slot map on every node") {
            let maps = try nodes.map { node -> String in
                let client = try RedisClient(url: node.url)
                guard case .string(let info) = try client.command(["CLUSTER", "INFO"]), info.contains("cluster_state:ok") else { return "" }
                let slots = try client.command(["CLUSTER", "SLOTS"])
                // Every range lists its primary and all its replicas.
                guard case .array(let ranges) = slots,
                    ranges.allSatisfy({ if case .array(let fields) = $0 { fields.count == 3 + replicasEach } else { false } })
                else { return "" }
                return "\(slots)"
            }
            return !maps[0].isEmpty && Set(maps).count == 1
        }
    }

    /// `REDIS_CLUSTER_NODES`: every primary.
    var seeds: String { nodes.prefix(primaries).map { "127.0.0.1:\($0.port)" }.joined(separator: ",") }

    /// The node whose port is `port`.
    func node(port: Int) -> OwnRedis { nodes.first { $0.port == port }! }

    /// A node's id (`CLUSTER MYID`).
    func id(of node: OwnRedis) throws -> String {
        guard case .string(let id) = try RedisClient(url: node.url).command(["CLUSTER", "MYID"]) else { throw TestFailure("no id") }
        return id
    }

    /// The port of the primary serving `slot`, as `CLUSTER SLOTS` on `askedNode` says.
    func primaryPort(slot: Int, asking askedNode: OwnRedis? = nil) throws -> Int {
        let reply = try RedisClient(url: (askedNode ?? nodes[0]).url).command(["CLUSTER", "SLOTS"])
        guard case .array(let ranges) = reply else { throw TestFailure("CLUSTER SLOTS: \(reply)") }
        for case .array(let fields) in ranges {
            guard case .integer(let first) = fields[0], case .integer(let last) = fields[1], case .array(let primary) = fields[2],
                case .integer(let port) = primary[1]
            else { continue }
            if first <= slot && slot <= last { return Int(port) }
        }
        throw TestFailure("slot \(slot) not served")
    }

    /// The port of the first replica of the primary serving `slot`.
    func replicaPort(slot: Int) throws -> Int {
        let reply = try RedisClient(url: nodes[0].url).command(["CLUSTER", "SLOTS"])
        guard case .array(let ranges) = reply else { throw TestFailure("CLUSTER SLOTS: \(reply)") }
        for case .array(let fields) in ranges {
            guard case .integer(let first) = fields[0], case .integer(let last) = fields[1], first <= slot, slot <= last, fields.count > 3,
                case .array(let replica) = fields[3], case .integer(let port) = replica[1]
            else { continue }
            return Int(port)
        }
        throw TestFailure("slot \(slot) has no replica")
    }

    /// A key with `prefix` whose slot the primary on `port` serves, other than the slots in `avoiding`.
    func key(onPrimary port: Int, prefix: String, avoiding: Set<Int> = []) throws -> String {
        for n in 0..<10_000 {
            let key = "\(prefix):\(n)"
            let slot = ClusterSlot.of(key)
            if !avoiding.contains(slot), try primaryPort(slot: slot) == port { return key }
        }
        throw TestFailure("no key on \(port)")
    }

    /// A client of the primary that serves `key` now.
    func client(for key: String) throws -> RedisClient {
        try RedisClient(url: "redis://127.0.0.1:\(try primaryPort(slot: ClusterSlot.of(key)))")
    }
}
