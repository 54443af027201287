/// Test support: Redis topologies on loopback (a primary with replicas, Sentinels watching it).
import Foundation
import RedisWire

#if canImport(Glibc)
import Glibc
#endif

/// A primary and its replicas (each `--replicaof` the primary, syncing at once), returned once every
/// replica is online.
final class ReplicatedRedis {
    /// Replication starts without the 5 s diskless-sync delay; every node may become a primary.
    static let nodeArguments = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]

    let primary: OwnRedis
    let replicas: [OwnRedis]

    /// `primaryArguments`: more settings for the primary alone.
    init(replicas count: Int, primaryArguments: [String] = []) throws {
        let primary = try OwnRedis(arguments: Self.nodeArguments + primaryArguments)
        self.primary = primary
        replicas = try (0..<count).map { _ in
            try OwnRedis(arguments: Self.nodeArguments + ["--replicaof", "127.0.0.1", "\(primary.port)"])
        }
        try waitFor(timeout: 15, "\(count) replicas online") { try Self.onlineReplicas(of: primary) == count }
    }

    /// Replicas the node reports online (`INFO replication`).
    static func onlineReplicas(of node: OwnRedis) throws -> Int {
        guard case .string(let info) = try RedisClient(url: node.url).command(["INFO", "replication"]) else { return -1 }
        return info.components(separatedBy: "state=online").count - 1
    }
}

/// Three Sentinels watching a primary as `mymaster` (quorum 2, down after 1 s), returned once each
/// knows the replicas and the other Sentinels.
final class Sentinels {
    let nodes: [OwnRedis]
    let masterName = "mymaster"

    init(watching primary: OwnRedis, replicas: Int) throws {
        let config = """
            sentinel monitor mymaster 127.0.0.1 \(primary.port) 2
            sentinel down-after-milliseconds mymaster 1000
            sentinel failover-timeout mymaster 10000
            sentinel parallel-syncs mymaster 2

            """
        nodes = try (0..<3).map { _ in try OwnRedis(sentinel: config) }
        for node in nodes {
            try waitFor(timeout: 30, "Sentinel \(node.port) knows the replicas and the other Sentinels") {
                let client = try RedisClient(url: node.url)
                guard case .array(let known) = try client.command(["SENTINEL", "replicas", "mymaster"]),
                    case .array(let others) = try client.command(["SENTINEL", "sentinels", "mymaster"])
                else { return false }
                return known.count == replicas && others.count == nodes.count - 1
            }
        }
    }

    /// `host:port,...` for `REDIS_SENTINELS`.
    var addresses: String { nodes.map { "127.0.0.1:\($0.port)" }.joined(separator: ",") }

    /// The primary's port as the first Sentinel names it.
    func primaryPort() throws -> Int { try Self.primaryPort(sentinel: nodes[0].url, masterName: masterName) }

    /// How many failovers the first Sentinel knows of (`config-epoch` of `SENTINEL MASTER`: 0 before the
    /// first, one more per promotion).
    func failovers() throws -> Int {
        let reply = try RedisClient(url: nodes[0].url).command(["SENTINEL", "MASTER", masterName])
        guard case .array(let fields) = reply, let index = fields.firstIndex(of: .string("config-epoch")), index + 1 < fields.count,
            case .string(let epoch) = fields[index + 1], let n = Int(epoch)
        else { throw TestFailure("no config-epoch: \(reply)") }
        return n
    }

    static func primaryPort(sentinel: String, masterName: String) throws -> Int {
        let reply = try RedisClient(url: sentinel).command(["SENTINEL", "get-master-addr-by-name", masterName])
        guard case .array(let address) = reply, address.count == 2, case .string(let port) = address[1], let n = Int(port) else {
            throw TestFailure("no primary: \(reply)")
        }
        return n
    }
}
