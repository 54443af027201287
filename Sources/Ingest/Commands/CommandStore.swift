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
    let notices: Counter

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
                "teltonika_device_store_errors_total",
                "Device registry and downlink command operations Redis did not carry out (connection or script error)."
            )
        )
        notices = r.makeCounter(
            descriptor: d("teltonika_notices_total", "Notices read from the notices stream (command wake-ups, logins elsewhere).")
        )
    }

    func outcome(_ outcome: CommandOutcome) -> Counter { outcomes[outcome]! }
    func sent(codec: DeviceMessage.Codec) -> Counter { sentByCodec[codec == .codec14 ? "14" : "12"]! }
}

/// What the command store needs from the configuration.
struct CommandStoreSettings: Sendable {
    var keys: CommandKeys
    var eventsStream: String
    var eventsMaxLength: Int
    /// Where wake-up notices go (`REDIS_NOTICES_STREAM`).
    var noticesStream: String
    /// How long a take's lease lasts: the answer timeout, the late grace and a margin.
    var leaseMs: Int
    /// How long an ended command's hash is kept.
    var retentionMs: Int
}

/// Commands in Redis, through the side channel (its own thread and connection).
final class RedisCommandStore: CommandStore, Sendable {
    private let settings: CommandStoreSettings
    private let side: RedisSideChannel
    private let metrics: CommandMetrics
    private let logger: Logger

    init(settings: CommandStoreSettings, side: RedisSideChannel, metrics: CommandMetrics, logger: Logger) {
        self.settings = settings
        self.side = side
        self.metrics = metrics
        self.logger = logger
    }

    /// Where wake-up notices go (the notices stream).
    private var notices: String { settings.noticesStream }

    // MARK: - Operations

    func take(_ imei: IMEI, completion: @escaping @Sendable (TakeResult) -> Void) {
        let taken = side.run(droppable: true) { [self] _ in completion(takeNow(imei)) }
        if !taken { completion(.failed) }
    }

    func sent(_ command: TakenCommand, imei: IMEI) {
        metrics.sent(codec: command.codec).increment()
        run { store in
            let now = String(wallClockMilliseconds())
            guard
                store.side.eval(CommandKeys.sentScript, keys: [store.settings.keys.command(imei.description, id: command.id)], args: [now])
                    != nil
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
            let left = store.record(command, imei: imei, outcome: outcome, response: response, latency: latency, holdLease: holdLease)
            // Requeued for a resend, or more queued: another instance or connection may be waiting.
            if let left, left > 0, holdLease == nil { store.wake(imei) }
        }
    }

    func giveBack(_ command: TakenCommand, imei: IMEI, unsent: Bool) {
        run { store in
            let keys = store.settings.keys
            let reply = store.side.eval(
                CommandKeys.releaseScript,
                keys: [keys.queue(imei.description), keys.command(imei.description, id: command.id), keys.lease(imei.description)],
                args: [store.leaseValue(command), unsent ? "1" : "0"]
            )
            if case .integer(let length) = reply, length > 0 { store.wake(imei) }
        }
    }

    // MARK: - On the store's thread

    private func run(_ body: @escaping @Sendable (RedisCommandStore) -> Void) {
        side.run { [self] _ in body(self) }
    }

    private func leaseValue(_ command: TakenCommand) -> String { "\(side.holder) \(command.id)" }

    private func takeNow(_ imei: IMEI) -> TakeResult {
        let keys = settings.keys
        let digits = imei.description
        guard
            let reply = side.eval(
                CommandKeys.takeScript,
                keys: [keys.queue(digits), keys.lease(digits)],
                args: [keys.commandPrefix(digits), side.holder, String(settings.leaseMs), String(wallClockMilliseconds())]
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
                metrics.outcome(.rejected).increment()
                record(rejected, imei: imei, outcome: .rejected)
                return takeNow(imei)
            }
            return .command(command)
        case "busy": return .busy(retryAfterMs: Int(string(1)) ?? 1000)
        default: return .empty
        }
    }

    /// Records how `command` ended, on the store's thread: the finish script, then its event. Returns the
    /// commands left in the device's queue; nil when Redis did not answer.
    @discardableResult
    private func record(
        _ command: TakenCommand,
        imei: IMEI,
        outcome: CommandOutcome,
        response: DeviceMessage? = nil,
        latency: TimeAmount? = nil,
        holdLease: TimeAmount? = nil
    ) -> Int64? {
        let digits = imei.description
        let latencyMs = latency.map { String($0.nanoseconds / 1_000_000) } ?? ""
        let text = response?.text ?? ""
        let hex = response.map { Hex.encode($0.payload) } ?? ""
        guard
            let reply = side.eval(
                CommandKeys.finishScript,
                keys: [settings.keys.queue(digits), settings.keys.command(digits, id: command.id), settings.keys.lease(digits)],
                args: [
                    leaseValue(command), command.id, outcome.rawValue, String(wallClockMilliseconds()), latencyMs, text, hex,
                    String((holdLease?.nanoseconds ?? 0) / 1_000_000), String(settings.retentionMs),
                ]
            )
        else { return nil }
        event(
            command.id,
            imei: imei,
            status: outcome.rawValue,
            attempt: command.attempt,
            latencyMs: latencyMs,
            response: text.isEmpty ? hex : text
        )
        if case .array(let values) = reply, values.count == 2, case .integer(let left) = values[1] { return left }
        return 0
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
        _ = side.call([
            "XADD", settings.eventsStream, "MAXLEN", "~", String(settings.eventsMaxLength), "*", "cmd_id", id, "imei", imei.description,
            "status", status, "attempt", String(attempt), "instance", side.instance, "latency_ms", latencyMs, "response", response,
        ])
    }

    private func wake(_ imei: IMEI) {
        _ = side.call(["XADD", notices, "MAXLEN", "~", "10000", "*", "imei", imei.description])
    }
}
