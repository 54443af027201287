/// The Redis that the `command` and `device` tools talk to.
import Foundation
import Lifecycle
import RedisWire

/// Where a tool's Redis is: `--redis-url`, else the server's own settings from the environment.
enum ToolRedis {
    /// `--redis-url` help text.
    static let help =
        "Redis (default: $REDIS_URL, else redis://127.0.0.1:6379; with REDIS_MODE=cluster the first of $REDIS_CLUSTER_NODES, "
        + "with REDIS_URL's credentials). Any node of a Redis Cluster will do: MOVED and ASK replies are followed."

    /// `option` when given; else `REDIS_URL` (default `redis://127.0.0.1:6379`), its node replaced by the first of
    /// `REDIS_CLUSTER_NODES` when `REDIS_MODE=cluster` (the server reads only the credentials and TLS of REDIS_URL there).
    static func url(option: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> RedisURL {
        if let option { return try RedisURL(parsing: option) }
        var url = try RedisURL(parsing: environment["REDIS_URL"] ?? "redis://127.0.0.1:6379")
        if environment["REDIS_MODE"] == "cluster", let seeds = environment["REDIS_CLUSTER_NODES"],
            let first = seeds.split(separator: ",").first.map({ $0.filter { !$0.isWhitespace } }),
            let node = ClusterNode(parsing: first)
        {
            url.endpoint = .tcp(host: node.host, port: node.port)
        }
        return url
    }

    /// A connection for the tool named `tool`, or its error message on standard error and exit status 1.
    static func connect(option: String?, tool: String) -> RedirectFollowingConnection {
        do {
            let url = try url(option: option)
            return try RedirectFollowingConnection(url: url, timeoutMs: 5_000, clientName: "teltonika-ingest-\(tool)")
        } catch {
            StandardIO.writeStderr("teltonika-ingest \(tool): cannot connect to Redis: \(error)\n")
            terminate(.failure)
        }
    }
}
