import CoreMetrics

/// Every metric the server records, in one place. Names keep the `teltonika_` prefix of the service
/// this replaces; OPERATIONS.md ("Metrics") has the table for on-call. Recorded through swift-metrics:
/// the exposition backend (Prometheus) is bootstrapped by the process.
enum IngestMetrics {
    static let connectionsActive = Meter(label: "teltonika_connections_active")
    static func connections(result: String) -> Counter { Counter(label: "teltonika_connections_total", dimensions: [("result", result)]) }
    static func handshakes(result: String) -> Counter { Counter(label: "teltonika_handshake_total", dimensions: [("result", result)]) }
    static func frames(codec: String, result: String) -> Counter {
        Counter(label: "teltonika_frames_total", dimensions: [("codec", codec), ("result", result)])
    }
    static let unknownCodec = Counter(label: "teltonika_unknown_codec_total")
    static func records(codec: String) -> Counter { Counter(label: "teltonika_records_total", dimensions: [("codec", codec)]) }
    static let recordsPublished = Counter(label: "teltonika_records_published_total")
    static let acks = Counter(label: "teltonika_acks_total")
    static let keepAlives = Counter(label: "teltonika_keepalive_total")
    static func deviceMessages(codec: String) -> Counter {
        Counter(label: "teltonika_device_messages_total", dimensions: [("codec", codec)])
    }
    static let bytesReceived = Counter(label: "teltonika_bytes_received_total")
    static let publishQueueDepth = Gauge(label: "teltonika_publish_queue_depth")
    static let publishQueueCapacity = Gauge(label: "teltonika_publish_queue_capacity")
    static let publishOverflow = Counter(label: "teltonika_publish_overflow_total")
    static let publishBatchSize = Recorder(label: "teltonika_publish_batch_size", aggregate: true)
    static let publishDuration = Timer(label: "teltonika_publish_duration_seconds")
    static let ackLatency = Timer(label: "teltonika_ack_latency_seconds")
    static let redisUp = Gauge(label: "teltonika_redis_up")
    static func redisErrors(kind: String) -> Counter { Counter(label: "teltonika_redis_errors_total", dimensions: [("kind", kind)]) }
    static let redisReconnects = Counter(label: "teltonika_redis_reconnects_total")
    static let connectionsReplaced = Counter(label: "teltonika_connections_replaced_total")
}
