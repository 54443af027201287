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

    // MARK: Process
    /// Metrics and health listener (`/metrics`, `/healthz`, `/readyz`).
    public var metricsHost = "0.0.0.0"
    public var metricsPort = 9090
    /// Bound of the whole graceful drain after SIGTERM/SIGINT.
    public var shutdownTimeoutMs = 30_000
    /// File of `KEY=value` lines read at start and on SIGHUP (empty: none).
    public var configFile = ""

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
        string("METRICS_HOST", "metrics-host", "Address of the metrics and health listener.") { $0.metricsHost = $1 },
        int("METRICS_PORT", "metrics-port", "Port of /metrics, /healthz, /readyz (0: any free port, logged at start).", 0...65535) {
            $0.metricsPort = $1
        },
        int("SHUTDOWN_TIMEOUT_MS", "shutdown-timeout-ms", "Bound of the graceful drain; past it, exit 1.", 100...3_600_000) {
            $0.shutdownTimeoutMs = $1
        },
        string("CONFIG_FILE", "config-file", "File of KEY=value settings, read at start and re-read on SIGHUP.") { $0.configFile = $1 },
    ]

    /// The settings SIGHUP applies without a restart.
    public static let reloadable: Set<String> = ["LOG_LEVEL"]

    /// Builds the configuration: defaults, then the settings file, then the environment, then flags
    /// (the later wins). `flags` maps a flag name (without dashes) to its value; `file` holds the
    /// parsed `CONFIG_FILE` (see ``parseFile(_:)``).
    public static func load(
        environment: [String: String],
        flags: [String: String],
        file: [String: String] = [:]
    ) throws(ConfigurationError) -> IngestConfiguration {
        var c = IngestConfiguration()
        for s in settings {
            if let v = flags[s.flag] ?? environment[s.env] ?? file[s.env] { try s.apply(&c, v) }
        }
        return c
    }

    /// The path of the settings file named by the flag or the environment, if any.
    public static func configFilePath(environment: [String: String], flags: [String: String]) -> String? {
        guard let path = flags["config-file"] ?? environment["CONFIG_FILE"], !path.isEmpty else { return nil }
        return path
    }

    /// Parses a settings file: `KEY=value` lines with the environment variable names, `#` comments,
    /// blank lines; an optional `export ` prefix and one pair of surrounding quotes are dropped.
    public static func parseFile(_ text: String) throws(ConfigurationError) -> [String: String] {
        let known = Set(settings.map(\.env)).subtracting(["CONFIG_FILE"])
        var values: [String: String] = [:]
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = raw.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("export ") { line = String(line.dropFirst(7)).trimmingWhitespace() }
            guard let eq = line.firstIndex(of: "=") else {
                throw ConfigurationError(key: "CONFIG_FILE", message: "line \(number + 1): expected KEY=value")
            }
            let key = String(line[..<eq]).trimmingWhitespace()
            var value = String(line[line.index(after: eq)...]).trimmingWhitespace()
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
            }
            guard known.contains(key) else {
                throw ConfigurationError(key: "CONFIG_FILE", message: "line \(number + 1): unknown setting '\(key)'")
            }
            values[key] = value
        }
        return values
    }

    /// Environment names of the settings whose values differ between `self` and `other`.
    public func changedSettings(comparedTo other: IngestConfiguration) -> [String] {
        IngestConfiguration.settings.map(\.env).filter { value(of: $0) != other.value(of: $0) }
    }

    /// A setting's value as text (for comparisons and logs; the Redis password is not shown).
    func value(of env: String) -> String {
        switch env {
        case "TELTONIKA_HOST": host
        case "TELTONIKA_PORT": "\(port)"
        case "HANDSHAKE_TIMEOUT_MS": "\(handshakeTimeoutMs)"
        case "IDLE_TIMEOUT_MS": "\(idleTimeoutMs)"
        case "MAX_FRAME_BYTES": "\(maxFrameBytes)"
        case "MAX_CONNECTIONS": "\(maxConnections)"
        case "REDIS_URL": "\(redisURL)"
        case "REDIS_TELEMETRY_STREAM": telemetryStream
        case "REDIS_RESPONSES_STREAM": responsesStream
        case "REDIS_STREAM_MAXLEN": "\(streamMaxLength)"
        case "PUBLISH_QUEUE_CAPACITY": "\(publishQueueCapacity)"
        case "PUBLISH_TIMEOUT_MS": "\(publishTimeoutMs)"
        case "OVERFLOW_WAIT_MS": "\(overflowWaitMs)"
        case "REDIS_TIMEOUT_MS": "\(redisTimeoutMs)"
        case "LOG_LEVEL": logLevel
        case "LOG_FORMAT": logFormat
        case "INSTANCE_ID": instanceID
        case "METRICS_HOST": metricsHost
        case "METRICS_PORT": "\(metricsPort)"
        case "SHUTDOWN_TIMEOUT_MS": "\(shutdownTimeoutMs)"
        case "CONFIG_FILE": configFile
        default: preconditionFailure("unknown setting \(env)")
        }
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

extension StringProtocol {
    fileprivate func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let start = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let end = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(String.UnicodeScalarView(scalars[start...end]))
    }
}
