/// The publisher thread: carries out ``PublisherStateMachine``'s decisions with a ``PublishQueue`` and a
/// ``RedisTransport``, and reports outcomes, metrics and logs.
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import RedisWire

/// A stream whose health the publisher reads with the persistence settings.
public struct WatchedStream: Sendable, Equatable {
    /// `telemetry` or `responses`: the `stream` label.
    public var role: String
    public var key: String
    /// Its `MAXLEN ~` cap (`teltonika_stream_maxlen`).
    public var maxLength: Int
    /// With `REDIS_STREAM_SHARDS` > 1, which shard of the stream this key is: the `shard` label.
    public var shard: Int?

    public init(role: String, key: String, maxLength: Int, shard: Int? = nil) {
        self.role = role
        self.key = key
        self.maxLength = maxLength
        self.shard = shard
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
    /// How often Redis' persistence settings and the streams' health are read again (also on every connect).
    public var durabilityCheckMs: Int
    /// The streams whose length and consumer-group lag are watched: role (the metric label), key, cap.
    public var watchedStreams: [WatchedStream] = []
    /// Replicas that must have a batch's writes (`WAIT`) before its jobs are stored (0: no `WAIT`).
    public var minReplicas: Int
    /// How long `WAIT` may block for them; below `redisTimeoutMs`, which bounds the reply.
    public var replicaTimeoutMs: Int
    /// `WAITAOF` instead of `WAIT`: the primary's AOF must have fsynced the writes too (Redis 7.2+;
    /// on older servers it falls back to `WAIT`, with a warning).
    public var minLocalFsync: Bool

    public init(
        redis: RedisURL,
        queueCapacity: Int,
        redisTimeoutMs: Int,
        maxBatchRecords: Int = 4096,
        reconnectBaseMs: Int = 100,
        reconnectMaxMs: Int = 5000,
        healthCheckMs: Int = 1000,
        durabilityCheckMs: Int = 60_000,
        minReplicas: Int = 0,
        replicaTimeoutMs: Int = 1000,
        minLocalFsync: Bool = false
    ) {
        self.redis = redis
        self.queueCapacity = queueCapacity
        self.redisTimeoutMs = redisTimeoutMs
        self.maxBatchRecords = maxBatchRecords
        self.reconnectBaseMs = reconnectBaseMs
        self.reconnectMaxMs = reconnectMaxMs
        self.healthCheckMs = healthCheckMs
        self.durabilityCheckMs = durabilityCheckMs
        self.minReplicas = minReplicas
        self.replicaTimeoutMs = replicaTimeoutMs
        self.minLocalFsync = minLocalFsync
    }

    var replicaWait: ReplicaWait? {
        guard minReplicas > 0 || minLocalFsync else { return nil }
        return ReplicaWait(replicas: minReplicas, timeoutMs: replicaTimeoutMs, localFsync: minLocalFsync)
    }
}

/// Drains the bounded ``PublishQueue`` into Redis on one dedicated thread that owns the connection:
/// whole batches are pipelined, and a job completes `.stored` only when every one of its commands was
/// answered with a stream id and, with `minReplicas`, a later `WAIT` on the same connection reported
/// that many replicas (until then the job is held, not sent again). Jobs that fail (connection lost, error reply, timeout) are retried in
/// order, on a new connection with capped exponential backoff, until their deadline.
///
/// Every decision (when to connect, send, wait, check, give up) is ``PublisherStateMachine``'s; this
/// class only performs them. ``stop(deadline:)`` is async: the thread resumes it when it ends.
public final class RedisPublisher: Sendable {
    private let configuration: PublisherConfiguration
    private let connector: any RedisConnector
    private let logger: Logger
    fileprivate let metrics: IngestMetrics
    private let queue: PublishQueue
    private let connected = NIOLockedValueBox(false)
    /// Whether the thread has ended, the records it abandoned, and the stops waiting for it.
    private let ending = NIOLockedValueBox((finished: false, abandoned: 0, waiters: [ResumeOnce<StopReport>]()))

    public convenience init(configuration: PublisherConfiguration, logger: Logger) {
        self.init(
            configuration: configuration,
            connector: HiredisConnector(url: configuration.redis, timeoutMs: configuration.redisTimeoutMs),
            logger: logger
        )
    }

    init(configuration: PublisherConfiguration, connector: any RedisConnector, logger: Logger, metrics: IngestMetrics = .shared) {
        self.configuration = configuration
        self.connector = connector
        self.logger = logger
        self.metrics = metrics
        queue = PublishQueue(capacity: configuration.queueCapacity, metrics: metrics)
        metrics.publishQueueCapacity.set(Int64(configuration.queueCapacity))
        metrics.redisUp.set(Int64(0))
        for stream in configuration.watchedStreams {
            metrics.streamMaxLength(stream).set(Int64(stream.maxLength))
            metrics.streamLength(stream).set(Int64(0))
        }
    }

    /// Starts the publisher thread (and, with Sentinel, the watch for a primary switch).
    public func start() {
        let thread = Thread { [self] in Driver(publisher: self).run() }
        thread.name = "redis-publisher"
        thread.start()
        connector.watchPrimary(
            logger: logger,
            watching: { [metrics] on in metrics.redisSentinelWatch.set(Int64(on ? 1 : 0)) },
            { [self] detail in primaryMoved(detail) }
        )
    }

    /// A primary switch the connection cannot notice (``RedisConnector/watchPrimary(logger:_:)``), for the
    /// publisher thread to act on between two batches.
    private let moved = NIOLockedValueBox<String?>(nil)

    func primaryMoved(_ detail: String) {
        moved.withLockedValue { $0 = detail }
        queue.wake()
    }

    /// Whether the last attempt to reach Redis succeeded.
    public var isConnected: Bool { connected.withLockedValue { $0 } }

    /// Records queued or in flight.
    public var queuedRecords: Int { queue.heldRecords }

    /// Queues a job; false (and the job untouched) when the queue has no room or the publisher is stopping.
    public func submit(_ job: PublishJob) -> Bool { queue.submit(job) }

    /// What a stop left behind.
    public struct StopReport: Sendable, Equatable {
        /// Records never confirmed by Redis (so never ACKed): their devices send them again.
        public var abandonedRecords: Int
        /// False when the publisher thread was still inside a Redis call at the deadline (Redis hung).
        public var threadFinished: Bool
    }

    /// Stops taking jobs and sends what is queued until `deadline`; jobs still unconfirmed then
    /// complete `.expired`. Returns when the thread has ended, or at `deadline` if it is stuck in a
    /// Redis call (a hung Redis); the report says which, and how many records were abandoned.
    public func stop(deadline: NIODeadline) async -> StopReport {
        queue.requestStop(deadline: deadline)
        return await withCheckedContinuation { (continuation: CheckedContinuation<StopReport, Never>) in
            let once = ResumeOnce(continuation)
            let abandoned = ending.withLockedValue { state -> Int? in
                if !state.finished { state.waiters.append(once) }
                return state.finished ? state.abandoned : nil
            }
            if let abandoned {
                once.resume(StopReport(abandonedRecords: abandoned, threadFinished: true))
                return
            }
            // The thread may be stuck in a Redis call past the deadline: answer shortly after it all the
            // same (the grace lets a thread that abandons its jobs at the deadline report first). A
            // Dispatch timer, so a busy task pool cannot delay it; what is unconfirmed is counted then.
            let seconds = Double(max(0, (deadline - .now()).nanoseconds)) / 1e9 + 0.1
            let queue = self.queue
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) {
                once.resume(StopReport(abandonedRecords: queue.heldRecords, threadFinished: false))
            }
        }
    }

    fileprivate func setConnected(_ value: Bool) {
        connected.withLockedValue { $0 = value }
        metrics.redisUp.set(Int64(value ? 1 : 0))
    }

    fileprivate func threadEnded(abandonedRecords: Int) {
        let waiters = ending.withLockedValue { state -> [ResumeOnce<StopReport>] in
            state.finished = true
            state.abandoned = abandonedRecords
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(StopReport(abandonedRecords: abandonedRecords, threadFinished: true)) }
    }

    /// The thread's state: confined to the publisher thread.
    private final class Driver {
        let publisher: RedisPublisher
        var machine: PublisherStateMachine
        var transport: (any RedisTransport)? = nil
        /// Jobs taken and not yet confirmed (refused, or unanswered when the connection broke): sent first.
        var retry: [PublishJob] = []
        /// Jobs written on this connection whose replicas have not confirmed yet (`WAIT` fell short): the
        /// next `WAIT` here confirms them; if the connection is lost they are sent again.
        var awaitingReplicas: [PublishJob] = []
        /// Redis Cluster: the connections each job in `awaitingReplicas` was written on (``SpreadWaits``).
        var heldOn: [ObjectIdentifier: [SpreadWaits.ConnectionID]] = [:]
        /// Whether the last `WAIT` fell short (for the log line at each change).
        var replicasShort = false
        /// The wait this connection's batches end with (`WAITAOF` only where the server has it).
        var replicaWait: ReplicaWait? = nil
        var loggedNoWaitaof = false
        /// Connections dropped in a row because the node answered `READONLY` (reset when a batch is stored).
        var readOnlyInARow = 0
        /// The endpoint last connected to, and since when there has been no connection.
        var lastEndpoint: String? = nil
        var downSince: NIODeadline? = nil
        var everConnected = false
        var loggedDurability: String? = nil
        var abandonedRecords = 0

        var queue: PublishQueue { publisher.queue }
        var logger: Logger { publisher.logger }
        var metrics: IngestMetrics { publisher.metrics }
        var configuration: PublisherConfiguration { publisher.configuration }

        init(publisher: RedisPublisher) {
            self.publisher = publisher
            let c = publisher.configuration
            machine = PublisherStateMachine(
                settings: .init(
                    reconnectBase: .milliseconds(Int64(c.reconnectBaseMs)),
                    reconnectMax: .milliseconds(Int64(c.reconnectMaxMs)),
                    healthCheck: .milliseconds(Int64(c.healthCheckMs)),
                    durabilityCheck: .milliseconds(Int64(c.durabilityCheckMs))
                ),
                now: .now()
            )
        }

        static func jitter() -> Double { Double.random(in: 0.5...1.0) }

        func run() {
            while true {
                if let detail = publisher.moved.withLockedValue({ $0.take() }) { primaryMoved(detail) }
                let now = NIODeadline.now()
                let front = queue.front(at: now)
                if let deadline = front.stopDeadline { machine.stop(deadline: deadline) }
                expireDead(front.dead, at: now)
                // The oldest job not yet confirmed: held for replicas, waiting for a retry, or queued.
                let oldest = [awaitingReplicas.first?.enqueued, retry.first?.enqueued, front.firstEnqueued].compactMap { $0 }.min()
                metrics.publishOldestAge.set(oldest.map { Double((now - $0).nanoseconds) / 1e9 } ?? 0)
                // Retried jobs are older than queued ones: the first of them has the earliest deadline.
                let work = PublisherStateMachine.Work(
                    retrying: !retry.isEmpty || !awaitingReplicas.isEmpty,
                    queued: front.queued,
                    earliestDeadline: [awaitingReplicas.first?.deadline, retry.first?.deadline, front.firstDeadline].compactMap { $0 }.min()
                )
                switch machine.next(now: now, work: work) {
                case .connect:
                    connect()
                case .send:
                    send()
                case .ping:
                    check { (transport) throws(RedisConnection.Failure) in
                        if case .error(let message) = try transport.command(["PING"]) {
                            throw RedisConnection.Failure(kind: .reply, message: message)
                        }
                        machine.pinged(at: .now())
                    }
                case .checkDurability:
                    check { (transport) throws(RedisConnection.Failure) in
                        try checkDurability(transport)
                        try checkStreams(transport)
                        machine.durabilityChecked(at: .now())
                    }
                case .wait(let until, let wakeOnWork):
                    queue.wait(until: until, wakeOnWork: wakeOnWork)
                case .abandon:
                    // Past the drain deadline: everything left is abandoned, unacknowledged.
                    for job in awaitingReplicas + retry + queue.takeAll() {
                        abandonedRecords += job.recordCount
                        queue.complete(job, .expired(.shutdown))
                    }
                    retry = []
                    awaitingReplicas = []
                    finish()
                    return
                case .finish:
                    finish()
                    return
                }
            }
        }

        private func finish() {
            dropConnection()
            publisher.threadEnded(abandonedRecords: abandonedRecords)
        }

        /// Jobs whose connection closed, or whose deadline passed, complete without being sent: those
        /// taken from the queue's front (`dead`) and those waiting to be retried.
        private func expireDead(_ dead: [PublishJob], at now: NIODeadline) {
            func isDead(_ job: PublishJob) -> Bool { job.isCancelled || job.deadline <= now }
            var gone = dead
            if retry.contains(where: isDead) {
                gone += retry.filter(isDead)
                retry.removeAll(where: isDead)
            }
            if awaitingReplicas.contains(where: isDead) {
                gone += awaitingReplicas.filter(isDead)
                awaitingReplicas.removeAll(where: isDead)
            }
            for job in gone { queue.complete(job, job.isCancelled ? .dropped : .expired(.timeout)) }
        }

        /// Sentinel promoted another primary: the connection (to the old one, which may still take writes) is
        /// closed between two batches and the next connect asks the Sentinels again. Jobs held for replicas
        /// are written again on the new primary (``dropConnection()``).
        private func primaryMoved(_ detail: String) {
            logger.warning(
                "Sentinel switched the primary: reconnecting",
                metadata: ["event": "redis.sentinel_switch", "switch": "\(detail)", "connected": .stringConvertible(transport != nil)]
            )
            guard transport != nil else { return }
            dropConnection()
            machine.droppedBetweenBatches(at: .now())
        }

        /// A new connection with Redis' settings read, or a failure counted, logged once, and the next
        /// attempt scheduled (the `retry_in_ms` logged is the delay kept).
        private func connect() {
            do throws(RedisConnection.Failure) {
                let opened = try publisher.connector.connect()
                try checkDurability(opened)
                try checkStreams(opened)
                replicaWait = try replicaWait(on: opened)
                transport = opened
                let now = NIODeadline.now()
                machine.connected(at: now)
                if everConnected { metrics.redisReconnects.increment() }
                everConnected = true
                publisher.setConnected(true)
                logger.info(
                    "redis connected",
                    metadata: ["event": "redis.connected", "redis": "\(publisher.connector.description)", "endpoint": "\(opened.endpoint)"]
                )
                if let old = lastEndpoint, old != opened.endpoint {
                    metrics.redisPrimaryChanges.increment()
                    let seconds = Double((now - (downSince ?? now)).nanoseconds) / 1e9
                    logger.warning(
                        "redis primary changed",
                        metadata: [
                            "event": "redis.primary_changed", "old": "\(old)", "new": "\(opened.endpoint)",
                            "seconds_without_primary": .stringConvertible((seconds * 1000).rounded() / 1000),
                        ]
                    )
                }
                lastEndpoint = opened.endpoint
                downSince = nil
            } catch {
                dropConnection()
                metrics.redisErrors(kind: error.kind).increment()
                let delay = machine.connectFailed(at: .now(), jitter: Driver.jitter())
                var attempt = 0
                if case .down(let failures, _) = machine.link { attempt = failures }
                logger.error(
                    "redis unreachable",
                    metadata: [
                        "event": "redis.connect_failed", "error": "\(error)",
                        "retry_in_ms": .stringConvertible(delay.nanoseconds / 1_000_000),
                        "attempt": .stringConvertible(attempt), "redis": "\(publisher.connector.description)",
                    ]
                )
            }
        }

        /// A health or settings check with nothing in flight; a failure is counted and logged, and the
        /// next round reconnects.
        private func check(_ body: (any RedisTransport) throws(RedisConnection.Failure) -> Void) {
            guard let transport else { preconditionFailure("a check was decided without a connection") }
            do throws(RedisConnection.Failure) {
                try body(transport)
            } catch {
                dropConnection()
                machine.droppedBetweenBatches(at: .now())
                metrics.redisErrors(kind: error.kind).increment()
                logger.error(
                    "redis health check failed",
                    metadata: [
                        "event": "redis.connection_lost", "error": "\(error)", "unconfirmed_jobs": .stringConvertible(0),
                        "retry_in_ms": .stringConvertible(0),
                    ]
                )
            }
        }

        /// Sends the retried jobs, then queued ones, as one pipelined batch (with `minReplicas`, then a
        /// `WAIT`), and sorts the answers: stored, refused (retried after a pause), held for replicas
        /// (confirmed by a later `WAIT`), or in doubt (retried on a new connection).
        private func send() {
            guard let transport else { preconditionFailure("a send was decided without a connection") }
            let retried = retry.reduce(0) { $0 + $1.recordCount }
            let batch = retry + queue.take(maxRecords: max(1, configuration.maxBatchRecords - retried))
            retry = []
            let wait = replicaWait
            // Without a `WAIT`, a job whose every reply is a stream id is stored: it completes (its ACK goes
            // out) while Redis answers the rest of the batch, in up to `completionParts` parts. Those devices
            // send their next packets meanwhile rather than all at the end (issue 19: at peak the idle cores
            // went from about 0.33 to 0.19 of 2 with 4 parts, to 0.15 with 8). `early` jobs of the batch are
            // completed so.
            var early = 0
            let part = max(1, batch.count / Self.completionParts)
            let result = transport.send(batch, replicaWait: wait) { answers in
                guard wait == nil, answers.count - early >= part else { return }
                store(zip(batch[early..<answers.count], answers[early...]).compactMap { $1 == nil ? $0 : nil })
                early = answers.count
            }
            var refused: [PublishJob] = []
            var written: [PublishJob] = []
            var firstRefusal: String? = nil
            for (index, (job, answer)) in zip(batch, result.answers).enumerated() {
                if let answer {
                    metrics.redisErrors(kind: .reply).increment()
                    if firstRefusal == nil { firstRefusal = answer }
                    refused.append(job)
                } else if index >= early {
                    written.append(job)
                }
            }
            // One line per batch, however many of its jobs Redis refused (it may refuse thousands a second).
            if let firstRefusal {
                logger.error(
                    "redis refused writes",
                    metadata: ["event": "redis.error_reply", "error": "\(firstRefusal)", "jobs": .stringConvertible(refused.count)]
                )
            }
            // Redis Cluster: held jobs whose connection closed are written again.
            var lostHeld: [PublishJob] = []
            if let wait, let spread = result.spread {
                // Each job waits for the `WAIT` of the connections (primaries) it was written on.
                let sorted = spread.sort(
                    held: awaitingReplicas.map { ($0, heldOn[ObjectIdentifier($0)] ?? []) },
                    written: zip(batch, result.answers).enumerated().compactMap { $1.1 == nil ? ($1.0, spread.written[$0]) : nil }
                )
                store(sorted.confirmed)
                awaitingReplicas = sorted.held.map(\.job)
                heldOn = Dictionary(sorted.held.map { (ObjectIdentifier($0.job), $0.on) }) { first, _ in first }
                lostHeld = sorted.lost
                if result.failure == nil {
                    metrics.jobsHeldForReplicas.increment(by: Int64(sorted.newlyHeld))
                    if let replicas = result.replicas { noteReplicas(replicas, short: replicas < wait.replicas) }
                }
            } else if let wait {
                if let replicas = result.replicas, replicas >= wait.replicas {
                    store(awaitingReplicas + written)
                    awaitingReplicas = []
                    noteReplicas(replicas, short: false)
                } else {
                    // Written on this connection, not yet on enough replicas: held, never ACKed on the primary's word.
                    awaitingReplicas += written
                    if result.failure == nil {
                        metrics.jobsHeldForReplicas.increment(by: Int64(written.count))
                        noteReplicas(result.replicas ?? 0, short: true)
                    }
                }
            } else {
                store(written)
            }
            // A write refused as READONLY went to a replica (the primary was demoted): find the new one.
            let demoted = firstRefusal?.hasPrefix("READONLY") == true
            if result.failure != nil || demoted {
                // Outcome unknown for every job not fully answered (and for those awaiting replicas, whose
                // `WAIT` can no longer be asked): not confirmed, so sent again (a duplicate, never a loss).
                let unanswered = batch[result.answers.count...]
                retry = lostHeld + awaitingReplicas + refused + unanswered
                awaitingReplicas = []
                dropConnection()
                let failure = result.failure ?? RedisConnection.Failure(kind: .reply, message: firstRefusal ?? "")
                if result.failure != nil { metrics.redisErrors(kind: failure.kind).increment() }
                readOnlyInARow = demoted ? readOnlyInARow + 1 : 0
                let delay = machine.connectionLost(at: .now(), jitter: Driver.jitter(), inARow: max(1, readOnlyInARow))
                logger.error(
                    "redis connection lost",
                    metadata: [
                        "event": "redis.connection_lost", "error": "\(failure)", "unconfirmed_jobs": .stringConvertible(retry.count),
                        "retry_in_ms": .stringConvertible(delay.nanoseconds / 1_000_000),
                    ]
                )
            } else {
                readOnlyInARow = 0
                if !batch.isEmpty { metrics.publishBatchSize.record(Int64(batch.reduce(0) { $0 + $1.recordCount })) }
                retry = lostHeld + refused
                // A `WAIT` answered with an error (not a short count, which already waited) pauses like a refusal.
                let waitRefused = wait != nil && (result.spread.map(\.waitRefused) ?? (result.replicas == nil))
                // The jitter only matters for a pause after a refusal: drawn then, not per batch (each draw is a
                // `getrandom` system call: 0.1-0.4 per packet at peak).
                let pause = !refused.isEmpty || waitRefused
                machine.batchAnswered(at: .now(), refused: pause, jitter: pause ? Driver.jitter() : 1)
            }
        }

        /// The most parts a batch without `WAIT` completes in as its replies are read (``send()``). A part
        /// is completed before the transport waits for more replies (one wait per
        /// ``RedisConnection/maxLowWaterMark`` of them), so finer parts than the waits change nothing; 16
        /// parts with 2 KiB waits cost the server more CPU per record than they gave back in idle cores.
        static let completionParts = 8

        /// The configured wait, with `WAITAOF` only if the server has it (7.2+, from `INFO server`); on an
        /// older one, `WAIT` for the replicas alone and a warning (once).
        private func replicaWait(on transport: any RedisTransport) throws(RedisConnection.Failure) -> ReplicaWait? {
            guard var wait = configuration.replicaWait, wait.localFsync else { return configuration.replicaWait }
            var version = "unknown"
            if case .string(let info) = try transport.command(["INFO", "server"]),
                let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("redis_version:") })
            {
                version = String(line.dropFirst("redis_version:".count))
            }
            let parts = version.split(separator: ".").compactMap { Int($0) }
            if parts.count >= 2, (parts[0], parts[1]) >= (7, 2) { return wait }
            wait.localFsync = false
            if !loggedNoWaitaof {
                loggedNoWaitaof = true
                logger.warning(
                    "redis has no WAITAOF; REDIS_MIN_LOCAL_FSYNC is not applied",
                    metadata: [
                        "event": "redis.waitaof_unavailable", "redis_version": "\(version)",
                        "min_replicas": .stringConvertible(wait.replicas),
                    ]
                )
            }
            return wait.replicas > 0 ? wait : nil
        }

        /// Jobs confirmed: counted, timed and completed `.stored` (their ACKs go out).
        private func store(_ jobs: [PublishJob]) {
            let now = NIODeadline.now()
            var records = 0
            for job in jobs {
                if !job.isMessage { records += job.recordCount }
                metrics.publishDuration.recordNanoseconds((now - job.enqueued).nanoseconds)
            }
            if records > 0 { metrics.recordsPublished.increment(by: Int64(records)) }
            queue.complete(jobs, .stored)
        }

        /// The replicas the last `WAIT` reported; a log line when it starts or stops falling short.
        private func noteReplicas(_ replicas: Int, short: Bool) {
            metrics.redisReplicasAcknowledged.set(Int64(max(0, replicas)))
            if short { metrics.replicaWaitsShort.increment() }
            guard short != replicasShort else { return }
            replicasShort = short
            let metadata: Logger.Metadata = [
                "event": short ? "redis.replicas_short" : "redis.replicas_ok", "replicas": .stringConvertible(replicas),
                "min_replicas": .stringConvertible(configuration.minReplicas), "held_jobs": .stringConvertible(awaitingReplicas.count),
            ]
            if short {
                logger.warning("too few replicas confirmed writes; holding ACKs", metadata: metadata)
            } else {
                logger.info("replicas confirm writes again", metadata: metadata)
            }
        }

        /// The connection is gone (or closed): `teltonika_redis_up` 0, and the time without one counts.
        private func dropConnection() {
            // Jobs held for their replicas were written on this connection, and a `WAIT` answers only for
            // its own connection's writes: they are written again on the next one (a duplicate at worst),
            // never confirmed by another connection's `WAIT` (a failed health or durability check dropped
            // the connection without moving them, and the next connection's `WAIT` ACKed them unconfirmed).
            retry = awaitingReplicas + retry
            awaitingReplicas = []
            heldOn = [:]
            transport = nil
            publisher.setConnected(false)
            if downSince == nil { downSince = .now() }
        }

        /// Reads each watched stream's length (`XLEN`) and its consumer groups' lag (`XINFO GROUPS`: entries
        /// not yet delivered to the group): `teltonika_stream_length`, `teltonika_stream_group_lag`. An error
        /// reply (no such key, an ACL without `+xinfo`) leaves the figures as they were.
        private func checkStreams(_ transport: any RedisTransport) throws(RedisConnection.Failure) {
            // Redis' memory against its maxmemory (0: no limit): with noeviction, writes fail (OOM) at the limit.
            if case .string(let info) = try transport.command(["INFO", "memory"]) {
                for line in info.split(whereSeparator: \.isNewline) {
                    if line.hasPrefix("used_memory:"), let n = Int64(line.dropFirst("used_memory:".count)) {
                        metrics.redisMemoryUsed.set(n)
                    } else if line.hasPrefix("maxmemory:"), let n = Int64(line.dropFirst("maxmemory:".count)) {
                        metrics.redisMaxMemory.set(n)
                    }
                }
            }
            for stream in configuration.watchedStreams {
                if case .integer(let length) = try transport.command(["XLEN", stream.key]) {
                    metrics.streamLength(stream).set(length)
                }
                guard case .array(let groups) = try transport.command(["XINFO", "GROUPS", stream.key]) else { continue }
                for case .array(let fields) in groups {
                    var name: String? = nil
                    var lag: Int64? = nil
                    for index in stride(from: 0, to: fields.count - 1, by: 2) {
                        switch (fields[index], fields[index + 1]) {
                        case (.string("name"), .string(let value)): name = value
                        case (.string("lag"), .integer(let value)): lag = value
                        default: break
                        }
                    }
                    if let name, let lag { metrics.streamGroupLag(stream, group: name).set(lag) }
                }
            }
        }

        /// Reads Redis' persistence and eviction settings (`CONFIG GET`), sets `teltonika_redis_durability`,
        /// and logs `redis.durability` when they change: a warning when ACKed records would not survive a
        /// Redis restart (no AOF) or could be evicted (`allkeys-*`). A refused `CONFIG GET` is mode `unknown`.
        private func checkDurability(_ transport: any RedisTransport) throws(RedisConnection.Failure) {
            func setting(_ name: String) throws(RedisConnection.Failure) -> String? {
                guard case .array(let pair) = try transport.command(["CONFIG", "GET", name]), pair.count == 2,
                    case .string(let value) = pair[1]
                else { return nil }
                return value
            }
            let mode = RedisDurability(appendonly: try setting("appendonly"), appendfsync: try setting("appendfsync"))
            let policy = try setting("maxmemory-policy")
            metrics.setRedisDurability(mode)
            let seen = "\(mode.rawValue) \(policy ?? "unknown")"
            guard seen != loggedDurability else { return }
            loggedDurability = seen
            let evicts = RedisDurability.policyEvictsStreams(policy)
            let metadata: Logger.Metadata = [
                "event": "redis.durability", "mode": "\(mode.rawValue)", "maxmemory_policy": "\(policy ?? "unknown")",
                "evicts_streams": .stringConvertible(evicts), "meaning": "\(mode.meaning)",
            ]
            if mode == .none || evicts {
                logger.warning("redis may lose ACKed records", metadata: metadata)
            } else {
                logger.info("redis persistence", metadata: metadata)
            }
        }
    }
}

/// A continuation resumed once, by whichever of several parties comes first.
final class ResumeOnce<Value: Sendable>: Sendable {
    private let continuation = NIOLockedValueBox<CheckedContinuation<Value, Never>?>(nil)

    init(_ continuation: CheckedContinuation<Value, Never>) {
        self.continuation.withLockedValue { $0 = continuation }
    }

    func resume(_ value: Value) {
        let taken = continuation.withLockedValue { c -> CheckedContinuation<Value, Never>? in
            defer { c = nil }
            return c
        }
        taken?.resume(returning: value)
    }
}
