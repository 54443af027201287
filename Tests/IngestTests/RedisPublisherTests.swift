import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import RedisWire
import Testing

@testable import Ingest

/// A Redis that answers as the test scripts it: per connect, succeed or fail; per batch, each job's
/// answer (nil: stored, a string: an error reply) and whether the connection then breaks.
final class FakeRedis: RedisConnector, @unchecked Sendable {
    struct Script {
        /// Connects that fail before one succeeds.
        var failingConnects = 0
        /// Answers for the batches in turn; past the end every job is stored.
        var batches: [(answers: (PublishJob) -> String?, breakAfter: Int?)] = []
        /// Holds every batch until ``release()`` (a hung Redis).
        var hang = false
        /// What each `WAIT` reports in turn; past the end, the replicas asked for.
        var replicas: [Int] = []
        /// The endpoint of each connection in turn; past the end, the last one (or "fake:6379").
        var endpoints: [String] = []
        /// What `INFO server` reports as `redis_version`.
        var version = "7.0.15"
        /// Every `WAIT` on the first connection reports 0 replicas (the later ones, the replicas asked for).
        var firstConnectionShort = false
        /// The first command after a batch was sent fails, as a broken connection does (a health or
        /// durability check).
        var failCheckAfterABatch = false
        /// In the first batch of more jobs than `answered`: once that many are answered, the transport says
        /// so (as the hiredis one does between reply pieces), then calls `observe` before answering the rest.
        var midBatch: (answered: Int, observe: @Sendable () -> Void)? = nil
    }

    private let lock = NIOLock()
    private var script: Script
    private var connectsMade = 0
    /// Connects tried so far (read under the lock: the publisher thread counts them while a test polls).
    var connects: Int { lock.withLock { connectsMade } }
    private let hung = DispatchSemaphore(value: 0)

    /// Lets the batches held by `hang` go on.
    func release() { hung.signal() }
    private(set) var sent: [[Int]] = []
    /// The `WAIT` each batch ended with, if any.
    private(set) var waits: [ReplicaWait?] = []

    init(_ script: Script) { self.script = script }

    var description: String { "fake" }

    func connect() throws(RedisConnection.Failure) -> any RedisTransport {
        let fail = lock.withLock { () -> Bool in
            connectsMade += 1
            guard script.failingConnects > 0 else { return false }
            script.failingConnects -= 1
            return true
        }
        if fail { throw RedisConnection.Failure(kind: .connect, message: "refused") }
        let endpoint = lock.withLock { script.endpoints.count > 1 ? script.endpoints.removeFirst() : script.endpoints.first ?? "fake:6379" }
        return Transport(redis: self, endpoint: endpoint, number: connects)
    }

    /// Record counts of the jobs of each batch sent so far.
    var batchesSent: [[Int]] { lock.withLock { sent } }
    var waitsSent: [ReplicaWait?] { lock.withLock { waits } }

    final class Transport: RedisTransport {
        let redis: FakeRedis
        let endpoint: String
        /// 1 for the first connection made, and so on.
        let number: Int
        init(redis: FakeRedis, endpoint: String, number: Int = 1) {
            self.redis = redis
            self.endpoint = endpoint
            self.number = number
        }

        func send(_ jobs: [PublishJob], replicaWait: ReplicaWait?, answered: ([String?]) -> Void) -> BatchResult {
            let midBatch = redis.lock.withLock { () -> (answered: Int, observe: @Sendable () -> Void)? in
                guard let mid = redis.script.midBatch, jobs.count > mid.answered else { return nil }
                redis.script.midBatch = nil
                return mid
            }
            let (step, hang, replicas) = redis.lock.withLock {
                () -> ((answers: (PublishJob) -> String?, breakAfter: Int?)?, Bool, Int?) in
                redis.sent.append(jobs.map(\.recordCount))
                redis.waits.append(replicaWait)
                let step = redis.script.batches.isEmpty ? nil : redis.script.batches.removeFirst()
                var replicas: Int? = nil
                if let replicaWait { replicas = redis.script.replicas.isEmpty ? replicaWait.replicas : redis.script.replicas.removeFirst() }
                if replicaWait != nil, redis.script.firstConnectionShort, number == 1 { replicas = 0 }
                return (step, redis.script.hang, replicas)
            }
            if hang { redis.hung.wait() }
            let answers = step.map { jobs.prefix($0.breakAfter ?? jobs.count).map($0.answers) } ?? jobs.map { _ in nil }
            if let midBatch {
                answered(Array(answers.prefix(midBatch.answered)))
                midBatch.observe()
            }
            guard step?.breakAfter == nil else {
                return BatchResult(answers: answers, failure: RedisConnection.Failure(kind: .eof, message: "connection closed"))
            }
            return BatchResult(answers: answers, replicas: replicas, failure: nil)
        }

        func command(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply {
            let fail = redis.lock.withLock { () -> Bool in
                guard redis.script.failCheckAfterABatch, !redis.sent.isEmpty else { return false }
                redis.script.failCheckAfterABatch = false
                return true
            }
            if fail { throw RedisConnection.Failure(kind: .eof, message: "connection closed") }
            return switch arguments.first {
            case "PING": .string("PONG")
            case "INFO": .string("# Server\r\nredis_version:\(redis.lock.withLock { redis.script.version })\r\nredis_mode:standalone\r\n")
            default: .array([.string(arguments.last ?? ""), .string("no")])
            }
        }
    }
}

/// The publisher thread with a fake Redis: retries, refusals, partial batches and stops, in milliseconds.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct RedisPublisherTests {
    static var logger: Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }

    static func publisher(
        _ redis: FakeRedis,
        capacity: Int = 1000,
        minReplicas: Int = 0,
        localFsync: Bool = false,
        checksMs: Int? = nil,
        metrics: IngestMetrics = IngestMetrics()
    ) -> RedisPublisher {
        var configuration = PublisherConfiguration(
            redis: RedisURL(endpoint: .unix(path: "/nonexistent")),
            queueCapacity: capacity,
            redisTimeoutMs: 100
        )
        if let checksMs {
            configuration.healthCheckMs = checksMs
            configuration.durabilityCheckMs = checksMs
        }
        configuration.reconnectBaseMs = 1
        configuration.reconnectMaxMs = 4
        configuration.minReplicas = minReplicas
        configuration.minLocalFsync = localFsync
        return RedisPublisher(configuration: configuration, connector: redis, logger: logger, metrics: metrics)
    }

    /// A job of `records` records whose outcomes are collected in `outcomes` under `name`.
    static func job(
        _ name: String,
        records: Int = 1,
        timeoutMs: Int64 = 5000,
        into outcomes: NIOLockedValueBox<[String: PublishOutcome]>
    ) -> PublishJob {
        PublishJob(commands: RESPBuffer(copying: [], commands: records), recordCount: records, deadline: .now() + .milliseconds(timeoutMs))
        { outcome in
            outcomes.withLockedValue { $0[name] = outcome }
        }
    }

    /// Waits for a condition without blocking the task pool (the stops under test need it).
    static func waitUntil(_ condition: () -> Bool) async throws {
        let end = Date().addingTimeInterval(5)
        while !condition() {
            guard Date() < end else { throw TestFailure("condition not met in 5 s") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    struct TestFailure: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    @Test func testJobsWaitForRedisThenAreStoredInOrder() async throws {
        let redis = FakeRedis(.init(failingConnects: 3))
        let publisher = Self.publisher(redis)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("a", records: 2, into: outcomes)))
        #expect(publisher.submit(Self.job("b", records: 3, into: outcomes)))
        #expect(publisher.queuedRecords == 5)
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0.count } == 2 }
        #expect(outcomes.withLockedValue { $0 } == ["a": .stored, "b": .stored])
        #expect(redis.connects == 4, "three refused connects, then one that works")
        #expect(redis.batchesSent == [[2, 3]], "one pipelined batch")
        #expect(publisher.queuedRecords == 0)
        #expect(await publisher.stop(deadline: .now() + .seconds(1)) == .init(abandonedRecords: 0, threadFinished: true))
    }

    /// Without `WAIT`, the jobs answered while the rest of a batch is still being read complete then (their
    /// ACKs go out), each once; the rest when the batch ends.
    @Test func testJobsAnsweredMidBatchCompleteBeforeTheBatchEnds() async throws {
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        let midway = NIOLockedValueBox<[String: PublishOutcome]?>(nil)
        let completions = NIOLockedValueBox(0)
        let redis = FakeRedis(.init(midBatch: (answered: 4, observe: { midway.withLockedValue { $0 = outcomes.withLockedValue { $0 } } })))
        let metrics = IngestMetrics()
        let publisher = Self.publisher(redis, metrics: metrics)
        for n in 0..<8 {
            let job = PublishJob(commands: RESPBuffer(copying: [], commands: 1), recordCount: 1, deadline: .now() + .seconds(5)) {
                outcome in
                completions.withLockedValue { $0 += 1 }
                outcomes.withLockedValue { $0["j\(n)"] = outcome }
            }
            #expect(publisher.submit(job))
        }
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0.count } == 8 }
        #expect(midway.withLockedValue { $0 } == ["j0": .stored, "j1": .stored, "j2": .stored, "j3": .stored])
        #expect(outcomes.withLockedValue { $0 }.values.allSatisfy { $0 == .stored })
        #expect(completions.withLockedValue { $0 } == 8, "each job completed once")
        #expect(try Self.value(metrics, "teltonika_records_published_total") == 8, "each record counted once")
        #expect(redis.batchesSent == [[1, 1, 1, 1, 1, 1, 1, 1]])
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// Jobs completed mid-batch are not sent again when the connection then breaks: only the unanswered ones
    /// are, on the next connection (a resend of a stored job would be a duplicate entry).
    @Test func testABreakAfterMidBatchCompletionsResendsOnlyTheUnanswered() async throws {
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        let redis = FakeRedis(.init(batches: [(answers: { _ in nil }, breakAfter: 6)], midBatch: (answered: 4, observe: {})))
        let publisher = Self.publisher(redis)
        for n in 0..<8 { #expect(publisher.submit(Self.job("j\(n)", records: n + 1, into: outcomes))) }
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0.count } == 8 }
        #expect(outcomes.withLockedValue { $0 }.values.allSatisfy { $0 == .stored })
        #expect(redis.batchesSent == [[1, 2, 3, 4, 5, 6, 7, 8], [7, 8]], "only the two unanswered jobs are sent again")
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// With `WAIT`, a job answered mid-batch is on the primary only: nothing completes before the replicas confirm.
    @Test func testWithReplicasNothingCompletesMidBatch() async throws {
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        let midway = NIOLockedValueBox<Int?>(nil)
        let redis = FakeRedis(
            .init(midBatch: (answered: 4, observe: { midway.withLockedValue { $0 = outcomes.withLockedValue { $0.count } } }))
        )
        let publisher = Self.publisher(redis, minReplicas: 1)
        for n in 0..<8 { #expect(publisher.submit(Self.job("j\(n)", into: outcomes))) }
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0.count } == 8 }
        #expect(midway.withLockedValue { $0 } == 0)
        #expect(outcomes.withLockedValue { $0 }.values.allSatisfy { $0 == .stored })
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// The connection breaks after the first job of a batch is answered and the second refused: the
    /// first is stored, the refused one and the unanswered one go out again, in order, on a new connection.
    @Test func testAPartialBatchFailureRetriesOnlyWhatWasNotConfirmed() async throws {
        let redis = FakeRedis(.init(batches: [(answers: { $0.recordCount == 2 ? "OOM command not allowed" : nil }, breakAfter: 2)]))
        let publisher = Self.publisher(redis)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        for (name, records) in [("a", 1), ("b", 2), ("c", 3)] {
            #expect(publisher.submit(Self.job(name, records: records, into: outcomes)))
        }
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0.count } == 3 }
        #expect(outcomes.withLockedValue { $0 } == ["a": .stored, "b": .stored, "c": .stored])
        #expect(redis.batchesSent == [[1, 2, 3], [2, 3]], "only the refused and the unanswered jobs are sent again")
        #expect(redis.connects == 2)
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// A job Redis keeps refusing is retried (with a pause) and does not hold back a job submitted
    /// meanwhile; it is dropped once its connection goes.
    @Test func testARefusedJobDoesNotHoldBackOthers() async throws {
        let redis = FakeRedis(.init(batches: Array(repeating: Self.refuseSeven, count: 100_000)))
        let publisher = Self.publisher(redis)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        let refused = Self.job("refused", records: 7, timeoutMs: 60_000, into: outcomes)
        #expect(publisher.submit(refused))
        publisher.start()
        try await Self.waitUntil { redis.batchesSent.count >= 2 }
        #expect(publisher.submit(Self.job("other", records: 1, into: outcomes)))
        try await Self.waitUntil { outcomes.withLockedValue { $0["other"] } == .stored }
        #expect(outcomes.withLockedValue { $0["refused"] } == nil, "still retried")
        #expect(redis.batchesSent.contains([7, 1]), "the new job went out with the retried one, not after its pause")
        refused.cancel()
        try await Self.waitUntil { outcomes.withLockedValue { $0["refused"] } == .dropped }
        #expect(publisher.queuedRecords == 0)
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// A job Redis keeps refusing completes `.expired` at its deadline: never ACKed.
    @Test func testARefusedJobExpiresAtItsDeadline() async throws {
        let redis = FakeRedis(.init(batches: Array(repeating: Self.refuseSeven, count: 100_000)))
        let publisher = Self.publisher(redis)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("refused", records: 7, timeoutMs: 200, into: outcomes)))
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0["refused"] } != nil }
        #expect(outcomes.withLockedValue { $0["refused"] } == .expired(.timeout))
        #expect(redis.batchesSent.count >= 2, "it was retried before it expired")
        #expect(publisher.queuedRecords == 0)
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// `WAIT` falls short twice: the job written first is held (no outcome, not written again) while
    /// WAIT-only rounds ask again on the same connection; the third `WAIT` confirms it.
    @Test func testAShortWaitHoldsTheJobUntilALaterWaitConfirmsIt() async throws {
        let redis = FakeRedis(.init(replicas: [0, 0, 1]))
        let metrics = IngestMetrics()
        let publisher = Self.publisher(redis, minReplicas: 1, metrics: metrics)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("a", records: 2, into: outcomes)))
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0["a"] } != nil }
        #expect(outcomes.withLockedValue { $0 } == ["a": .stored])
        #expect(redis.batchesSent == [[2], [], []], "written once; the later rounds only WAIT")
        #expect(redis.waitsSent == Array(repeating: ReplicaWait(replicas: 1, timeoutMs: 1000), count: 3))
        #expect(redis.connects == 1)
        #expect(try Self.value(metrics, "teltonika_redis_replica_waits_short_total") == 2)
        #expect(try Self.value(metrics, "teltonika_publish_jobs_held_for_replicas_total") == 1)
        #expect(try Self.value(metrics, "teltonika_redis_replicas_acknowledged") == 1)
        #expect(try Self.value(metrics, "teltonika_records_published_total") == 2)
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// Without replicas confirming, a held job is never stored: it expires at its deadline (no ACK).
    @Test func testAJobReplicasNeverConfirmExpires() async throws {
        let redis = FakeRedis(.init(replicas: Array(repeating: 0, count: 100_000)))
        let publisher = Self.publisher(redis, minReplicas: 2)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("a", timeoutMs: 200, into: outcomes)))
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0["a"] } != nil }
        #expect(outcomes.withLockedValue { $0 } == ["a": .expired(.timeout)])
        #expect(redis.batchesSent.first == [1] && redis.batchesSent.dropFirst().allSatisfy(\.isEmpty), "written once, never again")
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// The connection breaks while a job waits for its replicas: the `WAIT` cannot be asked on another
    /// connection, so the job is written again there (a duplicate at worst, never a loss).
    @Test func testAHeldJobIsWrittenAgainOnANewConnection() async throws {
        let redis = FakeRedis(
            .init(batches: [(answers: { _ in nil }, breakAfter: nil), (answers: { _ in nil }, breakAfter: 0)], replicas: [0])
        )
        let publisher = Self.publisher(redis, minReplicas: 1)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("a", records: 3, into: outcomes)))
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0["a"] } != nil }
        #expect(outcomes.withLockedValue { $0 } == ["a": .stored])
        #expect(redis.batchesSent == [[3], [], [3]])
        #expect(redis.connects == 2)
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// A job held for its replicas when a health or durability check finds the connection broken: the next
    /// connection's `WAIT` answers only for that connection's writes, so the job is written again there
    /// before it is stored, never confirmed by a `WAIT` that does not cover it.
    @Test func testAHeldJobIsWrittenAgainAfterACheckDropsTheConnection() async throws {
        let redis = FakeRedis(.init(firstConnectionShort: true, failCheckAfterABatch: true))
        let publisher = Self.publisher(redis, minReplicas: 1, checksMs: 5)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("a", records: 3, into: outcomes)))
        publisher.start()
        try await Self.expectStoredOnTheSecondConnection(redis, publisher, outcomes)
    }

    /// Job "a" (3 records) is stored, written on the first connection and again on the second (its `WAIT`
    /// never confirmed on the first); then the publisher stops.
    static func expectStoredOnTheSecondConnection(
        _ redis: FakeRedis,
        _ publisher: RedisPublisher,
        _ outcomes: NIOLockedValueBox<[String: PublishOutcome]>
    ) async throws {
        try await waitUntil { outcomes.withLockedValue { $0["a"] } != nil }
        #expect(outcomes.withLockedValue { $0 } == ["a": .stored])
        #expect(redis.connects == 2)
        #expect(redis.batchesSent.filter { !$0.isEmpty } == [[3], [3]], "written again on the second connection: \(redis.batchesSent)")
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// Sentinel's `+switch-master` (``RedisPublisher/primaryMoved(_:)``): the publisher leaves its connection
    /// between batches and connects again at once. A job held for its replicas on the old primary (whose
    /// `WAIT` never has enough) is written again on the new one and stored there, never confirmed by the old.
    @Test func testAPrimarySwitchLeavesTheOldConnection() async throws {
        let redis = FakeRedis(.init(endpoints: ["old:6379", "new:6379"], firstConnectionShort: true))
        let publisher = Self.publisher(redis, minReplicas: 1)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("a", records: 3, timeoutMs: 20_000, into: outcomes)))
        publisher.start()
        try await Self.waitUntil { !redis.batchesSent.isEmpty }
        #expect(outcomes.withLockedValue { $0 }.isEmpty, "held: the old primary's WAIT is short")
        publisher.primaryMoved("old:6379 -> new:6379")
        try await Self.expectStoredOnTheSecondConnection(redis, publisher, outcomes)
    }

    /// An idle publisher is woken by the switch: it does not wait for work or a health check to reconnect.
    @Test func testAPrimarySwitchWakesAnIdlePublisher() async throws {
        let redis = FakeRedis(.init(endpoints: ["old:6379", "new:6379"]))
        // No health check or settings reading within the test's 5 s to wake it instead.
        let publisher = Self.publisher(redis, checksMs: 60_000)
        publisher.start()
        try await Self.waitUntil { publisher.isConnected }
        publisher.primaryMoved("old:6379 -> new:6379")
        try await Self.waitUntil { redis.connects == 2 && publisher.isConnected }
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// A `READONLY` refusal means the node was demoted: the connection is dropped, the next one (the
    /// connector asks Sentinel) lands on the new primary, the job is written there, and the change of
    /// endpoint is counted.
    @Test func testAReadOnlyReplyReconnectsAndFollowsTheNewPrimary() async throws {
        let redis = FakeRedis(
            .init(
                batches: [(answers: { _ in "READONLY You can't write against a read only replica." }, breakAfter: nil)],
                endpoints: ["10.0.0.1:6379", "10.0.0.2:6379"]
            )
        )
        let metrics = IngestMetrics()
        let publisher = Self.publisher(redis, metrics: metrics)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("a", into: outcomes)))
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0["a"] } != nil }
        #expect(outcomes.withLockedValue { $0 } == ["a": .stored])
        #expect(redis.connects == 2, "a READONLY reply drops the connection")
        #expect(redis.batchesSent == [[1], [1]])
        #expect(try Self.value(metrics, "teltonika_redis_primary_changes_total") == 1)
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// `REDIS_MIN_LOCAL_FSYNC`: `WAITAOF` where `INFO server` says 7.2 or later, `WAIT` (replicas only)
    /// on older servers, none at all when no replicas are asked for.
    @Test(arguments: [("7.2.4", 1, true), ("7.0.15", 1, false), ("6.2.14", 0, false), ("8.0.1", 0, true)])
    func testLocalFsyncUsesWaitaofWhereRedisHasIt(version: String, replicas: Int, waitaof: Bool) async throws {
        let redis = FakeRedis(.init(version: version))
        let publisher = Self.publisher(redis, minReplicas: replicas, localFsync: true)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("a", into: outcomes)))
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0["a"] } != nil }
        #expect(outcomes.withLockedValue { $0 } == ["a": .stored])
        let expected: ReplicaWait? =
            waitaof || replicas > 0 ? ReplicaWait(replicas: replicas, timeoutMs: 1000, localFsync: waitaof) : nil
        #expect(redis.waitsSent == [expected], "Redis \(version)")
        _ = await publisher.stop(deadline: .now() + .seconds(1))
    }

    /// The bytes of `WAIT` and `WAITAOF`, and what their replies confirm.
    @Test func testWaitCommandsAndReplies() {
        let wait = ReplicaWait(replicas: 2, timeoutMs: 500)
        #expect(String(decoding: wait.command, as: UTF8.self) == "*3\r\n$4\r\nWAIT\r\n$1\r\n2\r\n$3\r\n500\r\n")
        #expect(wait.confirmedReplicas(.integer(1)) == 1)
        #expect(wait.confirmedReplicas(.error("ERR WAIT cannot be used with replica instances")) == nil)
        let waitaof = ReplicaWait(replicas: 1, timeoutMs: 200, localFsync: true)
        #expect(
            String(decoding: waitaof.command, as: UTF8.self)
                == "*4\r\n$7\r\nWAITAOF\r\n$1\r\n1\r\n$1\r\n1\r\n$3\r\n200\r\n"
        )
        #expect(waitaof.confirmedReplicas(.array([.integer(1), .integer(2)])) == 2)
        #expect(waitaof.confirmedReplicas(.array([.integer(0), .integer(2)])) == -1, "the primary did not fsync: short")
        #expect(waitaof.confirmedReplicas(.integer(1)) == nil)
    }

    /// One series of a registry, read from its Prometheus text.
    static func value(_ metrics: IngestMetrics, _ series: String) throws -> Double {
        var buffer: [UInt8] = []
        metrics.registry.emit(into: &buffer)
        for line in String(decoding: buffer, as: UTF8.self).split(separator: "\n") where line.hasPrefix(series + " ") {
            if let v = Double(line.dropFirst(series.count + 1)) { return v }
        }
        throw TestFailure("no series \(series)")
    }

    static var refuseSeven: (answers: (PublishJob) -> String?, breakAfter: Int?) {
        (
            answers: { $0.recordCount == 7 ? "WRONGTYPE Operation against a key holding the wrong kind of value" : nil }, breakAfter: nil
        )
    }

    @Test func testACancelledJobIsDroppedUnsent() async throws {
        let redis = FakeRedis(.init(failingConnects: 1_000_000))
        let publisher = Self.publisher(redis)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        let job = Self.job("gone", into: outcomes)
        #expect(publisher.submit(job))
        job.cancel()
        publisher.start()
        try await Self.waitUntil { outcomes.withLockedValue { $0["gone"] } == .dropped }
        #expect(redis.batchesSent.isEmpty)
        #expect(publisher.queuedRecords == 0)
        _ = await publisher.stop(deadline: .now() + .milliseconds(100))
    }

    @Test func testAFullQueueRefusesAndAStoppedOneToo() async throws {
        let redis = FakeRedis(.init(failingConnects: 1_000_000))
        let publisher = Self.publisher(redis, capacity: 10)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("a", records: 6, into: outcomes)))
        #expect(!publisher.submit(Self.job("b", records: 5, into: outcomes)), "6 + 5 > 10")
        #expect(publisher.submit(Self.job("c", records: 4, into: outcomes)))
        publisher.start()
        let report = await publisher.stop(deadline: .now() + .milliseconds(50))
        #expect(report == .init(abandonedRecords: 10, threadFinished: true), "Redis never came: both abandoned at the deadline")
        #expect(outcomes.withLockedValue { $0 } == ["a": .expired(.shutdown), "c": .expired(.shutdown)])
        #expect(!publisher.submit(Self.job("d", into: outcomes)), "nothing is taken after a stop")
    }

    /// Redis hangs inside a batch past the stop deadline: the stop returns at the deadline all the
    /// same, saying the thread did not finish and how many records are unconfirmed.
    @Test func testAStopReturnsAtItsDeadlineWhenRedisHangs() async throws {
        let redis = FakeRedis(.init(hang: true))
        let publisher = Self.publisher(redis)
        let outcomes = NIOLockedValueBox<[String: PublishOutcome]>([:])
        #expect(publisher.submit(Self.job("a", records: 3, into: outcomes)))
        publisher.start()
        try await Self.waitUntil { redis.batchesSent.count == 1 }
        let started = Date()
        let report = await publisher.stop(deadline: .now() + .milliseconds(200))
        let waited = Date().timeIntervalSince(started)
        #expect(report == .init(abandonedRecords: 3, threadFinished: false))
        #expect(waited >= 0.19, "returned after \(waited) s: not before the deadline")
        #expect(outcomes.withLockedValue { $0["a"] } == nil, "not confirmed, so not ACKed")
        redis.release()
        try await Self.waitUntil { outcomes.withLockedValue { $0["a"] } == .stored }
    }
}
