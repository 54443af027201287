/// Every metric the server exposes, and the label values they take (enums: a typo does not compile).
import CBuildInfo
import Codec8
import NIOConcurrencyHelpers
import Prometheus
import RedisWire

/// `codec` label of `teltonika_frames_total`.
enum FrameCodec: String, CaseIterable, Sendable {
    case codec8 = "8"
    case codec8Extended = "8E"
    case codec16 = "16"
    case codec12 = "12"
    case codec13 = "13"
    case codec14 = "14"
    case codec15 = "15"
    case unknown

    /// The codec of a frame's codec byte (offset 8), `unknown` when it is none the server knows.
    init(byte: UInt8?) {
        switch byte {
        case 0x08: self = .codec8
        case 0x8E: self = .codec8Extended
        case 0x10: self = .codec16
        case 0x0C: self = .codec12
        case 0x0D: self = .codec13
        case 0x0E: self = .codec14
        case 0x0F: self = .codec15
        default: self = .unknown
        }
    }

    init(_ codec: AVLCodec) {
        switch codec {
        case .codec8: self = .codec8
        case .codec8Extended: self = .codec8Extended
        case .codec16: self = .codec16
        }
    }

    init(_ codec: DeviceMessage.Codec) {
        switch codec {
        case .codec12: self = .codec12
        case .codec13: self = .codec13
        case .codec14: self = .codec14
        case .codec15: self = .codec15
        }
    }
}

/// `result` label of `teltonika_frames_total`.
enum FrameResult: String, CaseIterable, Sendable {
    case ok
    case crcFail = "crc_fail"
    case tooLarge = "too_large"
    case malformed
    case unknownCodec = "unknown_codec"

    /// The result a refused frame is counted under.
    init(_ error: Codec8Error) {
        switch error {
        case .crcMismatch: self = .crcFail
        case .tooLarge: self = .tooLarge
        case .unsupportedCodec: self = .unknownCodec
        default: self = .malformed
        }
    }
}

/// `result` label of `teltonika_connections_total`.
enum ConnectionResult: String, CaseIterable, Sendable { case accepted, refused }

/// `reason` label of `teltonika_connections_refused_total`: why a device connection was closed on accept.
enum RefusalReason: String, CaseIterable, Sendable {
    /// `MAX_CONNECTIONS` are open.
    case maxConnections = "max_connections"
    /// `MAX_CONNECTIONS_PER_IP` are open from the same address.
    case perAddress = "per_ip"
    /// The address used up `MAX_LOGIN_FAILURES_PER_IP` in the last minute.
    case loginFailures = "login_failures"
    /// The server drains.
    case draining
}

/// `result` label of `teltonika_handshake_total`.
enum HandshakeResult: String, CaseIterable, Sendable {
    case accepted, rejected, malformed, timeout
    /// A well-formed IMEI the device authority does not know (or no allowlist loaded yet).
    case unknownDevice = "unknown_device"
    /// On the TLS port with `TLS_CLIENT_CERT_IMEI`: an IMEI other than the one the client certificate names.
    case certificateMismatch = "certificate_mismatch"
}

/// `reason` label of `teltonika_disconnects_total`: why a device connection ended.
enum DisconnectReason: String, CaseIterable, Sendable {
    case peerClosed = "peer_closed"
    case handshakeTimeout = "handshake_timeout"
    case loginRejected = "login_rejected"
    case idleTimeout = "idle_timeout"
    case replaced
    case revoked
    case frameRejected = "frame_rejected"
    case frameTimeout = "frame_timeout"
    case bufferBudget = "buffer_budget"
    case publishFailed = "publish_failed"
    case overflow
    case drain
    case error
    case tlsHandshakeFailed = "tls_handshake_failed"
    /// `PROXY_PROTOCOL=optional`: a peer outside `PROXY_TRUSTED_CIDRS` sent a PROXY header.
    case proxyRefused = "proxy_refused"
}

/// `reason` label of `teltonika_accept_errors_total`.
enum AcceptError: String, CaseIterable, Sendable {
    case fdLimit = "fd_limit"
    case other
}

/// `kind` label of `teltonika_publish_failed_total`: what was given up.
enum PublishedThing: String, CaseIterable, Sendable { case packet, message, datagram }

/// `result` label of `teltonika_udp_datagrams_total`: what became of a datagram on the UDP port.
enum UDPResult: String, CaseIterable, Sendable {
    /// Stored in Redis, then ACKed.
    case acked
    /// A resend of a stored packet: ACKed again, not stored again.
    case reacked
    /// A resend while the first copy waited for Redis: answered by that copy's ACK.
    case joined
    /// Refused by the decoder (header, IMEI or AVL data): no ACK.
    case malformed
    /// An IMEI the device authority does not know: no ACK, nothing stored.
    case unknownDevice = "unknown_device"
    /// The publish queue was full: no ACK (the device resends).
    case overflow
    /// Redis did not confirm it in time: no ACK (the device resends).
    case notStored = "not_stored"
    /// Arrived while the server drained: no ACK (the device resends to the next instance).
    case draining
}

/// `version` label of `teltonika_tls_handshakes_total{result="ok"}`: what a completed handshake negotiated
/// (a failed one is `version="unknown"`).
enum TLSVersionLabel: String, CaseIterable, Sendable {
    case tls12 = "tls1.2"
    case tls13 = "tls1.3"
}

/// `result` label of `teltonika_tls_reloads_total`, `teltonika_allowlist_refreshes_total` and `teltonika_config_reloads_total`.
enum ReloadResult: String, CaseIterable, Sendable { case ok, failed }

/// A metric under its name with a unit, and for one release also under the name it had before (OPERATIONS.md,
/// "Deprecated metric names"): both always hold the same value.
struct Renamed<Metric: Sendable>: Sendable {
    let metric: Metric
    let deprecated: Metric
}

extension Renamed where Metric == Gauge {
    func set(_ value: Int64) {
        metric.set(value)
        deprecated.set(value)
    }
}

extension Renamed where Metric == ValueHistogram {
    func record(_ value: Int64) {
        metric.record(value)
        deprecated.record(value)
    }
}

/// `kind` label of `teltonika_redis_errors_total`: what failed, as the wire module reports it.
typealias RedisErrorKind = RedisConnection.Failure.Kind

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
    private let connectionsByResult: [ConnectionResult: Counter]
    private let refusalsByReason: [RefusalReason: Counter]
    private let handshakesByResult: [HandshakeResult: Counter]
    private let framesByCodecResult: [FrameCodec: [FrameResult: Counter]]
    let unknownCodec: Counter
    private let recordsByCodec: [FrameCodec: Counter]
    let recordsPublished: Counter
    let acks: Counter
    let keepAlives: Counter
    private let deviceMessagesByCodec: [FrameCodec: Counter]
    let deviceMessagesRateLimited: Counter
    let metricsConnectionsRefused: Counter
    let bytesReceived: Counter
    let publishQueueDepth: Renamed<Gauge>
    let publishQueueCapacity: Renamed<Gauge>
    let publishOldestAge: Gauge
    let publishOverflow: Counter
    let publishBatchSize: Renamed<ValueHistogram>
    let publishDuration: DurationHistogram
    let ackLatency: DurationHistogram
    let redisUp: Gauge
    private let redisErrorsByKind: [RedisErrorKind: Counter]
    let redisReconnects: Counter
    let redisPrimaryChanges: Counter
    let redisSentinelWatch: Gauge
    let devicesOnline: Gauge
    let redisMemoryUsed: Gauge
    let redisMaxMemory: Gauge
    /// `teltonika_stream_length`, `_maxlen` and `_group_lag` by their labels: stream role (`telemetry`,
    /// `responses`), shard (only with `REDIS_STREAM_SHARDS` > 1) and consumer group. Made for the streams the
    /// publisher watches when it is created (so they are scraped from the start), group lags as groups are seen.
    private let streamGauges = NIOLockedValueBox<[String: Gauge]>([:])
    static let streamRoles = ["telemetry", "responses"]
    private let disconnectsByReason: [DisconnectReason: Counter]
    private let acceptErrorsByReason: [AcceptError: Counter]
    private let publishFailedByKindReason: [PublishedThing: [PublishFailure: Counter]]
    let redisReplicasAcknowledged: Gauge
    let replicaWaitsShort: Counter
    let jobsHeldForReplicas: Counter
    private let redisDurabilityByMode: [String: Gauge]
    let connectionsReplaced: Counter
    let bufferedBytes: Gauge
    private let allowlistRefreshesByResult: [ReloadResult: Counter]
    private let configReloadsByResult: [ReloadResult: Counter]
    let allowlistSize: Gauge
    let allowlistLastSuccess: Gauge
    let bufferBudgetRefusals: Counter
    private let udpDatagramsByResult: [UDPResult: Counter]
    let udpWindowEntries: Gauge
    private let tlsHandshakesOKByVersion: [TLSVersionLabel: Counter]
    let tlsHandshakesFailed: Counter
    let tlsCertificateExpiry: Gauge
    private let tlsReloadsByResult: [ReloadResult: Counter]
    let tlsConnectionsActive: Gauge
    private let proxyHeadersByCommand: [ProxyCommandLabel: Counter]
    private let proxyRefusalsByReason: [ProxyRefusal: Counter]
    let ready: Gauge
    let buildInfo: Gauge
    /// Downlink commands.
    let commands: CommandMetrics
    /// Redis Cluster routing (`REDIS_MODE=cluster`).
    let cluster: ClusterMetrics

    /// Label values each labelled metric is created with.
    static let avlCodecs: [FrameCodec] = [.codec8, .codec8Extended, .codec16]
    static let messageCodecs: [FrameCodec] = [.codec12, .codec13, .codec14, .codec15]
    public static let redisDurabilityModes = RedisDurability.allCases.map(\.rawValue)

    /// Latency buckets (seconds): 0.25 ms to 30 s.
    static let latencyBuckets: [Duration] = [
        .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
        .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
    ]

    init() {
        let r = registry
        commands = CommandMetrics(registry: r)
        cluster = ClusterMetrics(registry: r)
        func d(_ name: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        }
        func labelled<Value: RawRepresentable<String> & Hashable>(
            _ name: String,
            _ label: String,
            _ values: [Value],
            _ help: String
        ) -> [Value: Counter] {
            Dictionary(uniqueKeysWithValues: values.map { ($0, r.makeCounter(descriptor: d(name, help), labels: [(label, $0.rawValue)])) })
        }
        /// One counter per pair of label values.
        func labelled<First: RawRepresentable<String> & Hashable, Second: RawRepresentable<String> & Hashable>(
            _ name: String,
            _ first: (label: String, values: [First]),
            _ second: (label: String, values: [Second]),
            _ help: String
        ) -> [First: [Second: Counter]] {
            var out: [First: [Second: Counter]] = [:]
            for a in first.values {
                for b in second.values {
                    let labels = [(first.label, a.rawValue), (second.label, b.rawValue)]
                    out[a, default: [:]][b] = r.makeCounter(descriptor: d(name, help), labels: labels)
                }
            }
            return out
        }
        func gauges(_ name: String, _ label: String, _ values: [String], _ help: String) -> [String: Gauge] {
            Dictionary(uniqueKeysWithValues: values.map { ($0, r.makeGauge(descriptor: d(name, help), labels: [(label, $0)])) })
        }
        connectionsActive = r.makeGauge(descriptor: d("teltonika_connections_active", "Device connections open now (TCP and TLS ports)."))
        connectionsByResult = labelled(
            "teltonika_connections_total",
            "result",
            ConnectionResult.allCases,
            "Device connections accepted, or refused at MAX_CONNECTIONS."
        )
        refusalsByReason = labelled(
            "teltonika_connections_refused_total",
            "reason",
            RefusalReason.allCases,
            "Device connections closed on accept, by reason: max_connections, per_ip (MAX_CONNECTIONS_PER_IP), login_failures (MAX_LOGIN_FAILURES_PER_IP), draining."
        )
        handshakesByResult = labelled(
            "teltonika_handshake_total",
            "result",
            HandshakeResult.allCases,
            "IMEI logins: accepted, rejected (bad digits), malformed (bad length), timeout (none in HANDSHAKE_TIMEOUT_MS), unknown_device (not on the allowlist), certificate_mismatch (not the IMEI of the TLS client certificate, TLS_CLIENT_CERT_IMEI)."
        )
        framesByCodecResult = labelled(
            "teltonika_frames_total",
            ("codec", FrameCodec.allCases),
            ("result", FrameResult.allCases),
            "Frames after login, by codec and result (ok, crc_fail, too_large, malformed, unknown_codec)."
        )
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
        publishQueueDepth = Renamed(
            metric: r.makeGauge(descriptor: d("teltonika_publish_queue_depth_records", "Records queued for Redis or in flight.")),
            deprecated: r.makeGauge(
                descriptor: d(
                    "teltonika_publish_queue_depth",
                    "Deprecated, kept for one release: the same value as teltonika_publish_queue_depth_records."
                )
            )
        )
        publishQueueCapacity = Renamed(
            metric: r.makeGauge(
                descriptor: d("teltonika_publish_queue_capacity_records", "Records the publish queue holds (PUBLISH_QUEUE_CAPACITY).")
            ),
            deprecated: r.makeGauge(
                descriptor: d(
                    "teltonika_publish_queue_capacity",
                    "Deprecated, kept for one release: the same value as teltonika_publish_queue_capacity_records."
                )
            )
        )
        publishOldestAge = r.makeGauge(
            descriptor: d(
                "teltonika_publish_oldest_age_seconds",
                "Age of the oldest packet or device message not yet confirmed by Redis (0: none waiting), updated each time the publisher wakes (at least every 5 s with the default settings)."
            )
        )
        publishOverflow = r.makeCounter(
            descriptor: d(
                "teltonika_publish_overflow_total",
                "Packets or device messages refused because the publish queue stayed full (no ACK, connection closed)."
            )
        )
        let batchBuckets: [Double] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 4096]
        publishBatchSize = Renamed(
            metric: r.makeValueHistogram(
                descriptor: d("teltonika_publish_batch_size_records", "Records per pipelined batch sent to Redis."),
                buckets: batchBuckets
            ),
            deprecated: r.makeValueHistogram(
                descriptor: d(
                    "teltonika_publish_batch_size",
                    "Deprecated, kept for one release: the same values as teltonika_publish_batch_size_records."
                ),
                buckets: batchBuckets
            )
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
            RedisErrorKind.allCases,
            "Redis failures by kind (connect, auth, tls, protocol, io, timeout, eof, reply, other)."
        )
        redisReconnects = r.makeCounter(
            descriptor: d("teltonika_redis_reconnects_total", "Redis connections re-established after a failure.")
        )
        redisMemoryUsed = r.makeGauge(
            descriptor: d("teltonika_redis_memory_used_bytes", "Redis' used_memory (INFO memory), read every REDIS_CHECK_INTERVAL_MS.")
        )
        redisMaxMemory = r.makeGauge(
            descriptor: d("teltonika_redis_maxmemory_bytes", "Redis' maxmemory (0: no limit), read every REDIS_CHECK_INTERVAL_MS.")
        )
        devicesOnline = r.makeGauge(
            descriptor: d("teltonika_devices_online", "Devices logged in now (distinct IMEIs with an open connection on this instance).")
        )
        disconnectsByReason = labelled(
            "teltonika_disconnects_total",
            "reason",
            DisconnectReason.allCases,
            "Device connections ended, by reason: peer_closed (the device), handshake_timeout, login_rejected, idle_timeout, replaced (a newer login), revoked (left the allowlist), frame_rejected, frame_timeout (FRAME_TIMEOUT_MS), buffer_budget (MAX_BUFFERED_BYTES), publish_failed, overflow, drain, error, tls_handshake_failed."
        )
        acceptErrorsByReason = labelled(
            "teltonika_accept_errors_total",
            "reason",
            AcceptError.allCases,
            "Device connections the listener could not accept: fd_limit (out of file descriptors: devices wait or time out; raise the limit), other."
        )
        publishFailedByKindReason = labelled(
            "teltonika_publish_failed_total",
            ("kind", PublishedThing.allCases),
            ("reason", PublishFailure.allCases),
            "Packets (no ACK, connection closed; the device resends), UDP datagrams (no ACK; the device resends) and device messages (lost) that Redis did not confirm in time (timeout: PUBLISH_TIMEOUT_MS; shutdown: the drain's deadline)."
        )
        redisPrimaryChanges = r.makeCounter(
            descriptor: d(
                "teltonika_redis_primary_changes_total",
                "Reconnects that landed on another Redis endpoint than before (a Sentinel failover, or REDIS_URL's name moving)."
            )
        )
        redisSentinelWatch = r.makeGauge(
            descriptor: d(
                "teltonika_redis_sentinel_watch",
                "1 while subscribed to +switch-master on a Sentinel (REDIS_SENTINELS only), else 0."
            )
        )
        redisReplicasAcknowledged = r.makeGauge(
            descriptor: d("teltonika_redis_replicas_acknowledged", "Replicas the last WAIT reported (REDIS_MIN_REPLICAS > 0 only).")
        )
        replicaWaitsShort = r.makeCounter(
            descriptor: d(
                "teltonika_redis_replica_waits_short_total",
                "WAITs that reported fewer than REDIS_MIN_REPLICAS replicas within REDIS_REPLICA_TIMEOUT_MS (their jobs are held, not ACKed)."
            )
        )
        jobsHeldForReplicas = r.makeCounter(
            descriptor: d(
                "teltonika_publish_jobs_held_for_replicas_total",
                "Packets and device messages written to the primary but held back (no ACK yet) because too few replicas confirmed them."
            )
        )
        redisDurabilityByMode = gauges(
            "teltonika_redis_durability",
            "mode",
            Self.redisDurabilityModes,
            "1 on the persistence mode Redis reported at the last check (aof_always, aof_everysec, aof_no, none, unknown), 0 on the others."
        )
        connectionsReplaced = r.makeCounter(
            descriptor: d("teltonika_connections_replaced_total", "Older connections closed because the same IMEI logged in again.")
        )
        allowlistRefreshesByResult = labelled(
            "teltonika_allowlist_refreshes_total",
            "result",
            ReloadResult.allCases,
            "Allowlist loads (DEVICE_AUTHORITY_MODE file or redis) by result; a failed one keeps the last good list."
        )
        configReloadsByResult = labelled(
            "teltonika_config_reloads_total",
            "result",
            ReloadResult.allCases,
            "SIGHUP re-reads of the settings by result (failed: the file was unreadable or invalid; nothing changed)."
        )
        allowlistSize = r.makeGauge(descriptor: d("teltonika_allowlist_size", "IMEIs on the allowlist in force (0 in allow_all)."))
        allowlistLastSuccess = r.makeGauge(
            descriptor: d(
                "teltonika_allowlist_last_success_timestamp_seconds",
                "When the allowlist was last loaded (UNIX seconds; 0: never, or allow_all)."
            )
        )
        bufferedBytes = r.makeGauge(
            descriptor: d(
                "teltonika_buffered_bytes",
                "Receive-buffer bytes device connections hold beyond their 2 KiB allowance each (bounded by MAX_BUFFERED_BYTES)."
            )
        )
        bufferBudgetRefusals = r.makeCounter(
            descriptor: d(
                "teltonika_buffer_budget_refusals_total",
                "Device connections closed because their receive buffer would take teltonika_buffered_bytes past MAX_BUFFERED_BYTES."
            )
        )
        udpDatagramsByResult = labelled(
            "teltonika_udp_datagrams_total",
            "result",
            UDPResult.allCases,
            "Datagrams on UDP_PORT by result: acked (stored, then ACKed), reacked (a resend of a stored packet: ACKed again, not stored again), joined (a resend while the first copy waited for Redis), malformed, overflow (queue full), not_stored (Redis did not confirm), draining. Only acked and reacked get an ACK."
        )
        udpWindowEntries = r.makeGauge(
            descriptor: d(
                "teltonika_udp_window_entries",
                "AVL packets the UDP retransmit window remembers (bounded by UDP_WINDOW_ENTRIES, forgotten UDP_WINDOW_TTL_MS after they were stored)."
            )
        )
        let handshakesHelp =
            "TLS handshakes on TLS_PORT: ok (by negotiated version), failed (version unknown: refused, bad or no client certificate, closed or timed out before completing)."
        tlsHandshakesOKByVersion = Dictionary(
            uniqueKeysWithValues: TLSVersionLabel.allCases.map {
                (
                    $0,
                    r.makeCounter(
                        descriptor: d("teltonika_tls_handshakes_total", handshakesHelp),
                        labels: [("result", "ok"), ("version", $0.rawValue)]
                    )
                )
            }
        )
        tlsHandshakesFailed = r.makeCounter(
            descriptor: d("teltonika_tls_handshakes_total", handshakesHelp),
            labels: [("result", "failed"), ("version", "unknown")]
        )
        tlsCertificateExpiry = r.makeGauge(
            descriptor: d(
                "teltonika_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the certificate TLS_PORT serves (UNIX seconds), updated on reload; 0 without TLS_PORT."
            )
        )
        tlsReloadsByResult = labelled(
            "teltonika_tls_reloads_total",
            "result",
            ReloadResult.allCases,
            "SIGHUP reloads of TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE: ok, failed (the previous certificate stays)."
        )
        tlsConnectionsActive = r.makeGauge(
            descriptor: d(
                "teltonika_tls_connections_active",
                "Device connections open now on TLS_PORT (counted in teltonika_connections_active too)."
            )
        )
        proxyHeadersByCommand = labelled(
            "teltonika_proxy_headers_total",
            "command",
            ProxyCommandLabel.allCases,
            "PROXY v2 headers accepted from PROXY_TRUSTED_CIDRS: proxy (the device's address is used), local (the load balancer's own connection, e.g. a health check)."
        )
        proxyRefusalsByReason = labelled(
            "teltonika_proxy_header_refusals_total",
            "reason",
            ProxyRefusal.allCases,
            "Device connections closed at their PROXY v2 header: untrusted (a header, or with PROXY_PROTOCOL=v2 any connection, from outside PROXY_TRUSTED_CIDRS), missing (v2: no header), malformed, too_large, truncated (closed inside it), timeout (not complete within HANDSHAKE_TIMEOUT_MS)."
        )
        ready = r.makeGauge(descriptor: d("teltonika_ready", "1 when /readyz answers 200 (listening, Redis up, not draining), else 0."))
        buildInfo = r.makeGauge(
            descriptor: d("teltonika_build_info", "Always 1; the labels name the running build."),
            labels: [("version", Self.version), ("revision", Self.revision)]
        )
        buildInfo.set(Int64(1))
        setRedisDurability(.unknown)
    }

    // Every table is built from its enum's allCases in init, so these lookups cannot miss.
    func connections(result: ConnectionResult) -> Counter { connectionsByResult[result]! }
    func handshakes(result: HandshakeResult) -> Counter { handshakesByResult[result]! }
    func refusals(_ reason: RefusalReason) -> Counter { refusalsByReason[reason]! }
    func allowlistRefreshes(_ result: ReloadResult) -> Counter { allowlistRefreshesByResult[result]! }
    func configReloads(_ result: ReloadResult) -> Counter { configReloadsByResult[result]! }
    func frames(codec: FrameCodec, result: FrameResult) -> Counter { framesByCodecResult[codec]![result]! }
    func records(codec: AVLCodec) -> Counter { recordsByCodec[FrameCodec(codec)]! }
    func deviceMessages(codec: DeviceMessage.Codec) -> Counter { deviceMessagesByCodec[FrameCodec(codec)]! }
    func redisErrors(kind: RedisErrorKind) -> Counter { redisErrorsByKind[kind]! }
    func acceptErrors(_ reason: AcceptError) -> Counter { acceptErrorsByReason[reason]! }
    /// Entries in the stream key (`XLEN`).
    func streamLength(_ stream: WatchedStream) -> Gauge {
        streamGauge("teltonika_stream_length", "Entries in the Redis stream (XLEN), read every REDIS_CHECK_INTERVAL_MS.", stream)
    }
    func streamMaxLength(_ stream: WatchedStream) -> Gauge {
        streamGauge(
            "teltonika_stream_maxlen",
            "The stream's MAXLEN ~ cap (REDIS_STREAM_MAXLEN, REDIS_RESPONSES_MAXLEN; with REDIS_STREAM_SHARDS, each shard's share).",
            stream
        )
    }
    /// Entries of the stream not yet delivered to `group` (`XINFO GROUPS` lag).
    func streamGroupLag(_ stream: WatchedStream, group: String) -> Gauge {
        streamGauge(
            "teltonika_stream_group_lag",
            "Entries of the stream not yet delivered to the consumer group (XINFO GROUPS lag), read every 60 s; near teltonika_stream_maxlen, unread entries are about to be trimmed.",
            stream,
            group: group
        )
    }

    /// The gauge `name` of `stream` (labels `stream`, then `shard` when sharded, then `group` if given).
    private func streamGauge(_ name: String, _ help: String, _ stream: WatchedStream, group: String? = nil) -> Gauge {
        var labels = [("stream", stream.role)]
        if let shard = stream.shard { labels.append(("shard", String(shard))) }
        if let group { labels.append(("group", group)) }
        let key = ([name] + labels.map { $0.0 + "=" + $0.1 }).joined(separator: "\u{0}")
        return streamGauges.withLockedValue { gauges in
            if let gauge = gauges[key] { return gauge }
            let gauge = registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
            gauges[key] = gauge
            return gauge
        }
    }
    func disconnects(_ reason: DisconnectReason) -> Counter { disconnectsByReason[reason]! }
    func udpDatagrams(_ result: UDPResult) -> Counter { udpDatagramsByResult[result]! }
    func tlsHandshakesOK(_ version: TLSVersionLabel) -> Counter { tlsHandshakesOKByVersion[version]! }
    func tlsReloads(_ result: ReloadResult) -> Counter { tlsReloadsByResult[result]! }
    func proxyHeaders(_ command: ProxyCommandLabel) -> Counter { proxyHeadersByCommand[command]! }
    func proxyRefusals(_ reason: ProxyRefusal) -> Counter { proxyRefusalsByReason[reason]! }
    func publishFailed(_ thing: PublishedThing, reason: PublishFailure) -> Counter { publishFailedByKindReason[thing]![reason]! }
    func setRedisDurability(_ mode: RedisDurability) {
        for (name, gauge) in redisDurabilityByMode { gauge.set(Int64(name == mode.rawValue ? 1 : 0)) }
    }
}
