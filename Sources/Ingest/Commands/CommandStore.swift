/// The Redis side of downlink commands: take, mark sent, finish, give back (one thread, blocking hiredis),
/// and the wake-up reader.
import Codec8
import Dispatch
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import RedisWire
import Synchronization

/// Where sessions take commands from and record what became of them: Redis, or a fake in unit tests.
/// Every call returns at once; the work happens on the store's own thread.
protocol CommandStore: Sendable {
    /// The next command of `imei` with its lease, answered on any thread.
    func take(_ imei: IMEI, completion: @escaping @Sendable (TakeResult) -> Void)
    /// The taken command was written to the device.
    func sent(_ command: TakenCommand, imei: IMEI)
    /// How the command ended; with `holdLease`, the lease is kept that long (the grace window after a timeout).
    func finish(
        _ command: TakenCommand,
        imei: IMEI,
        outcome: CommandOutcome,
        response: DeviceMessage?,
        latency: TimeAmount?,
        holdLease: TimeAmount?
    )
    /// Gives the lease back; `unsent`: the command was never written (queued again as it was).
    func giveBack(_ command: TakenCommand, imei: IMEI, unsent: Bool)
}

/// The command metrics (no IMEI labels).
final class CommandMetrics: Sendable {
    private let outcomes: [CommandOutcome: Counter]
    private let sentByCodec: [String: Counter]
    let inFlight: Gauge
    let latency: DurationHistogram
    let uncorrelated: Counter
    let storeErrors: Counter
    let wakeUps: Counter

    init(registry r: PrometheusCollectorRegistry) {
        func d(_ name: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        }
        outcomes = Dictionary(
            uniqueKeysWithValues: CommandOutcome.allCases.map {
                (
                    $0,
                    r.makeCounter(
                        descriptor: d("teltonika_commands_total", "Downlink commands ended, by outcome."),
                        labels: [("outcome", $0.rawValue)]
                    )
                )
            }
        )
        sentByCodec = Dictionary(
            uniqueKeysWithValues: ["12", "14"].map {
                (
                    $0,
                    r.makeCounter(
                        descriptor: d("teltonika_commands_sent_total", "Downlink commands written to devices, by codec."),
                        labels: [("codec", $0)]
                    )
                )
            }
        )
        inFlight = r.makeGauge(descriptor: d("teltonika_commands_in_flight", "Downlink commands written and awaiting their answer."))
        latency = r.makeDurationHistogram(
            descriptor: d("teltonika_command_latency_seconds", "Time from a command written to its answer (answered, nack, late)."),
            buckets: [
                .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
                .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(120),
            ]
        )
        uncorrelated = r.makeCounter(
            descriptor: d("teltonika_command_responses_uncorrelated_total", "Codec 12/14 responses that answered no command in flight.")
        )
        storeErrors = r.makeCounter(
            descriptor: d(
                "teltonika_command_store_errors_total",
                "Command operations Redis did not carry out (connection or script error)."
            )
        )
        wakeUps = r.makeCounter(descriptor: d("teltonika_command_wakeups_total", "Wake-up notices read from the command wake stream."))
    }

    func outcome(_ outcome: CommandOutcome) -> Counter { outcomes[outcome]! }
    func sent(codec: DeviceMessage.Codec) -> Counter { sentByCodec[codec == .codec14 ? "14" : "12"]! }
}

/// What the command store needs from the configuration.
struct CommandStoreSettings: Sendable {
    var keys: CommandKeys
    var eventsStream: String
    var eventsMaxLength: Int
    /// This instance in events and leases (`INSTANCE_ID`).
    var instance: String
    /// How long a take's lease lasts: the answer timeout, the late grace and a margin.
    var leaseMs: Int
    /// How long an ended command's hash is kept.
    var retentionMs: Int
}

/// Commands in Redis, on one thread of its own with one connection (never the publisher's: a slow
/// script cannot delay an ACK). A take over ``maxOutstanding`` queued operations fails at once.
final class RedisCommandStore: CommandStore, @unchecked Sendable {
    static let maxOutstanding = 10_000

    private let settings: CommandStoreSettings
    /// The lease value's holder part: the instance and a per-process nonce (a restarted instance is another holder).
    let holder: String
    private let connector: any RedisConnector
    private let metrics: CommandMetrics
    private let logger: Logger
    private let pool = NIOThreadPool(numberOfThreads: 1)
    private let outstanding = Atomic<Int>(0)
    // Touched only on the pool's thread.
    private var transport: (any RedisTransport)? = nil
    private var lastFailure: NIODeadline? = nil
    private var errorLog = LogLimiter()

    init(settings: CommandStoreSettings, connector: any RedisConnector, metrics: CommandMetrics, logger: Logger) {
        self.settings = settings
        self.connector = connector
        self.metrics = metrics
        self.logger = logger
        holder = "\(settings.instance)/\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
    }

    func start() { pool.start() }

    /// Runs what is queued (bounded by `deadline`), then ends the thread.
    func stop(deadline: NIODeadline) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let once = ResumeOnce(continuation)
            pool.submit { _ in once.resume(()) }
            let seconds = Double(max(0, (deadline - .now()).nanoseconds)) / 1e9
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { once.resume(()) }
        }
        pool.shutdownGracefully { _ in }
    }

    // MARK: - Operations

    func take(_ imei: IMEI, completion: @escaping @Sendable (TakeResult) -> Void) {
        guard outstanding.add(1, ordering: .relaxed).newValue <= Self.maxOutstanding else {
            outstanding.subtract(1, ordering: .relaxed)
            metrics.storeErrors.increment()
            return completion(.failed)
        }
        run { store in
            defer { store.outstanding.subtract(1, ordering: .relaxed) }
            completion(store.takeNow(imei))
        }
    }

    func sent(_ command: TakenCommand, imei: IMEI) {
        metrics.sent(codec: command.codec).increment()
        run { store in
            let now = String(wallClockMilliseconds())
            guard store.script(KeysScript.sent, keys: [store.settings.keys.command(imei.description, id: command.id)], args: [now]) != nil
            else { return }
            store.event(command.id, imei: imei, status: "sent", attempt: command.attempt)
        }
    }

    func finish(
        _ command: TakenCommand,
        imei: IMEI,
        outcome: CommandOutcome,
        response: DeviceMessage?,
        latency: TimeAmount?,
        holdLease: TimeAmount?
    ) {
        metrics.outcome(outcome).increment()
        if let latency { metrics.latency.recordNanoseconds(latency.nanoseconds) }
        run { store in
            let keys = store.settings.keys
            let latencyMs = latency.map { String($0.nanoseconds / 1_000_000) } ?? ""
            let text = response?.text ?? ""
            let hex = response.map { Hex.encode($0.payload) } ?? ""
            let reply = store.script(
                KeysScript.finish,
                keys: [keys.queue(imei.description), keys.command(imei.description, id: command.id), keys.lease(imei.description)],
                args: [
                    store.leaseValue(command), command.id, outcome.rawValue, String(wallClockMilliseconds()), latencyMs, text, hex,
                    String((holdLease?.nanoseconds ?? 0) / 1_000_000), String(store.settings.retentionMs),
                ]
            )
            guard let reply else { return }
            store.event(
                command.id,
                imei: imei,
                status: outcome.rawValue,
                attempt: command.attempt,
                latencyMs: latencyMs,
                response: text.isEmpty ? hex : text
            )
            // Requeued for a resend, or more queued: another instance or connection may be waiting.
            if case .array(let values) = reply, values.count == 2, case .integer(let length) = values[1], length > 0, holdLease == nil {
                store.wake(imei)
            }
        }
    }

    func giveBack(_ command: TakenCommand, imei: IMEI, unsent: Bool) {
        run { store in
            let keys = store.settings.keys
            let reply = store.script(
                KeysScript.release,
                keys: [keys.queue(imei.description), keys.command(imei.description, id: command.id), keys.lease(imei.description)],
                args: [store.leaseValue(command), unsent ? "1" : "0"]
            )
            if case .integer(let length) = reply, length > 0 { store.wake(imei) }
        }
    }

    // MARK: - On the store's thread

    private func run(_ body: @escaping @Sendable (RedisCommandStore) -> Void) {
        pool.submit { [self] _ in body(self) }
    }

    private func leaseValue(_ command: TakenCommand) -> String { "\(holder) \(command.id)" }

    private func takeNow(_ imei: IMEI) -> TakeResult {
        let keys = settings.keys
        let digits = imei.description
        guard
            let reply = script(
                KeysScript.take,
                keys: [keys.queue(digits), keys.lease(digits)],
                args: [keys.commandPrefix(digits), holder, String(settings.leaseMs), String(wallClockMilliseconds())]
            ), case .array(let parts) = reply, parts.count == 6, case .string(let status) = parts[0]
        else { return .failed }
        if case .array(let closed) = parts[5] {
            var i = 0
            while i + 2 < closed.count {
                if case .string(let outcome) = closed[i], case .string(let id) = closed[i + 1], case .string(let attempt) = closed[i + 2],
                    let ended = CommandOutcome(rawValue: outcome)
                {
                    metrics.outcome(ended).increment()
                    event(id, imei: imei, status: outcome, attempt: Int(attempt) ?? 0)
                }
                i += 3
            }
        }
        func string(_ i: Int) -> String { if case .string(let s) = parts[i] { s } else { "" } }
        switch status {
        case "take":
            let id = string(1)
            let attempt = Int(string(4)) ?? 1
            guard let command = Self.command(id: id, codec: string(2), payloadHex: string(3), attempt: attempt) else {
                // Not sendable as stored: ended `rejected`, and the next one is looked at.
                let rejected = TakenCommand(id: id, codec: .codec12, payload: [], attempt: attempt)
                logger.warning(
                    "command not sendable as stored: rejected",
                    metadata: ["event": "command.rejected", "imei": "\(imei)", "cmd_id": "\(id)", "codec": "\(string(2))"]
                )
                finishNow(rejected, imei: imei, outcome: .rejected)
                return takeNow(imei)
            }
            return .command(command)
        case "busy": return .busy(retryAfterMs: Int(string(1)) ?? 1000)
        default: return .empty
        }
    }

    private func finishNow(_ command: TakenCommand, imei: IMEI, outcome: CommandOutcome) {
        metrics.outcome(outcome).increment()
        let keys = settings.keys
        _ = script(
            KeysScript.finish,
            keys: [keys.queue(imei.description), keys.command(imei.description, id: command.id), keys.lease(imei.description)],
            args: [
                leaseValue(command), command.id, outcome.rawValue, String(wallClockMilliseconds()), "", "", "", "0",
                String(settings.retentionMs),
            ]
        )
        event(command.id, imei: imei, status: outcome.rawValue, attempt: command.attempt)
    }

    /// A stored command as the device gets it; nil when it cannot be sent (codec, hex, size).
    static func command(id: String, codec: String, payloadHex: String, attempt: Int) -> TakenCommand? {
        let messageCodec: DeviceMessage.Codec
        switch codec {
        case "12": messageCodec = .codec12
        case "14": messageCodec = .codec14
        default: return nil
        }
        guard let payload = Hex.decode(payloadHex), !payload.isEmpty, payload.count <= CommandKeys.maxPayloadBytes else { return nil }
        return TakenCommand(id: id, codec: messageCodec, payload: payload, attempt: attempt)
    }

    private func event(_ id: String, imei: IMEI, status: String, attempt: Int, latencyMs: String = "", response: String = "") {
        _ = call([
            "XADD", settings.eventsStream, "MAXLEN", "~", String(settings.eventsMaxLength), "*", "cmd_id", id, "imei", imei.description,
            "status", status, "attempt", String(attempt), "instance", settings.instance, "latency_ms", latencyMs, "response", response,
        ])
    }

    private func wake(_ imei: IMEI) {
        _ = call(["XADD", settings.keys.wake, "MAXLEN", "~", "10000", "*", "imei", imei.description])
    }

    private func script(_ script: KeysScript, keys: [String], args: [String]) -> RedisConnection.Reply? {
        call(["EVAL", script.source, String(keys.count)] + keys + args)
    }

    /// One command on the store's connection (connected first when needed); nil when it failed (counted,
    /// logged at most once per 10 s). After a failed connect, operations fail at once for a second.
    private func call(_ arguments: [String]) -> RedisConnection.Reply? {
        do throws(RedisConnection.Failure) {
            if transport == nil {
                if let lastFailure, NIODeadline.now() - lastFailure < .seconds(1) {
                    throw RedisConnection.Failure(kind: .connect, message: "reconnecting")
                }
                let connected = try connector.connect()
                // Named apart from the publisher's connection in `CLIENT LIST`.
                _ = try connected.command(["CLIENT", "SETNAME", "teltonika-ingest-commands"])
                transport = connected
            }
            let reply = try transport!.command(arguments)
            if case .error(let message) = reply { throw RedisConnection.Failure(kind: .reply, message: message) }
            return reply
        } catch {
            if error.kind != .reply {
                transport = nil
                lastFailure = .now()
            }
            metrics.storeErrors.increment()
            if let heldBack = errorLog.admit(nowNanoseconds: NIODeadline.now().uptimeNanoseconds) {
                logger.warning(
                    "command operation failed in Redis",
                    metadata: [
                        "event": "command.store_failed", "error": "\(error)", "operation": "\(arguments.first ?? "")",
                        "suppressed": "\(heldBack)",
                    ]
                )
            }
            return nil
        }
    }
}

/// The server-side scripts by name.
enum KeysScript {
    case take, sent, finish, release

    var source: String {
        switch self {
        case .take: CommandKeys.takeScript
        case .sent: CommandKeys.sentScript
        case .finish: CommandKeys.finishScript
        case .release: CommandKeys.releaseScript
        }
    }
}

/// Reads the wake stream (`XREAD BLOCK`) on a thread and connection of its own, and tells ``onWake`` each
/// IMEI whose queue changed. Every instance reads every notice (no consumer group): the one holding
/// the device acts. After a reconnect, ``onResync`` runs (notices may have been missed).
final class CommandWakeReader: @unchecked Sendable {
    private let key: String
    private let connector: any RedisConnector
    private let blockMs: Int
    private let metrics: CommandMetrics
    private let logger: Logger
    private let onWake: @Sendable (IMEI) -> Void
    private let onResync: @Sendable () -> Void
    private let stopping = Atomic<Bool>(false)
    private let pool = NIOThreadPool(numberOfThreads: 1)

    init(
        key: String,
        connector: any RedisConnector,
        timeoutMs: Int,
        metrics: CommandMetrics,
        logger: Logger,
        onWake: @escaping @Sendable (IMEI) -> Void,
        onResync: @escaping @Sendable () -> Void
    ) {
        self.key = key
        self.connector = connector
        blockMs = max(50, min(1000, timeoutMs / 2))
        self.metrics = metrics
        self.logger = logger
        self.onWake = onWake
        self.onResync = onResync
    }

    func start() {
        pool.start()
        pool.submit { [self] _ in loop() }
    }

    /// Ends the loop within one block interval; does not wait for it.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        pool.shutdownGracefully { _ in }
    }

    private func loop() {
        var transport: (any RedisTransport)? = nil
        var lastID = "$"
        var everConnected = false
        var errorLog = LogLimiter()
        while !stopping.load(ordering: .relaxed) {
            do throws(RedisConnection.Failure) {
                if transport == nil {
                    let connected = try connector.connect()
                    _ = try connected.command(["CLIENT", "SETNAME", "teltonika-ingest-wake"])
                    transport = connected
                    if everConnected { onResync() }
                    everConnected = true
                }
                let reply = try transport!.command(["XREAD", "COUNT", "1000", "BLOCK", String(blockMs), "STREAMS", key, lastID])
                if case .error(let message) = reply { throw RedisConnection.Failure(kind: .reply, message: message) }
                for (id, imei) in Self.entries(reply) {
                    lastID = id
                    metrics.wakeUps.increment()
                    if let imei { onWake(imei) }
                }
            } catch {
                transport = nil
                metrics.storeErrors.increment()
                if let heldBack = errorLog.admit(nowNanoseconds: NIODeadline.now().uptimeNanoseconds) {
                    logger.warning(
                        "command wake stream unreadable: retrying",
                        metadata: ["event": "command.wake_failed", "error": "\(error)", "suppressed": "\(heldBack)"]
                    )
                }
                // A pause before reconnecting, in steps so that a stop is not held up.
                for _ in 0..<10 where !stopping.load(ordering: .relaxed) { usleep(100_000) }
            }
        }
    }

    /// `(id, IMEI)` of each entry of an `XREAD` reply of one stream (the IMEI nil when not one).
    static func entries(_ reply: RedisConnection.Reply) -> [(String, IMEI?)] {
        guard case .array(let streams) = reply, case .array(let stream)? = streams.first, stream.count == 2,
            case .array(let entries) = stream[1]
        else { return [] }
        return entries.compactMap { entry in
            guard case .array(let parts) = entry, parts.count == 2, case .string(let id) = parts[0], case .array(let fields) = parts[1]
            else { return nil }
            var imei: IMEI? = nil
            var i = 0
            while i + 1 < fields.count {
                if case .string("imei") = fields[i], case .string(let value) = fields[i + 1] { imei = IMEI(value) }
                i += 2
            }
            return (id, imei)
        }
    }
}
