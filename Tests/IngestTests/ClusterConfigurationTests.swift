import RedisWire
import Testing

@testable import Ingest

/// The Redis Cluster settings and the connector they choose.
struct ClusterConfigurationTests {
    /// `REDIS_MODE=cluster`: the seeds from `REDIS_CLUSTER_NODES`, else `REDIS_URL`'s host and port; what
    /// cannot work with a cluster names its setting.
    @Test func testClusterSettings() throws {
        let c = try IngestConfiguration.load(
            environment: ["REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": "10.0.0.1:7000, redis-1.example:7001,[::1]:7002,"],
            flags: [:]
        )
        #expect(c.redisMode == .cluster)
        #expect(ClusterConnector.seeds(of: c).map(\.description) == ["10.0.0.1:7000", "redis-1.example:7001", "[::1]:7002"])
        let fromURL = try IngestConfiguration.load(
            environment: ["REDIS_MODE": "cluster", "REDIS_URL": "redis://:pw@10.0.0.9:7100"],
            flags: [:]
        )
        #expect(ClusterConnector.seeds(of: fromURL) == [ClusterNode(host: "10.0.0.9", port: 7100)])
        let connector = try #require(IngestService.connector(for: fromURL) as? ClusterConnector)
        #expect(connector.description == "cluster:10.0.0.9:7100" && connector.template.password == "pw")
        #expect(IngestService.connector(for: IngestConfiguration()) is HiredisConnector, "single is the default")
        let sentinel = try IngestConfiguration.load(environment: ["REDIS_SENTINELS": "10.0.0.1:26379"], flags: [:])
        #expect(IngestService.connector(for: sentinel) is SentinelConnector, "Sentinel stays implied by REDIS_SENTINELS")
        let refused: [([String: String], String)] = [
            (["REDIS_MODE": "sentinel"], "REDIS_MODE"),
            (["REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": "10.0.0.1"], "REDIS_CLUSTER_NODES"),
            (["REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": "10.0.0.1:0"], "REDIS_CLUSTER_NODES"),
            (["REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": "redis://10.0.0.1:7000"], "REDIS_CLUSTER_NODES"),
            (["REDIS_CLUSTER_NODES": "10.0.0.1:7000"], "REDIS_CLUSTER_NODES"),
            (["REDIS_MODE": "cluster", "REDIS_SENTINELS": "10.0.0.1:26379"], "REDIS_SENTINELS"),
            (["REDIS_MODE": "cluster", "REDIS_URL": "redis://10.0.0.1:7000/3"], "REDIS_URL"),
            (["REDIS_MODE": "cluster", "REDIS_URL": "unix:///tmp/redis.sock"], "REDIS_CLUSTER_NODES"),
        ]
        for (environment, key) in refused {
            do {
                _ = try IngestConfiguration.load(environment: environment, flags: [:])
                Issue.record("accepted \(environment)")
            } catch {
                #expect(error.key == key, "\(environment): \(error)")
            }
        }
    }
}
