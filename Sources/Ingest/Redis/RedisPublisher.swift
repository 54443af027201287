import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// What became of a publish job. Only `.stored` allows an ACK.
public enum PublishOutcome: Sendable, Equatable {
    /// Redis answered every command of the job with a stream id.
    case stored
    /// Redis did not confirm every command before the job's deadline (down, failing, or timed out):
    /// the outcome is unknown, so nothing may be ACKed. The device sends the records again.
    case expired(String)
    /// The job was cancelled (its connection closed) or the publisher stopped before sending it.
    case dropped
}

/// One packet's worth of Redis commands, and who to tell when Redis has answered.
public final class PublishJob: Sendable {
    /// RESP-formatted commands (one `XADD` per record).
    let commands: [UInt8]
    /// Number of commands in `commands`, so replies to wait for.
    let commandCount: Int
    /// Records the job holds: what it costs in queue capacity.
    public let recordCount: Int
    /// After this instant an unconfirmed job completes `.expired`.
    let deadline: NIODeadline
    /// When the job was made (for the publish-duration histogram).
    let enqueued = NIODeadline.now()
    private let completion: @Sendable (PublishOutcome) -> Void
    private let state = NIOLockedValueBox<(cancelled: Bool, completed: Bool)>((false, false))

    init(
        commands: [UInt8],
        commandCount: Int,
        recordCount: Int,
        deadline: NIODeadline,
        completion: @escaping @Sendable (PublishOutcome) -> Void
    ) {
        self.commands = commands
        self.commandCount = commandCount
        self.recordCount = recordCount
        self.deadline = deadline
        self.completion = completion
    }

    /// The connection closed: skip the job if it has not been sent yet.
    public func cancel() {
        state.withLockedValue { $0.cancelled = true }
    }

    var isCancelled: Bool { state.withLockedValue { $0.cancelled } }

    /// Calls the completion once; later calls do nothing.
    func complete(_ outcome: PublishOutcome) {
        let first = state.withLockedValue { s -> Bool in
            defer { s.completed = true }
            return !s.completed
        }
        if first { completion(outcome) }
    }
}

/// The publisher's settings.
public struct PublisherConfiguration: Sendable {
    public var redis: RedisURL
    /// Records the queue may hold (queued and in flight); a full queue refuses new jobs.
    public var queueCapacity: Int
    /// Timeout of connect and of each reply.
    public var redisTimeoutMs: Int
    /// Most records sent in one pipelined batch.
    public var maxBatchRecords: Int
    /// Reconnect backoff: first delay and cap, doubled per failed attempt, with jitter.
    public var reconnectBaseMs: Int
    public var reconnectMaxMs: Int
    /// With nothing to send for this long, the connection is checked with `PING` (or, when down,
    /// re-established), so `teltonika_redis_up` and `/readyz` follow Redis without traffic.
    public var healthCheckMs: Int
    /// How often Redis' persistence settings are read again (they are also read on every connect).
    public var durabilityCheckMs: Int

    public init(
        redis: RedisURL,
        queueCapacity: Int,
        redisTimeoutMs: Int,
        maxBatchRecords: Int = 4096,
        reconnectBaseMs: Int = 100,
        reconnectMaxMs: Int = 5000,
        healthCheckMs: Int = 1000,
        durabilityCheckMs: Int = 60_000
    ) {
        self.redis = redis
        self.queueCapacity = queueCapacity
        self.redisTimeoutMs = redisTimeoutMs
        self.maxBatchRecords = maxBatchRecords
        self.reconnectBaseMs = reconnectBaseMs
        self.reconnectMaxMs = reconnectMaxMs
        self.healthCheckMs = healthCheckMs
        self.durabilityCheckMs = durabilityCheckMs
    }
}

/// Drains a bounded queue of publish jobs into Redis on one dedicated thread that owns the hiredis
/// connection: whole batches are pipelined, and a job completes `.stored` only when every one of its
/// commands was answered with a stream id. Jobs that fail (connection lost, error reply, timeout) are
/// retried in order, on a new connection with capped exponential backoff, until their deadline.
public final class RedisPublisher: @unchecked Sendable {
    private let configuration: PublisherConfiguration
    private let logger: Logger
    private let condition = NSCondition()
    // Guarded by `condition`:
    /// Jobs not yet taken start at `queueHead`; a taken slot is set to nil at once, so a sent job's
    /// commands are not kept alive by the queue (they were, until 1,024 had piled up: up to 1,024
    /// packets' worth of encoded records held for nothing).
    private var queue: [PublishJob?] = []
    private var queueHead = 0
    private var heldRecords = 0
    private var stopping = false
    private var stopDeadline: NIODeadline = .distantFuture
    private var finished = false
    private var abandonedRecords = 0
    /// Touched only by the drain thread.
    private var everConnected = false
    /// Failed connects in a row (and connections lost mid-batch), and when the next attempt may be made.
    private var connectFailures = 0
    private var nextConnectAttempt = NIODeadline.now()
    private var nextDurabilityCheck = NIODeadline.distantFuture
    private var loggedDurability: String? = nil
    private let connected = NIOLockedValueBox(false)

    public init(configuration: PublisherConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        IngestMetrics.shared.publishQueueCapacity.set(Int64(configuration.queueCapacity))
        IngestMetrics.shared.redisUp.set(Int64(0))
    }

    /// Starts the drain thread.
    public func start() {
        let thread = Thread { [self] in run() }
        thread.name = "redis-publisher"
        thread.start()
    }

    /// Whether the last attempt to reach Redis succeeded.
    public var isConnected: Bool { connected.withLockedValue { $0 } }

    /// Records queued or in flight.
    public var queuedRecords: Int {
        condition.lock()
        defer { condition.unlock() }
        return heldRecords
    }

    /// Queues a job; false (and the job untouched) when the queue has no room or the publisher is stopping.
    public func submit(_ job: PublishJob) -> Bool {
        condition.lock()
        guard !stopping, heldRecords + job.recordCount <= configuration.queueCapacity else {
            condition.unlock()
            return false
        }
        queue.append(job)
        heldRecords += job.recordCount
        IngestMetrics.shared.publishQueueDepth.set(Int64(heldRecords))
        condition.signal()
        condition.unlock()
        return true
    }

    /// What a stop left behind.
    public struct StopReport: Sendable, Equatable {
        /// Records never confirmed by Redis (so never ACKed): their devices send them again.
        public var abandonedRecords: Int
        /// False when the drain thread was still inside a Redis call at the deadline (Redis hung).
        public var threadFinished: Bool
    }

    /// Stops taking jobs and sends what is queued until `deadline`; jobs still unconfirmed then
    /// complete `.expired`. Returns when the thread has ended, or at `deadline` if it is stuck in a
    /// Redis call (a hung Redis); the report says which, and how many records were abandoned.
    public func stop(deadline: NIODeadline) -> StopReport {
        condition.lock()
        defer { condition.unlock() }
        stopping = true
        stopDeadline = deadline
        condition.broadcast()
        while !finished {
            let seconds = max(0, Double((deadline - .now()).nanoseconds) / 1e9)
            if !condition.wait(until: Date(timeIntervalSinceNow: seconds)) && NIODeadline.now() >= deadline { break }
        }
        return StopReport(abandonedRecords: finished ? abandonedRecords : heldRecords, threadFinished: finished)
    }

    // MARK: - The drain thread

    private func run() {
        var connection: RedisConnection? = nil
        var retry: [PublishJob] = []
        var refusals = 0  // batches in a row with error replies
        while true {
            let idleWaitMs =
                connection == nil
                ? max(1, Int((nextConnectAttempt - .now()).nanoseconds / 1_000_000)) : configuration.healthCheckMs
            guard let next = nextBatch(retry: &retry, idleWaitMs: idleWaitMs) else { break }
            if let conn = connection, NIODeadline.now() >= nextDurabilityCheck {
                do throws(RedisConnection.Failure) {
                    try checkDurability(conn)
                } catch {
                    connection = nil
                    connectionLost(error)
                }
            }
            guard case .jobs(let batch) = next else {
                checkHealth(&connection)
                continue
            }
            let now = NIODeadline.now()
            var live: [PublishJob] = []
            for job in batch {
                if job.isCancelled {
                    finish(job, .dropped)
                } else if job.deadline <= now {
                    finish(job, .expired("Redis did not confirm in time"))
                } else {
                    live.append(job)
                }
            }
            guard !live.isEmpty else { continue }
            if connection == nil {
                // Not before the backoff schedule says so, however much work arrives meanwhile: the
                // jobs wait (until the next attempt, or until the first of them expires).
                if NIODeadline.now() < nextConnectAttempt {
                    retry = live
                    sleep(until: min(nextConnectAttempt, live.map(\.deadline).min()!))
                    continue
                }
                connection = connect()
                if connection == nil {
                    retry = live
                    continue
                }
            }
            retry = send(live, on: &connection)
            if connection == nil {
                // The connection broke mid-batch: back off before the retry reconnects.
                connectFailures += 1
                nextConnectAttempt = .now() + .milliseconds(Int64(backoff(failures: connectFailures)))
            } else if !retry.isEmpty {
                // Error replies (OOM, READONLY, WRONGTYPE): Redis is up but refusing; do not hammer it. The
                // wait ends early when other jobs are queued or arrive, so a job Redis keeps refusing (a
                // stream key of the wrong type) does not hold back the traffic behind it.
                refusals += 1
                pause(milliseconds: backoff(failures: refusals), unlessQueued: true)
            } else {
                refusals = 0
            }
        }
        connection = nil
        setConnected(false)
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    /// A new connection, or nil when Redis cannot be reached: counted, logged once, and the next attempt
    /// scheduled by the backoff (the `retry_in_ms` logged is the delay actually kept).
    private func connect() -> RedisConnection? {
        do throws(RedisConnection.Failure) {
            let connection = try RedisConnection(
                url: configuration.redis,
                timeoutMs: configuration.redisTimeoutMs,
                clientName: "teltonika-ingest"
            )
            try checkDurability(connection)
            if everConnected { IngestMetrics.shared.redisReconnects.increment() }
            everConnected = true
            connectFailures = 0
            setConnected(true)
            logger.info("redis connected", metadata: ["event": "redis.connected", "redis": "\(configuration.redis)"])
            return connection
        } catch {
            setConnected(false)
            IngestMetrics.shared.redisErrors(kind: error.kind).increment()
            connectFailures += 1
            let delay = backoff(failures: connectFailures)
            nextConnectAttempt = .now() + .milliseconds(Int64(delay))
            logger.error(
                "redis unreachable",
                metadata: [
                    "event": "redis.connect_failed", "error": "\(error)", "retry_in_ms": "\(delay)",
                    "attempt": "\(connectFailures)", "redis": "\(configuration.redis)",
                ]
            )
            return nil
        }
    }

    /// Nothing to send: PING the connection, or try to re-establish it when the backoff allows.
    private func checkHealth(_ connection: inout RedisConnection?) {
        guard let conn = connection else {
            if NIODeadline.now() >= nextConnectAttempt { connection = connect() }
            return
        }
        do throws(RedisConnection.Failure) {
            if case .error(let message) = try conn.command(["PING"]) {
                throw RedisConnection.Failure(kind: "reply", message: message)
            }
        } catch {
            connection = nil
            connectionLost(error)
        }
    }

    /// A health or settings check failed with nothing in flight: counted and logged; the next round reconnects.
    private func connectionLost(_ error: RedisConnection.Failure) {
        setConnected(false)
        IngestMetrics.shared.redisErrors(kind: error.kind).increment()
        logger.error(
            "redis health check failed",
            metadata: ["event": "redis.connection_lost", "error": "\(error)", "unconfirmed_jobs": "0"]
        )
    }

    /// Reads Redis' persistence and eviction settings (`CONFIG GET`), sets `teltonika_redis_durability`,
    /// and logs `redis.durability` when they change: a warning when ACKed records would not survive a
    /// Redis restart (no AOF) or could be evicted (`allkeys-*`). A refused `CONFIG GET` is mode `unknown`.
    private func checkDurability(_ connection: RedisConnection) throws(RedisConnection.Failure) {
        func setting(_ name: String) throws(RedisConnection.Failure) -> String? {
            guard case .array(let pair) = try connection.command(["CONFIG", "GET", name]), pair.count == 2,
                case .string(let value) = pair[1]
            else { return nil }
            return value
        }
        let mode = RedisDurability(appendonly: try setting("appendonly"), appendfsync: try setting("appendfsync"))
        let policy = try setting("maxmemory-policy")
        nextDurabilityCheck = .now() + .milliseconds(Int64(configuration.durabilityCheckMs))
        IngestMetrics.shared.setRedisDurability(mode)
        let seen = "\(mode.rawValue) \(policy ?? "unknown")"
        guard seen != loggedDurability else { return }
        loggedDurability = seen
        let evicts = RedisDurability.policyEvictsStreams(policy)
        let metadata: Logger.Metadata = [
            "event": "redis.durability", "mode": "\(mode.rawValue)", "maxmemory_policy": "\(policy ?? "unknown")",
            "evicts_streams": "\(evicts)", "meaning": "\(mode.meaning)",
        ]
        if mode == .none || evicts {
            logger.warning("redis may lose ACKed records", metadata: metadata)
        } else {
            logger.info("redis persistence", metadata: metadata)
        }
    }

    /// Sends one batch pipelined; returns the jobs to retry (refused by an error reply, or not fully
    /// answered). Sets `connection` nil when it broke.
    private func send(_ jobs: [PublishJob], on connection: inout RedisConnection?) -> [PublishJob] {
        guard let conn = connection else { return jobs }
        var answered = 0
        var refused: [PublishJob] = []
        var firstRefusal: String? = nil
        defer {
            // One line per batch, however many of its jobs Redis refused (it may refuse thousands a second).
            if let firstRefusal {
                logger.error(
                    "redis refused writes",
                    metadata: ["event": "redis.error_reply", "error": "\(firstRefusal)", "jobs": "\(refused.count)"]
                )
            }
        }
        do throws(RedisConnection.Failure) {
            for job in jobs { try conn.append(job.commands) }
            for job in jobs {
                var firstError: String? = nil
                for _ in 0..<job.commandCount {
                    if case .error(let message) = try conn.reply(), firstError == nil { firstError = message }
                }
                answered += 1
                if let firstError {
                    IngestMetrics.shared.redisErrors(kind: "reply").increment()
                    if firstRefusal == nil { firstRefusal = firstError }
                    refused.append(job)
                } else {
                    IngestMetrics.shared.recordsPublished.increment(by: Int64(job.recordCount))
                    IngestMetrics.shared.publishDuration.recordNanoseconds((NIODeadline.now() - job.enqueued).nanoseconds)
                    finish(job, .stored)
                }
            }
            IngestMetrics.shared.publishBatchSize.record(Int64(jobs.reduce(0) { $0 + $1.recordCount }))
            return refused
        } catch {
            // Outcome unknown for every job not fully answered: not confirmed, so retried (a duplicate, never a loss).
            connection = nil
            setConnected(false)
            IngestMetrics.shared.redisErrors(kind: error.kind).increment()
            logger.error(
                "redis connection lost",
                metadata: ["event": "redis.connection_lost", "error": "\(error)", "unconfirmed_jobs": "\(jobs.count - answered)"]
            )
            return refused + jobs[answered...]
        }
    }

    private enum Next {
        case jobs([PublishJob])
        /// Nothing arrived for `idleWaitMs`.
        case idle
    }

    /// The next jobs to send: retries first, then queued jobs, up to the batch limit; `.idle` after
    /// `idleWaitMs` without work. Nil when stopped and empty.
    private func nextBatch(retry: inout [PublishJob], idleWaitMs: Int) -> Next? {
        condition.lock()
        defer { condition.unlock() }
        let idleAt = Date(timeIntervalSinceNow: Double(idleWaitMs) / 1000)
        while retry.isEmpty && queueHead == queue.count && !stopping {
            if !condition.wait(until: idleAt) && retry.isEmpty && queueHead == queue.count && !stopping { return .idle }
        }
        if stopping && NIODeadline.now() >= stopDeadline {
            // Past the drain deadline: everything left is abandoned, unacknowledged.
            let rest = retry + queue[queueHead...].compactMap { $0 }
            retry = []
            queue.removeAll()
            queueHead = 0
            for job in rest {
                abandonedRecords += job.recordCount
                condition.unlock()
                finish(job, .expired("shutdown deadline passed"))
                condition.lock()
            }
            return nil
        }
        if stopping && retry.isEmpty && queueHead == queue.count { return nil }
        var batch = retry
        retry = []
        var records = batch.reduce(0) { $0 + $1.recordCount }
        while queueHead < queue.count && (batch.isEmpty || records + queue[queueHead]!.recordCount <= configuration.maxBatchRecords) {
            records += queue[queueHead]!.recordCount
            batch.append(queue[queueHead]!)
            queue[queueHead] = nil
            queueHead += 1
        }
        if queueHead > 1024 && queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        return .jobs(batch)
    }

    private func finish(_ job: PublishJob, _ outcome: PublishOutcome) {
        condition.lock()
        heldRecords -= job.recordCount
        IngestMetrics.shared.publishQueueDepth.set(Int64(heldRecords))
        condition.unlock()
        job.complete(outcome)
    }

    private func setConnected(_ value: Bool) {
        connected.withLockedValue { $0 = value }
        IngestMetrics.shared.redisUp.set(Int64(value ? 1 : 0))
    }

    /// The wait after `failures` failures in a row (≥ 1): the base doubled per failure up to the cap,
    /// times a jitter in 0.5...1 (100 ms, 200, 400, ... 5 s by default, each at least half that).
    private func backoff(failures: Int) -> Int {
        let exponential = configuration.reconnectBaseMs << min(max(failures - 1, 0), 16)
        let capped = min(configuration.reconnectMaxMs, exponential)
        return Int(Double(capped) * Double.random(in: 0.5...1.0))
    }

    /// Sleeps until `deadline` (or the stop deadline, when stopping); new jobs do not wake it early.
    private func sleep(until deadline: NIODeadline) {
        condition.lock()
        defer { condition.unlock() }
        while true {
            let until = stopping ? min(deadline, stopDeadline) : deadline
            let left = until - .now()
            guard left > .zero else { return }
            _ = condition.wait(until: Date(timeIntervalSinceNow: Double(left.nanoseconds) / 1e9))
        }
    }

    /// Sleeps for the backoff delay; when stopping, no longer than until the stop deadline (a stop
    /// request, and a new job, also wake it). With `unlessQueued`, not at all while jobs are queued.
    private func pause(milliseconds: Int, unlessQueued: Bool = false) {
        condition.lock()
        if unlessQueued && queueHead < queue.count {
            condition.unlock()
            return
        }
        var seconds = Double(milliseconds) / 1000
        if stopping { seconds = min(seconds, max(0, Double((stopDeadline - .now()).nanoseconds) / 1e9)) }
        _ = condition.wait(until: Date(timeIntervalSinceNow: seconds))
        condition.unlock()
    }
}
