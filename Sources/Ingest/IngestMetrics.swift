import CBuildInfo
import Prometheus

/// Every metric the server exposes, defined once, with its help text, in one Prometheus registry.
///
/// Names keep the `teltonika_` prefix of the service this replaces, so its alert expressions keep
/// working; OPERATIONS.md ("Metrics") is the on-call copy of this list. Every labelled series is
/// created here up front, so it is scraped as 0 before its first event (rates and alerts need that)
/// and the hot path never registers anything: a lookup, then an atomic add.
///
/// The metrics are made on the registry directly rather than through the swift-metrics facade,
/// because facade-made metrics carry no HELP text (promtool rejects them). The process still
/// bootstraps the facade onto the same registry, for libraries that record through it.
public final class IngestMetrics: Sendable {
    /// The process-wide instance (the server's code records here; `/metrics` emits it).
    public static let shared = IngestMetrics()

    public static let version = "0.4.0"
    public static var revision: String { String(cString: teltonika_build_revision()) }

    public let registry = PrometheusCollectorRegistry()

    let connectionsActive: Gauge
    private let connectionsByResult: [String: Counter]
    private let handshakesByResult: [String: Counter]
    private let framesByCodecResult: [String: Counter]
    let unknownCodec: Counter
    private let recordsByCodec: [String: Counter]
    let recordsPublished: Counter
    let acks: Counter
    let keepAlives: Counter
    private let deviceMessagesByCodec: [String: Counter]
    let deviceMessagesRateLimited: Counter
    let metricsConnectionsRefused: Counter
    let bytesReceived: Counter
    let publishQueueDepth: Gauge
    let publishQueueCapacity: Gauge
    let publishOverflow: Counter
    let publishBatchSize: ValueHistogram
    let publishDuration: DurationHistogram
    let ackLatency: DurationHistogram
    let redisUp: Gauge
    private let redisErrorsByKind: [String: Counter]
    let redisReconnects: Counter
    private let redisDurabilityByMode: [String: Gauge]
    let connectionsReplaced: Counter
    let ready: Gauge
    let buildInfo: Gauge

    /// Label values each labelled metric is created with.
    public static let avlCodecs = ["8", "8E", "16"]
    public static let messageCodecs = ["12", "13", "14", "15"]
    public static let frameCodecs = avlCodecs + messageCodecs + ["unknown"]
    public static let frameResults = ["ok", "crc_fail", "too_large", "malformed", "unknown_codec"]
    public static let connectionResults = ["accepted", "refused"]
    public static let handshakeResults = ["accepted", "rejected", "malformed", "timeout"]
    public static let redisErrorKinds = ["connect", "auth", "protocol", "io", "timeout", "eof", "reply", "other"]
    public static let redisDurabilityModes = RedisDurability.allCases.map(\.rawValue)

    /// Latency buckets (seconds): 0.25 ms to 30 s.
    static let latencyBuckets: [Duration] = [
        .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
        .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
    ]

    init() {
        let r = registry
        func d(_ name: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        }
        func labelled(_ name: String, _ label: String, _ values: [String], _ help: String) -> [String: Counter] {
            Dictionary(uniqueKeysWithValues: values.map { ($0, r.makeCounter(descriptor: d(name, help), labels: [(label, $0)])) })
        }
        connectionsActive = r.makeGauge(descriptor: d("teltonika_connections_active", "Device TCP connections open now."))
        connectionsByResult = labelled(
            "teltonika_connections_total",
            "result",
            Self.connectionResults,
            "Device connections accepted, or refused at MAX_CONNECTIONS."
        )
        handshakesByResult = labelled(
            "teltonika_handshake_total",
            "result",
            Self.handshakeResults,
            "IMEI logins: accepted, rejected (bad digits), malformed (bad length), timeout (none in HANDSHAKE_TIMEOUT_MS)."
        )
        var frames: [String: Counter] = [:]
        for codec in Self.frameCodecs {
            for result in Self.frameResults {
                frames[codec + "/" + result] = r.makeCounter(
                    descriptor: d(
                        "teltonika_frames_total",
                        "Frames after login, by codec and result (ok, crc_fail, too_large, malformed, unknown_codec)."
                    ),
                    labels: [("codec", codec), ("result", result)]
                )
            }
        }
        framesByCodecResult = frames
        unknownCodec = r.makeCounter(descriptor: d("teltonika_unknown_codec_total", "Frames with a codec id the server does not know."))
        recordsByCodec = labelled("teltonika_records_total", "codec", Self.avlCodecs, "AVL records decoded from valid packets.")
        recordsPublished = r.makeCounter(descriptor: d("teltonika_records_published_total", "Records Redis confirmed (XADD answered)."))
        acks = r.makeCounter(descriptor: d("teltonika_acks_total", "ACKs written to devices (one per AVL packet)."))
        keepAlives = r.makeCounter(descriptor: d("teltonika_keepalive_total", "Keep-alive bytes (0xFF) received."))
        deviceMessagesByCodec = labelled(
            "teltonika_device_messages_total",
            "codec",
            Self.messageCodecs,
            "Codec 12-15 frames from devices (published to the responses stream, never ACKed)."
        )
        deviceMessagesRateLimited = r.makeCounter(
            descriptor: d(
                "teltonika_device_messages_rate_limited_total",
                "Device messages dropped (not stored) because their connection went over DEVICE_MESSAGE_RATE/DEVICE_MESSAGE_BURST."
            )
        )
        metricsConnectionsRefused = r.makeCounter(
            descriptor: d(
                "teltonika_metrics_connections_refused_total",
                "Connections to the metrics port closed at once because METRICS_MAX_CONNECTIONS were open."
            )
        )
        bytesReceived = r.makeCounter(descriptor: d("teltonika_bytes_received_total", "Bytes read from device connections."))
        publishQueueDepth = r.makeGauge(descriptor: d("teltonika_publish_queue_depth", "Records queued for Redis or in flight."))
        publishQueueCapacity = r.makeGauge(
            descriptor: d("teltonika_publish_queue_capacity", "Records the publish queue holds (PUBLISH_QUEUE_CAPACITY).")
        )
        publishOverflow = r.makeCounter(
            descriptor: d(
                "teltonika_publish_overflow_total",
                "Packets or device messages refused because the publish queue stayed full (no ACK, connection closed)."
            )
        )
        publishBatchSize = r.makeValueHistogram(
            descriptor: d("teltonika_publish_batch_size", "Records per pipelined batch sent to Redis."),
            buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 4096]
        )
        publishDuration = r.makeDurationHistogram(
            descriptor: d("teltonika_publish_duration_seconds", "Time from a packet's enqueue to Redis confirming all its records."),
            buckets: Self.latencyBuckets
        )
        ackLatency = r.makeDurationHistogram(
            descriptor: d("teltonika_ack_latency_seconds", "Time from a packet's last byte received to its ACK written."),
            buckets: Self.latencyBuckets
        )
        redisUp = r.makeGauge(descriptor: d("teltonika_redis_up", "1 when the last Redis command or health check succeeded, else 0."))
        redisErrorsByKind = labelled(
            "teltonika_redis_errors_total",
            "kind",
            Self.redisErrorKinds,
            "Redis failures by kind (connect, auth, protocol, io, timeout, eof, reply, other)."
        )
        redisReconnects = r.makeCounter(
            descriptor: d("teltonika_redis_reconnects_total", "Redis connections re-established after a failure.")
        )
        redisDurabilityByMode = Dictionary(
            uniqueKeysWithValues: Self.redisDurabilityModes.map {
                (
                    $0,
                    r.makeGauge(
                        descriptor: d(
                            "teltonika_redis_durability",
                            "1 on the persistence mode Redis reported at the last check (aof_always, aof_everysec, aof_no, none, unknown), 0 on the others."
                        ),
                        labels: [("mode", $0)]
                    )
                )
            }
        )
        connectionsReplaced = r.makeCounter(
            descriptor: d("teltonika_connections_replaced_total", "Older connections closed because the same IMEI logged in again.")
        )
        ready = r.makeGauge(descriptor: d("teltonika_ready", "1 when /readyz answers 200 (listening, Redis up, not draining), else 0."))
        buildInfo = r.makeGauge(
            descriptor: d("teltonika_build_info", "Always 1; the labels name the running build."),
            labels: [("version", Self.version), ("revision", Self.revision)]
        )
        buildInfo.set(Int64(1))
        setRedisDurability(.unknown)
    }

    func connections(result: String) -> Counter { connectionsByResult[result]! }
    func handshakes(result: String) -> Counter { handshakesByResult[result]! }
    /// `codec`: a name from ``frameCodecs`` (anything else counts as `unknown`).
    func frames(codec: String, result: String) -> Counter {
        framesByCodecResult[codec + "/" + result] ?? framesByCodecResult["unknown/" + result]!
    }
    func records(codec: String) -> Counter { recordsByCodec[codec]! }
    func deviceMessages(codec: String) -> Counter { deviceMessagesByCodec[codec]! }
    func redisErrors(kind: String) -> Counter { redisErrorsByKind[kind] ?? redisErrorsByKind["other"]! }
    func setRedisDurability(_ mode: RedisDurability) {
        for (name, gauge) in redisDurabilityByMode { gauge.set(Int64(name == mode.rawValue ? 1 : 0)) }
    }
}
