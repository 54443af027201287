/// The Redis Cluster settings (`REDIS_MODE`, `REDIS_CLUSTER_NODES`) and how they fit the others.
import RedisWire

/// How the server reaches Redis (`REDIS_MODE`). Sentinel is not a mode of its own: `REDIS_SENTINELS`
/// set in `single` mode means "the primary the Sentinels name".
public enum RedisMode: String, Sendable, CaseIterable {
    /// One primary: `REDIS_URL`, or the one the Sentinels name.
    case single
    /// A Redis Cluster: each key to the primary of its slot (`REDIS_CLUSTER_NODES`).
    case cluster
}

extension IngestConfiguration {
    static let redisModeSetting = Setting(
        env: "REDIS_MODE",
        flag: "redis-mode",
        help: "single (REDIS_URL, or the primary REDIS_SENTINELS name) or cluster (a Redis Cluster: REDIS_CLUSTER_NODES).",
        read: { $0.redisMode.rawValue },
        apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
            guard let mode = RedisMode(rawValue: v) else {
                throw ConfigurationError(key: "REDIS_MODE", message: "expected single or cluster, got '\(v)'")
            }
            c.redisMode = mode
        }
    )

    static let redisClusterNodesSetting = Setting(
        env: "REDIS_CLUSTER_NODES",
        flag: "redis-cluster-nodes",
        help: "host:port,... of Redis Cluster nodes asked for the slot map (REDIS_MODE=cluster); empty: REDIS_URL's host:port.",
        read: { c in
            c.redisClusterNodes.map { endpoint in
                if case .tcp(let host, let port) = endpoint { ClusterNode(host: host, port: port).description } else { "" }
            }.joined(separator: ",")
        },
        apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
            c.redisClusterNodes = []
            for item in v.split(separator: ",") {
                let text = String(item.filter { !$0.isWhitespace })
                guard !text.isEmpty else { continue }
                guard let node = ClusterNode(parsing: text), !node.host.isEmpty, !node.host.contains("/"), !node.host.contains("@") else {
                    throw ConfigurationError(key: "REDIS_CLUSTER_NODES", message: "'\(text)': a node is host:port (port 1-65535)")
                }
                c.redisClusterNodes.append(.tcp(host: node.host, port: node.port))
            }
        }
    )

    /// Checks that the cluster settings fit the rest.
    func validateCluster() throws(ConfigurationError) {
        guard redisMode == .cluster else {
            if !redisClusterNodes.isEmpty {
                throw ConfigurationError(key: "REDIS_CLUSTER_NODES", message: "is set, but REDIS_MODE is single (set REDIS_MODE=cluster)")
            }
            return
        }
        if !redisSentinels.isEmpty {
            throw ConfigurationError(
                key: "REDIS_SENTINELS",
                message: "cannot be used with REDIS_MODE=cluster (a cluster finds its own primaries)"
            )
        }
        if redisURL.database != 0 {
            throw ConfigurationError(key: "REDIS_URL", message: "database \(redisURL.database): a Redis Cluster has only database 0")
        }
        if redisClusterNodes.isEmpty, case .unix = redisURL.endpoint {
            throw ConfigurationError(
                key: "REDIS_CLUSTER_NODES",
                message: "is needed with REDIS_MODE=cluster when REDIS_URL is a unix socket (cluster nodes are host:port)"
            )
        }
    }
}
