/// `REDIS_MODE=cluster`: the connector the publisher and the side connections open Redis Cluster with,
/// and the cluster's metrics.
import Logging
import Prometheus
import RedisWire

/// Opens a ``ClusterTransport``: the slot map from the first seed that gives one (`REDIS_CLUSTER_NODES`,
/// else `REDIS_URL`'s host and port), a connection per primary with `REDIS_URL`'s user, password and
/// TLS, each named `teltonika-ingest` (the side connections rename theirs).
struct ClusterConnector: RedisConnector {
    let seeds: [ClusterNode]
    /// Credentials and TLS of every node (its host and port are the cluster's).
    let template: RedisURL
    let timeoutMs: Int
    var tls: RedisTLSContext? = nil
    let logger: Logger
    let metrics: ClusterMetrics

    var description: String { "cluster:\(seeds.map(\.description).joined(separator: ","))" }

    func connect() throws(RedisConnection.Failure) -> any RedisTransport {
        let (template, timeoutMs, tls) = (template, timeoutMs, tls)
        return try ClusterTransport(
            settings: .init(seeds: seeds, timeoutMs: timeoutMs),
            dial: { (node: ClusterNode, name: String) throws(RedisConnection.Failure) -> any ClusterNodeLink in
                var url = template
                url.endpoint = .tcp(host: node.host, port: node.port)
                return try RedisConnection(url: url, timeoutMs: timeoutMs, clientName: name, tls: tls)
            },
            logger: logger,
            metrics: metrics
        )
    }

    /// The seeds of a configuration: `REDIS_CLUSTER_NODES`, else `REDIS_URL`'s host and port.
    static func seeds(of configuration: IngestConfiguration) -> [ClusterNode] {
        let endpoints = configuration.redisClusterNodes.isEmpty ? [configuration.redisURL.endpoint] : configuration.redisClusterNodes
        return endpoints.compactMap { endpoint in
            guard case .tcp(let host, let port) = endpoint else { return nil }
            return ClusterNode(host: host, port: port)
        }
    }
}

/// `kind` label of `teltonika_redis_cluster_redirects_total`.
enum ClusterRedirectKind: String, CaseIterable, Sendable { case moved, ask }

/// The cluster's metrics (every connection of the process that routes over the cluster counts here:
/// the publisher's and the side connections').
final class ClusterMetrics: Sendable {
    private let redirectsByKind: [ClusterRedirectKind: Counter]
    private let refreshesByResult: [ReloadResult: Counter]
    let nodeFailures: Counter

    init(registry r: PrometheusCollectorRegistry) {
        func d(_ name: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        }
        /// One counter per value of `label`, each existing (at 0) from the start.
        func counters<Value: RawRepresentable<String> & CaseIterable & Hashable>(
            _ name: String,
            _ label: String,
            _ help: String
        ) -> [Value: Counter] {
            Dictionary(
                uniqueKeysWithValues: Value.allCases.map { ($0, r.makeCounter(descriptor: d(name, help), labels: [(label, $0.rawValue)])) }
            )
        }
        redirectsByKind = counters(
            "teltonika_redis_cluster_redirects_total",
            "kind",
            "Redis Cluster redirects followed: moved (the slot has a new owner: map updated), ask (slot being migrated)."
        )
        refreshesByResult = counters(
            "teltonika_redis_cluster_slot_refreshes_total",
            "result",
            "Redis Cluster slot map reads (CLUSTER SLOTS): at connect, after MOVED, while a primary is down."
        )
        nodeFailures = r.makeCounter(
            descriptor: d(
                "teltonika_redis_cluster_node_failures_total",
                "Connections to a Redis Cluster primary that failed or could not be made (its slots' writes wait)."
            )
        )
    }

    func redirects(_ kind: ClusterRedirectKind) -> Counter { redirectsByKind[kind]! }
    func slotRefreshes(_ result: ReloadResult) -> Counter { refreshesByResult[result]! }
}
