import Codec8

/// Every setting of `teltonika-ingest serve`, typed and validated. Read once at start
/// (``IngestConfiguration/load(environment:flags:)``); nothing else reads the environment.
/// OPERATIONS.md ("Configuration") is the operator's copy of ``IngestConfiguration/settings``.
public struct IngestConfiguration: Sendable, Equatable {
    // MARK: Device listener
    public var host = "0.0.0.0"
    public var port = 5027
    /// Close a connection that has not logged in after this long.
    public var handshakeTimeoutMs = 10_000
    /// Close a connection that sent nothing for this long.
    public var idleTimeoutMs = 600_000
    /// Largest accepted data-field length (bytes); a connection buffers at most this plus 12.
    public var maxFrameBytes = TeltonikaFramer.defaultMaxDataLength
    /// Connections beyond this are closed on accept.
    public var maxConnections = 10_000

    // MARK: Publisher
    public var redisURL: RedisURL = RedisURL(endpoint: .tcp(host: "127.0.0.1", port: 6379))
    public var telemetryStream = "telemetry:teltonika"
    public var responsesStream = "telemetry:teltonika:responses"
    public var streamMaxLength = 1_000_000
    /// Records the publish queue may hold.
    public var publishQueueCapacity = 100_000
    /// How long a packet may wait for Redis before its connection is closed without ACK.
    public var publishTimeoutMs = 20_000
    /// How long a packet waits for room in a full queue before its connection is closed without ACK.
    public var overflowWaitMs = 1_000
    /// Connect and reply timeout of the Redis connection.
    public var redisTimeoutMs = 5_000

    // MARK: Logs
    public var logLevel = "info"
    public var logFormat = "json"
    public var instanceID = ""

    public init() {}

    /// One setting: its environment variable, flag, default and meaning.
    public struct Setting: Sendable {
        public let env: String
        public let flag: String
        public let help: String
        let apply: @Sendable (inout IngestConfiguration, String) throws(ConfigurationError) -> Void
    }

    /// Every setting, in the order OPERATIONS.md lists them.
    public static let settings: [Setting] = [
        string("TELTONIKA_HOST", "host", "Address the device listener binds.") { $0.host = $1 },
        int("TELTONIKA_PORT", "port", "Device TCP port (0: any free port, logged at start).", 0...65535) { $0.port = $1 },
        int("HANDSHAKE_TIMEOUT_MS", "handshake-timeout-ms", "Close connections that do not log in within this time.", 100...600_000) {
            $0.handshakeTimeoutMs = $1
        },
        int("IDLE_TIMEOUT_MS", "idle-timeout-ms", "Close connections silent for this long.", 1000...86_400_000) { $0.idleTimeoutMs = $1 },
        int("MAX_FRAME_BYTES", "max-frame-bytes", "Largest accepted data-field length.", 64...16_777_216) { $0.maxFrameBytes = $1 },
        int("MAX_CONNECTIONS", "max-connections", "Device connections beyond this are refused.", 1...1_000_000) { $0.maxConnections = $1 },
        Setting(env: "REDIS_URL", flag: "redis-url", help: "redis://[user:password@]host:port[/db] or unix:///path[?db=N].") {
            (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in c.redisURL = try RedisURL(parsing: v)
        },
        string("REDIS_TELEMETRY_STREAM", "telemetry-stream", "Stream that receives one entry per record.") { $0.telemetryStream = $1 },
        string("REDIS_RESPONSES_STREAM", "responses-stream", "Stream that receives Codec 12-15 frames from devices.") {
            $0.responsesStream = $1
        },
        int("REDIS_STREAM_MAXLEN", "stream-maxlen", "Approximate cap of each stream (XADD MAXLEN ~).", 1...Int(Int32.max)) {
            $0.streamMaxLength = $1
        },
        int("PUBLISH_QUEUE_CAPACITY", "publish-queue-capacity", "Records the publish queue holds.", 255...100_000_000) {
            $0.publishQueueCapacity = $1
        },
        int(
            "PUBLISH_TIMEOUT_MS",
            "publish-timeout-ms",
            "A packet unconfirmed by Redis this long closes its connection, no ACK.",
            100...600_000
        ) {
            $0.publishTimeoutMs = $1
        },
        int("OVERFLOW_WAIT_MS", "overflow-wait-ms", "Wait for room in a full queue before closing without ACK.", 0...60_000) {
            $0.overflowWaitMs = $1
        },
        int("REDIS_TIMEOUT_MS", "redis-timeout-ms", "Redis connect and reply timeout.", 50...60_000) { $0.redisTimeoutMs = $1 },
        Setting(env: "LOG_LEVEL", flag: "log-level", help: "trace, debug, info, notice, warning, error, critical.") {
            (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
            guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(v) else {
                throw ConfigurationError(key: "LOG_LEVEL", message: "unknown level '\(v)'")
            }
            c.logLevel = v
        },
        Setting(env: "LOG_FORMAT", flag: "log-format", help: "json (one object per line) or text.") {
            (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
            guard v == "json" || v == "text" else {
                throw ConfigurationError(key: "LOG_FORMAT", message: "expected json or text, got '\(v)'")
            }
            c.logFormat = v
        },
        string("INSTANCE_ID", "instance-id", "Name of this instance in logs (default: host name).") { $0.instanceID = $1 },
    ]

    /// Builds the configuration: defaults, then the environment, then flags (a flag wins).
    /// `flags` maps a flag name (without dashes) to its value.
    public static func load(environment: [String: String], flags: [String: String]) throws(ConfigurationError) -> IngestConfiguration {
        var c = IngestConfiguration()
        for s in settings {
            if let v = flags[s.flag] ?? environment[s.env] { try s.apply(&c, v) }
        }
        return c
    }

    private static func string(
        _ env: String,
        _ flag: String,
        _ help: String,
        _ set: @escaping @Sendable (inout IngestConfiguration, String) -> Void
    ) -> Setting {
        Setting(env: env, flag: flag, help: help) { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
            guard !v.isEmpty else { throw ConfigurationError(key: env, message: "must not be empty") }
            set(&c, v)
        }
    }

    private static func int(
        _ env: String,
        _ flag: String,
        _ help: String,
        _ range: ClosedRange<Int>,
        _ set: @escaping @Sendable (inout IngestConfiguration, Int) -> Void
    ) -> Setting {
        Setting(env: env, flag: flag, help: help) { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
            guard let n = Int(v.replacingUnderscores()), range.contains(n) else {
                throw ConfigurationError(
                    key: env,
                    message: "expected a whole number in \(range.lowerBound)...\(range.upperBound), got '\(v)'"
                )
            }
            set(&c, n)
        }
    }
}

extension String {
    fileprivate func replacingUnderscores() -> String { String(filter { $0 != "_" }) }
}
