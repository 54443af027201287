/// The publisher's seam to Redis: a connection that pipelines jobs, and the hiredis implementation of it.
import Logging
import RedisWire

/// `WAIT` after a batch: how many replicas must have the batch's writes, and how long Redis may wait
/// for them (`REDIS_MIN_REPLICAS`, `REDIS_REPLICA_TIMEOUT_MS`); with `localFsync`, `WAITAOF` (Redis
/// 7.2+), which also waits for the primary's own AOF fsync (`REDIS_MIN_LOCAL_FSYNC`).
struct ReplicaWait: Equatable, Sendable {
    var replicas: Int
    var timeoutMs: Int
    var localFsync = false

    /// `WAIT <replicas> <timeout>`, or `WAITAOF 1 <replicas> <timeout>`, RESP-formatted.
    var command: [UInt8] {
        let arguments = localFsync ? ["WAITAOF", "1", String(replicas), String(timeoutMs)] : ["WAIT", String(replicas), String(timeoutMs)]
        var writer = RESPWriter()
        writer.beginCommand(arguments: arguments.count)
        for argument in arguments { writer.bulk(string: argument) }
        return writer.bytes
    }

    /// The replicas a reply confirms: `WAIT`'s count; for `WAITAOF` (`[local, replicas]`) the replicas
    /// that fsynced, or -1 when the primary itself had not (short, whatever `replicas` asks). Nil for
    /// an error or another reply.
    func confirmedReplicas(_ reply: RedisConnection.Reply) -> Int? {
        switch reply {
        case .integer(let n) where !localFsync: Int(n)
        case .array(let counts) where localFsync && counts.count == 2:
            if case .integer(let local) = counts[0], case .integer(let fsynced) = counts[1] { local >= 1 ? Int(fsynced) : -1 } else { nil }
        default: nil
        }
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
    /// Set by a transport that spreads a batch over several connections, each with its own `WAIT` (Redis
    /// Cluster: one per primary); nil for one connection, where `replicas` speaks for every job.
    var spread: SpreadWaits? = nil
}

/// One connection to Redis, owned by the publisher thread: one node (``HiredisTransport``), or a
/// connection per primary of a Redis Cluster (``ClusterTransport``).
protocol RedisTransport: AnyObject {
    /// Where it is connected (`host:port`), for logs and to tell a change of primary.
    var endpoint: String { get }
    /// Pipelines every job's commands, then, with `replicaWait`, a `WAIT` for the replicas (which
    /// covers every earlier write on the connection), and reads the replies in order. While it reads, it may
    /// call `answered` with the answers so far (one per job answered in full, in order, as in
    /// ``BatchResult/answers``), so the caller can act on the first jobs before the last are answered; a
    /// transport that reads a batch's replies at once need not call it.
    func send(_ jobs: [PublishJob], replicaWait: ReplicaWait?, answered: ([String?]) -> Void) -> BatchResult
    /// One command and its reply (`PING`, `CONFIG GET`).
    func command(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply
}

extension RedisTransport {
    /// ``send(_:replicaWait:answered:)`` with nothing to do until the whole batch is answered.
    func send(_ jobs: [PublishJob], replicaWait: ReplicaWait?) -> BatchResult {
        send(jobs, replicaWait: replicaWait, answered: { _ in })
    }
}

/// Opens transports; called on the publisher thread, which it may block up to the connect timeout.
protocol RedisConnector: Sendable {
    /// Where it connects, for logs (no password).
    var description: String { get }
    func connect() throws(RedisConnection.Failure) -> any RedisTransport
    /// Starts telling `moved` (with what moved, for the log) when the primary it connects to changes
    /// without the connection noticing: Sentinel's `+switch-master`; `watching` learns whether the watch is
    /// on (subscribed) or off. Nothing for a fixed Redis or a cluster.
    func watchPrimary(
        logger: Logger,
        watching: @escaping @Sendable (Bool) -> Void,
        _ moved: @escaping @Sendable (String) -> Void
    )
}

extension RedisConnector {
    func watchPrimary(
        logger: Logger,
        watching: @escaping @Sendable (Bool) -> Void,
        _ moved: @escaping @Sendable (String) -> Void
    ) {}
}

/// `REDIS_URL`: hiredis over TCP or a unix socket, or TLS (`rediss://`, with `tls`), the connection
/// named `teltonika-ingest`.
struct HiredisConnector: RedisConnector {
    let url: RedisURL
    let timeoutMs: Int
    var tls: RedisTLSContext? = nil

    var description: String { "\(url)" }

    func connect() throws(RedisConnection.Failure) -> any RedisTransport {
        HiredisTransport(
            try RedisConnection(url: url, timeoutMs: timeoutMs, clientName: "teltonika-ingest", tls: tls),
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

    func send(_ jobs: [PublishJob], replicaWait: ReplicaWait?, answered: ([String?]) -> Void) -> BatchResult {
        var answers: [String?] = []
        answers.reserveCapacity(jobs.count)
        do throws(RedisConnection.Failure) {
            let wait = replicaWait.map(waitCommand)
            let bytes = jobs.reduce(wait?.count ?? 0) { $0 + $1.commands.count }
            // The jobs' commands go to the socket from where the event loops wrote them: no copy into
            // hiredis' output buffer (``RedisConnection/write(_:)``).
            try withExtendedLifetime((jobs, wait)) { () throws(RedisConnection.Failure) in
                try connection.write(jobs.lazy.map { $0.commands.bytes }, then: wait?.bytes)
            }
            // A batch Redis reads in several pieces (16 KiB each) is answered piece by piece: one wake-up per
            // ``RedisConnection/maxLowWaterMark`` of its replies rather than one per piece
            // (``RedisConnection/awaitReplies(bytes:timeoutMs:)``, which returns at once while hiredis holds
            // replies it has read). Each `XADD ... *` reply is a stream id, `$15\r\n<13-digit ms>-<seq>\r\n`,
            // 22 bytes or more; the time allowed grows with the replies awaited. The last few replies, and a
            // smaller batch's, are read as they come. Before each of those waits (which return at once for replies
            // hiredis holds already), `answered` learns what is answered so far.
            var remaining = bytes > Self.redisReadPiece ? jobs.reduce(0) { $0 + $1.commandCount } : 0
            for job in jobs {
                var firstError: String? = nil
                for _ in 0..<job.commandCount {
                    if remaining >= Self.repliesWorthAWait {
                        let awaited = min(remaining, RedisConnection.maxLowWaterMark / Self.replyBytes)
                        if !answers.isEmpty { answered(answers) }
                        try connection.awaitReplies(bytes: awaited * Self.replyBytes, timeoutMs: 2 + awaited / 100)
                    }
                    remaining = max(0, remaining - 1)
                    if let message = try connection.replyError(), firstError == nil { firstError = message }
                }
                answers.append(firstError)
            }
            var replicas: Int? = nil
            if let replicaWait { replicas = replicaWait.confirmedReplicas(try connection.reply()) }
            return BatchResult(answers: answers, replicas: replicas, failure: nil)
        } catch {
            return BatchResult(answers: answers, failure: error)
        }
    }

    func command(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply {
        try connection.command(arguments)
    }

    /// The last `WAIT` formatted, and what it asked: the same for every batch until the settings change.
    private var lastWait: (ReplicaWait, RESPBuffer)? = nil

    private func waitCommand(_ wait: ReplicaWait) -> RESPBuffer {
        if let (asked, buffer) = lastWait, asked == wait { return buffer }
        let buffer = RESPBuffer(copying: wait.command, commands: 1)
        lastWait = (wait, buffer)
        return buffer
    }

    /// The fewest bytes an `XADD ... *` reply takes (its id has a 13-digit millisecond time until 2286).
    static var replyBytes: Int { 22 }

    /// Fewer replies than this left in a batch are read as they come, without a low-water mark.
    static var repliesWorthAWait: Int { 32 }

    /// How much of a pipeline Redis reads at a time (`PROTO_IOBUF_LEN`), answering each piece before the next.
    static var redisReadPiece: Int { 16 * 1024 }
}
