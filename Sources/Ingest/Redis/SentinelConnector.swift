/// The primary found through Redis Sentinel (`REDIS_SENTINELS`, `REDIS_MASTER_NAME`).
import Foundation
import Logging
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

    /// A thread subscribed to `+switch-master` on one Sentinel at a time (the next one when it cannot be
    /// reached or its connection ends), calling `moved` for each switch of `masterName`. A primary that
    /// stays up and writable after Sentinel promoted another (cut off from the Sentinels, or refusing to
    /// be demoted) breaks no connection and answers no `READONLY`: without this the publisher would keep
    /// writing to it, ACKing records the new primary never gets. The subscription is renewed after a
    /// minute without a message.
    func watchPrimary(
        logger: Logger,
        watching: @escaping @Sendable (Bool) -> Void,
        _ moved: @escaping @Sendable (String) -> Void
    ) {
        let thread = Thread { [self] in
            var next = 0
            var failedInARow = 0
            while true {
                let sentinel = sentinels[next % sentinels.count]
                next += 1
                do throws(RedisConnection.Failure) {
                    try listen(to: sentinel, watching: watching, moved)
                    failedInARow = 0
                } catch {
                    // The next Sentinel, after a pause once every one of them failed in a row.
                    watching(false)
                    failedInARow += 1
                    if failedInARow % sentinels.count == 0 {
                        logger.debug(
                            "no Sentinel to watch for a primary switch",
                            metadata: ["event": "redis.sentinel_watch_failed", "error": "\(error)"]
                        )
                        Thread.sleep(forTimeInterval: 1)
                    }
                }
            }
        }
        thread.name = "sentinel-watch"
        thread.start()
    }

    /// Subscribes on `sentinel` (then `watching(true)`) and reads messages; returns after a quiet minute, throws
    /// when the connection fails.
    private func listen(
        to sentinel: RedisURL,
        watching: @Sendable (Bool) -> Void,
        _ moved: @Sendable (String) -> Void
    ) throws(RedisConnection.Failure) {
        let connection = try RedisConnection(url: sentinel, timeoutMs: timeoutMs, tls: tls)
        guard case .array(let confirmed) = try connection.command(["SUBSCRIBE", "+switch-master"]), confirmed.first == .string("subscribe")
        else { throw RedisConnection.Failure(kind: .protocol, message: "SUBSCRIBE +switch-master not confirmed") }
        connection.setReadTimeout(milliseconds: 60_000)
        watching(true)
        while true {
            let reply: RedisConnection.Reply
            do throws(RedisConnection.Failure) {
                reply = try connection.reply()
            } catch {
                // A quiet minute: the caller subscribes again at once (still watching meanwhile).
                if error.kind == .timeout { return }
                throw error
            }
            // ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"]
            guard case .array(let message) = reply, message.count == 3, case .string(let text) = message[2] else { continue }
            let words = text.split(separator: " ")
            if words.count == 5, words[0] == masterName {
                moved("\(words[1]):\(words[2]) -> \(words[3]):\(words[4])")
            }
        }
    }
}
