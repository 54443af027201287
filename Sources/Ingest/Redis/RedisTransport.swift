/// The publisher's seam to Redis: a connection that pipelines jobs, and the hiredis implementation of it.
import RedisWire

/// `WAIT` after a batch: how many replicas must have the batch's writes, and how long Redis may wait
/// for them (`REDIS_MIN_REPLICAS`, `REDIS_REPLICA_TIMEOUT_MS`).
struct ReplicaWait: Equatable, Sendable {
    var replicas: Int
    var timeoutMs: Int

    /// The `WAIT` command, RESP-formatted.
    var command: [UInt8] {
        var writer = RESPWriter()
        writer.beginCommand(arguments: 3)
        writer.bulk(string: "WAIT")
        writer.bulk(string: String(replicas))
        writer.bulk(string: String(timeoutMs))
        return writer.bytes
    }
}

/// What Redis answered to one pipelined batch.
struct BatchResult: Equatable {
    /// One entry per job answered in full, in order: nil when every reply was a stream id, else the
    /// job's first error reply (`OOM ...`, `WRONGTYPE ...`).
    var answers: [String?]
    /// With a ``ReplicaWait``: the number of replicas `WAIT` reported (nil when it was not asked, not
    /// answered, or answered with an error).
    var replicas: Int? = nil
    /// Set when the connection broke before every job (and the `WAIT`) was answered: the jobs after
    /// `answers.count` are in doubt (not confirmed), and the connection is unusable.
    var failure: RedisConnection.Failure?
}

/// One connection to Redis, owned by the publisher thread. The next issues add implementations here
/// (TLS, a Sentinel-discovered primary, cluster routing) without touching the publisher's decisions.
protocol RedisTransport: AnyObject {
    /// Where it is connected (`host:port`), for logs and to tell a change of primary.
    var endpoint: String { get }
    /// Pipelines every job's commands, then, with `replicaWait`, a `WAIT` for the replicas (which
    /// covers every earlier write on the connection), and reads the replies in order.
    func send(_ jobs: [PublishJob], replicaWait: ReplicaWait?) -> BatchResult
    /// One command and its reply (`PING`, `CONFIG GET`).
    func command(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply
}

/// Opens transports; called on the publisher thread, which it may block up to the connect timeout.
protocol RedisConnector: Sendable {
    /// Where it connects, for logs (no password).
    var description: String { get }
    func connect() throws(RedisConnection.Failure) -> any RedisTransport
}

/// hiredis over TCP or a unix socket (`REDIS_URL`), with the connection named `teltonika-ingest`.
struct HiredisConnector: RedisConnector {
    let url: RedisURL
    let timeoutMs: Int

    var description: String { "\(url)" }

    func connect() throws(RedisConnection.Failure) -> any RedisTransport {
        HiredisTransport(
            try RedisConnection(url: url, timeoutMs: timeoutMs, clientName: "teltonika-ingest"),
            endpoint: url.endpointDescription
        )
    }
}

final class HiredisTransport: RedisTransport {
    private let connection: RedisConnection
    let endpoint: String

    init(_ connection: RedisConnection, endpoint: String) {
        self.connection = connection
        self.endpoint = endpoint
    }

    func send(_ jobs: [PublishJob], replicaWait: ReplicaWait?) -> BatchResult {
        var answers: [String?] = []
        answers.reserveCapacity(jobs.count)
        do throws(RedisConnection.Failure) {
            for job in jobs { try connection.append(job.commands) }
            if let replicaWait { try connection.append(replicaWait.command) }
            for job in jobs {
                var firstError: String? = nil
                for _ in 0..<job.commandCount {
                    if case .error(let message) = try connection.reply(), firstError == nil { firstError = message }
                }
                answers.append(firstError)
            }
            var replicas: Int? = nil
            if replicaWait != nil, case .integer(let n) = try connection.reply() { replicas = Int(n) }
            return BatchResult(answers: answers, replicas: replicas, failure: nil)
        } catch {
            return BatchResult(answers: answers, failure: error)
        }
    }

    func command(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply {
        try connection.command(arguments)
    }
}
