/// The primary found through Redis Sentinel (`REDIS_SENTINELS`, `REDIS_MASTER_NAME`).
import RedisWire

/// Opens a connection to the primary that the Sentinels name, confirmed with `ROLE`. The publisher
/// calls it on every (re)connect, so a lost connection or a `READONLY` reply (a demoted primary) leads
/// to the primary of the moment; while no Sentinel names one that answers as primary, connects fail
/// (nothing is ACKed, `teltonika_redis_up` is 0, `/readyz` is 503).
struct SentinelConnector: RedisConnector {
    let sentinels: [RedisURL]
    let masterName: String
    /// The primary's credentials, database and TLS (`REDIS_URL`); its host and port are Sentinel's.
    let primary: RedisURL
    let timeoutMs: Int
    /// For `rediss://` (the primary's and the Sentinels' own: each URL says whether it uses TLS).
    var tls: RedisTLSContext? = nil

    var description: String {
        "sentinel:\(masterName)@\(sentinels.map(\.endpointDescription).joined(separator: ","))"
    }

    func connect() throws(RedisConnection.Failure) -> any RedisTransport {
        var url = primary
        url.endpoint = try discover()
        let connection = try RedisConnection(url: url, timeoutMs: timeoutMs, clientName: "teltonika-ingest", tls: tls)
        let role = try connection.command(["ROLE"])
        guard case .array(let fields) = role, fields.first == .string("master") else {
            throw RedisConnection.Failure(
                kind: .connect,
                message: "\(url.endpointDescription), named primary '\(masterName)' by Sentinel, is not one (ROLE: \(role))"
            )
        }
        return HiredisTransport(connection, endpoint: url.endpointDescription)
    }

    /// The primary's address from the first Sentinel that knows it (`SENTINEL get-master-addr-by-name`).
    func discover() throws(RedisConnection.Failure) -> RedisURL.Endpoint {
        var errors: [String] = []
        for sentinel in sentinels {
            do throws(RedisConnection.Failure) {
                let connection = try RedisConnection(url: sentinel, timeoutMs: timeoutMs, tls: tls)
                let reply = try connection.command(["SENTINEL", "get-master-addr-by-name", masterName])
                if case .array(let address) = reply, address.count == 2, case .string(let host) = address[0],
                    case .string(let port) = address[1], let number = Int(port)
                {
                    return .tcp(host: host, port: number)
                }
                errors.append("\(sentinel.endpointDescription): \(reply == .null ? "does not know it" : "\(reply)")")
            } catch {
                errors.append("\(sentinel.endpointDescription): \(error)")
            }
        }
        throw RedisConnection.Failure(
            kind: .connect,
            message: "no Sentinel named a primary '\(masterName)': \(errors.joined(separator: "; "))"
        )
    }
}
