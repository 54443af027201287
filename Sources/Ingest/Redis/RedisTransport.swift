/// The publisher's seam to Redis: a connection that pipelines jobs, and the hiredis implementation of it.
import RedisWire

/// What Redis answered to one pipelined batch.
struct BatchResult: Equatable {
    /// One entry per job answered in full, in order: nil when every reply was a stream id, else the
    /// job's first error reply (`OOM ...`, `WRONGTYPE ...`).
    var answers: [String?]
    /// Set when the connection broke before every job was answered: the jobs after `answers.count`
    /// are in doubt (not confirmed), and the connection is unusable.
    var failure: RedisConnection.Failure?
}

/// One connection to Redis, owned by the publisher thread. The next issues add implementations here
/// (TLS, a Sentinel-discovered primary, cluster routing) without touching the publisher's decisions.
protocol RedisTransport: AnyObject {
    /// Pipelines every job's commands, then reads the replies in order.
    func send(_ jobs: [PublishJob]) -> BatchResult
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
        HiredisTransport(try RedisConnection(url: url, timeoutMs: timeoutMs, clientName: "teltonika-ingest"))
    }
}

final class HiredisTransport: RedisTransport {
    private let connection: RedisConnection

    init(_ connection: RedisConnection) {
        self.connection = connection
    }

    func send(_ jobs: [PublishJob]) -> BatchResult {
        var answers: [String?] = []
        answers.reserveCapacity(jobs.count)
        do throws(RedisConnection.Failure) {
            for job in jobs { try connection.append(job.commands) }
            for job in jobs {
                var firstError: String? = nil
                for _ in 0..<job.commandCount {
                    if case .error(let message) = try connection.reply(), firstError == nil { firstError = message }
                }
                answers.append(firstError)
            }
            return BatchResult(answers: answers, failure: nil)
        } catch {
            return BatchResult(answers: answers, failure: error)
        }
    }

    func command(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply {
        try connection.command(arguments)
    }
}
