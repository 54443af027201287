/// Every setting of `serve`: its env var, flag, default, range and parser, in one table.
import Codec8
import RedisWire

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
    /// Close a connection whose packet frame is not complete this long after its first byte.
    public var frameTimeoutMs = 60_000
    /// Largest accepted data-field length (bytes); a connection buffers at most this plus 12.
    public var maxFrameBytes = TeltonikaFramer.defaultMaxDataLength
    /// Connections beyond this are closed on accept.
    public var maxConnections = 10_000
    /// Connections from one source address beyond this are closed on accept.
    public var maxConnectionsPerIP = 1_000
    /// Failed logins per minute one source address may cause before it is refused on accept (0: no limit).
    public var maxLoginFailuresPerIP = 60
    /// Receive-buffer bytes all device connections may hold beyond 2 KiB each.
    public var maxBufferedBytes = 64 * 1024 * 1024
    /// Threads serving device connections (0: one per core).
    public var eventLoopThreads = 0

    // MARK: Device authority
    public var deviceAuthorityMode = DeviceAuthorityMode.allowAll
    /// The allowlist file (`DEVICE_AUTHORITY_MODE=file`).
    public var deviceAllowlistFile: String? = nil
    /// The Redis set of allowed IMEIs (`DEVICE_AUTHORITY_MODE=redis`).
    public var redisDeviceAllowlistKey = "teltonika:allowlist"
    /// How often the allowlist is loaded again.
    public var deviceAllowlistRefreshMs = 60_000

    // MARK: UDP listener
    /// The UDP port for AVL datagrams (nil: no UDP listener; 0: any free port, logged at start).
    public var udpPort: Int? = nil
    /// Address the UDP listener binds (nil: `host`).
    public var udpHost: String? = nil
    /// AVL packets the retransmit window remembers at most.
    public var udpWindowEntries = 100_000
    /// How long a stored UDP packet is remembered, so its resend is ACKed without being stored again.
    public var udpWindowTTLMs = 600_000
    /// The UDP socket's kernel receive buffer (SO_RCVBUF), asked for; the kernel caps it at net.core.rmem_max.
    public var udpReceiveBufferBytes = 4 * 1024 * 1024

    // MARK: TLS listener
    /// The TLS port for devices, its certificate, key, client CA and minimum version (port nil: no TLS listener).
    public var deviceTLS = DeviceTLSOptions()

    // MARK: PROXY protocol (load balancers)
    /// Whether the device ports read a PROXY v2 header before the login (`off`, `v2`, `optional`).
    public var proxyProtocol = ProxyProtocolMode.off
    /// The load balancers allowed to send one.
    public var proxyTrustedCIDRs: [CIDR] = []

    // MARK: Publisher
    public var redisURL: RedisURL = RedisURL(endpoint: .tcp(host: "127.0.0.1", port: 6379))
    public var telemetryStream = "telemetry:teltonika"
    public var responsesStream = "telemetry:teltonika:responses"
    public var streamMaxLength = 1_000_000
    /// Cap of the responses stream (device messages): sized for command answers, not telemetry.
    public var responsesMaxLength = 10_000
    /// Keys each stream is split into, by device (1: the stream's own name; N: `<stream>:{0}` ... `{N-1}`).
    public var streamShards = 1
    /// Device messages (Codec 12-15) one connection may have stored per second, and at once.
    public var deviceMessageRate = 10
    public var deviceMessageBurst = 50
    /// Records the publish queue may hold.
    public var publishQueueCapacity = 100_000
    /// How long a packet may wait for Redis before its connection is closed without ACK.
    public var publishTimeoutMs = 20_000
    /// How long a packet waits for room in a full queue before its connection is closed without ACK.
    public var overflowWaitMs = 1_000
    /// Connect and reply timeout of the Redis connection.
    public var redisTimeoutMs = 5_000
    /// Replicas that must confirm a packet's records (`WAIT`) before its ACK (0: the primary's word).
    public var redisMinReplicas = 0
    /// How long `WAIT` may block for them.
    public var redisReplicaTimeoutMs = 1_000
    /// 1: `WAITAOF` (Redis 7.2+): the primary's AOF must have fsynced a packet's records before its ACK.
    public var redisMinLocalFsync = 0
    /// How often Redis' persistence settings and the streams' length and consumer lag are read.
    public var redisCheckIntervalMs = 60_000
    /// Sentinels that name the primary (empty: `REDIS_URL` is the primary). `REDIS_URL` still gives
    /// the primary's credentials, database and TLS.
    public var redisSentinels: [RedisURL] = []
    /// The primary's name in Sentinel (`sentinel monitor <name> ...`).
    public var redisMasterName = "mymaster"
    /// `single` (one primary) or `cluster` (a Redis Cluster).
    public var redisMode = RedisMode.single
    /// Cluster nodes asked for the slot map (empty: `REDIS_URL`'s host and port).
    public var redisClusterNodes: [RedisURL.Endpoint] = []
    /// TLS to Redis (`rediss://`): CA, client certificate and key, and the name checked in the server's
    /// certificate (each nil: the system trust store, no client certificate, the URL's host).
    public var redisTLS = RedisTLSOptions()

    // MARK: Device registry and notices
    /// Whether the device registry is kept in Redis (`DEVICE_REGISTRY`).
    public var deviceRegistryEnabled = true
    /// Prefix of the registry's keys (``DeviceKeys``).
    public var devicePrefix = "telemetry:teltonika:devices"
    /// The stream every instance reads: command wake-ups and logins elsewhere.
    public var noticesStream = "telemetry:teltonika:notices"
    /// At most one last-seen write per session per this long.
    public var deviceSeenIntervalMs = 60_000

    // MARK: Downlink commands
    /// Whether logged-in devices get the commands queued for them in Redis (`COMMANDS`).
    public var commandsEnabled = true
    /// Prefix of the command keys (``CommandKeys``).
    public var commandPrefix = "telemetry:teltonika:commands"
    /// Stream of command outcomes (`queued`, `sent`, `answered`, ...).
    public var commandEventsStream = "telemetry:teltonika:command-events"
    public var commandEventsMaxLength = 100_000
    /// How long a sent command waits for its answer before it is `timeout`.
    public var commandTimeoutMs = 30_000
    /// After a timeout, how long an answer still counts (`late`) and nothing else is sent.
    public var commandLateGraceMs = 30_000
    /// After login, how long before the device's queue is looked at (its first packets go first).
    public var commandLoginGraceMs = 1_000

    // MARK: Logs
    public var logLevel = "info"
    public var logFormat = "json"
    public var instanceID = ""

    // MARK: Process
    /// Metrics and health listener (`/metrics`, `/healthz`, `/readyz`).
    public var metricsHost = "0.0.0.0"
    public var metricsPort = 9090
    /// Open connections to the metrics port beyond this are closed on accept.
    public var metricsMaxConnections = 32
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
        /// The setting's value in a configuration, as text (for comparisons; the Redis password is not shown).
        let read: @Sendable (IngestConfiguration) -> String

        /// The default, as `serve --help` shows it ("none" when unset).
        public var defaultText: String {
            let value = read(IngestConfiguration())
            return value.isEmpty ? "none" : value
        }

        init(
            env: String,
            flag: String,
            help: String,
            read: @escaping @Sendable (IngestConfiguration) -> String,
            apply: @escaping @Sendable (inout IngestConfiguration, String) throws(ConfigurationError) -> Void
        ) {
            self.env = env
            self.flag = flag
            self.help = help
            self.read = read
            self.apply = apply
        }
    }

    /// Every setting, in the order OPERATIONS.md lists them.
    public static let settings: [Setting] = [
        string("TELTONIKA_HOST", "host", "Address the device listener binds.", \.host),
        int("TELTONIKA_PORT", "port", "Device TCP port (0: any free port, logged at start).", 0...65535, \.port),
        int(
            "HANDSHAKE_TIMEOUT_MS",
            "handshake-timeout-ms",
            "Close connections that do not log in within this time.",
            100...600_000,
            \.handshakeTimeoutMs
        ),
        int("IDLE_TIMEOUT_MS", "idle-timeout-ms", "Close connections silent for this long.", 1000...86_400_000, \.idleTimeoutMs),
        int(
            "FRAME_TIMEOUT_MS",
            "frame-timeout-ms",
            "Close connections whose packet is not complete this long after its first byte.",
            100...3_600_000,
            \.frameTimeoutMs
        ),
        int("MAX_FRAME_BYTES", "max-frame-bytes", "Largest accepted data-field length.", 64...16_777_216, \.maxFrameBytes),
        int("MAX_CONNECTIONS", "max-connections", "Device connections beyond this are refused.", 1...1_000_000, \.maxConnections),
        int(
            "EVENT_LOOP_THREADS",
            "event-loop-threads",
            "Threads serving device connections (0: one per core).",
            0...1024,
            \.eventLoopThreads
        ),
        int(
            "MAX_CONNECTIONS_PER_IP",
            "max-connections-per-ip",
            "Connections from one source address beyond this are refused (carrier NAT shares addresses).",
            1...1_000_000,
            \.maxConnectionsPerIP
        ),
        int(
            "MAX_LOGIN_FAILURES_PER_IP",
            "max-login-failures-per-ip",
            "Failed logins per minute from one address before it is refused on accept (0: no limit).",
            0...1_000_000,
            \.maxLoginFailuresPerIP
        ),
        int(
            "MAX_BUFFERED_BYTES",
            "max-buffered-bytes",
            "Receive-buffer bytes all connections may hold beyond 2 KiB each; a connection past it is closed.",
            65_536...68_719_476_736,
            \.maxBufferedBytes
        ),
        Setting(
            env: "DEVICE_AUTHORITY_MODE",
            flag: "device-authority-mode",
            help: "allow_all (any IMEI), file (DEVICE_ALLOWLIST_FILE) or redis (the set REDIS_DEVICE_ALLOWLIST_KEY).",
            read: { $0.deviceAuthorityMode.rawValue },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
                guard let mode = DeviceAuthorityMode(rawValue: v) else {
                    throw ConfigurationError(key: "DEVICE_AUTHORITY_MODE", message: "expected allow_all, file or redis, got '\(v)'")
                }
                c.deviceAuthorityMode = mode
            }
        ),
        optional(
            "DEVICE_ALLOWLIST_FILE",
            "device-allowlist-file",
            "One IMEI a line (# comments) for DEVICE_AUTHORITY_MODE=file.",
            \.deviceAllowlistFile
        ),
        string(
            "REDIS_DEVICE_ALLOWLIST_KEY",
            "redis-device-allowlist-key",
            "Redis set of allowed IMEIs for DEVICE_AUTHORITY_MODE=redis.",
            \.redisDeviceAllowlistKey
        ),
        int(
            "DEVICE_ALLOWLIST_REFRESH_MS",
            "device-allowlist-refresh-ms",
            "How often the allowlist is loaded again (SIGHUP loads it at once).",
            1000...86_400_000,
            \.deviceAllowlistRefreshMs
        ),
        optionalPort(
            "UDP_PORT",
            "udp-port",
            "UDP port for AVL datagrams (may equal TELTONIKA_PORT; 0: any free port; empty: no UDP).",
            \.udpPort
        ),
        optional("UDP_HOST", "udp-host", "Address the UDP listener binds (empty: TELTONIKA_HOST).", \.udpHost),
        int(
            "UDP_WINDOW_ENTRIES",
            "udp-window-entries",
            "UDP packets remembered so a resend is ACKed again without being stored twice.",
            1...10_000_000,
            \.udpWindowEntries
        ),
        int(
            "UDP_WINDOW_TTL_MS",
            "udp-window-ttl-ms",
            "How long a stored UDP packet is remembered for its resends.",
            1000...86_400_000,
            \.udpWindowTTLMs
        ),
        int(
            "UDP_RECEIVE_BUFFER_BYTES",
            "udp-receive-buffer-bytes",
            "Kernel receive buffer asked for the UDP socket (capped by net.core.rmem_max).",
            65_536...1_073_741_824,
            \.udpReceiveBufferBytes
        ),
        optionalPort(
            "TLS_PORT",
            "tls-port",
            "TLS port for devices, beside the TCP one (0: any free port; empty: no TLS). Needs TLS_CERT_FILE and TLS_KEY_FILE.",
            \.deviceTLS.port
        ),
        optional("TLS_CERT_FILE", "tls-cert-file", "PEM certificate the TLS port serves, its chain after it.", \.deviceTLS.certFile),
        optional("TLS_KEY_FILE", "tls-key-file", "PEM private key of TLS_CERT_FILE.", \.deviceTLS.keyFile),
        optional(
            "TLS_CLIENT_CA_FILE",
            "tls-client-ca-file",
            "PEM CA(s): set, devices must present a certificate signed by one (mutual TLS).",
            \.deviceTLS.clientCAFile
        ),
        onOff(
            "TLS_CLIENT_CERT_IMEI",
            "tls-client-cert-imei",
            "on: a TLS device logs in only with the IMEI that is its client certificate's subject CN (needs TLS_CLIENT_CA_FILE).",
            \.deviceTLS.clientCertIMEI
        ),
        Setting(
            env: "TLS_MIN_VERSION",
            flag: "tls-min-version",
            help: "Oldest TLS version the TLS port accepts: 1.2 or 1.3.",
            read: { $0.deviceTLS.minimumVersion.rawValue },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
                guard let version = DeviceTLSOptions.Version(rawValue: v) else {
                    throw ConfigurationError(key: "TLS_MIN_VERSION", message: "expected 1.2 or 1.3, got '\(v)'")
                }
                c.deviceTLS.minimumVersion = version
            }
        ),
        choice(
            "PROXY_PROTOCOL",
            "proxy-protocol",
            "off, v2 (every connection from PROXY_TRUSTED_CIDRS, starting with a PROXY v2 header) or optional.",
            \.proxyProtocol
        ),
        list(
            "PROXY_TRUSTED_CIDRS",
            "proxy-trusted-cidrs",
            "Comma-separated IPv4/IPv6 networks (10.0.0.0/8, fd00::/8, 192.0.2.7) of the load balancers that send PROXY headers.",
            \.proxyTrustedCIDRs,
            expected: "an IPv4 or IPv6 address/prefix"
        ) { text in CIDR(text) },
        Setting(
            env: "REDIS_URL",
            flag: "redis-url",
            help: "redis://[user:password@]host:port[/db], rediss://... (TLS) or unix:///path[?db=N].",
            read: { "\($0.redisURL)" },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
                do throws(RedisURL.ParseError) {
                    c.redisURL = try RedisURL(parsing: v)
                } catch {
                    throw ConfigurationError(key: "REDIS_URL", message: error.description)
                }
            }
        ),
        string("REDIS_TELEMETRY_STREAM", "telemetry-stream", "Stream that receives one entry per record.", \.telemetryStream),
        string("REDIS_RESPONSES_STREAM", "responses-stream", "Stream that receives Codec 12-15 frames from devices.", \.responsesStream),
        int(
            "REDIS_STREAM_MAXLEN",
            "stream-maxlen",
            "Approximate cap of the telemetry stream (XADD MAXLEN ~).",
            1...Int(Int32.max),
            \.streamMaxLength
        ),
        int(
            "REDIS_RESPONSES_MAXLEN",
            "responses-maxlen",
            "Approximate cap of the responses stream (device messages).",
            1...Int(Int32.max),
            \.responsesMaxLength
        ),
        int(
            "REDIS_STREAM_SHARDS",
            "stream-shards",
            "Keys each stream is split into by device: 1 the stream itself; N: <stream>:{0}..{N-1}, each capped at its share of the MAXLEN.",
            1...1024,
            \.streamShards
        ),
        int(
            "DEVICE_MESSAGE_RATE",
            "device-message-rate",
            "Device messages (Codec 12-15) stored per second per connection; the excess is dropped.",
            1...1_000_000,
            \.deviceMessageRate
        ),
        int(
            "DEVICE_MESSAGE_BURST",
            "device-message-burst",
            "Device messages one connection may send at once before DEVICE_MESSAGE_RATE applies.",
            1...1_000_000,
            \.deviceMessageBurst
        ),
        int(
            "PUBLISH_QUEUE_CAPACITY",
            "publish-queue-capacity",
            "Records the publish queue holds.",
            255...100_000_000,
            \.publishQueueCapacity
        ),
        int(
            "PUBLISH_TIMEOUT_MS",
            "publish-timeout-ms",
            "A packet unconfirmed by Redis this long closes its connection, no ACK.",
            100...600_000,
            \.publishTimeoutMs
        ),
        int(
            "OVERFLOW_WAIT_MS",
            "overflow-wait-ms",
            "Wait for room in a full queue before closing without ACK.",
            0...60_000,
            \.overflowWaitMs
        ),
        int("REDIS_TIMEOUT_MS", "redis-timeout-ms", "Redis connect and reply timeout.", 50...60_000, \.redisTimeoutMs),
        int(
            "REDIS_MIN_REPLICAS",
            "redis-min-replicas",
            "Replicas that must confirm a packet (WAIT) before its ACK; 0: the primary alone.",
            0...64,
            \.redisMinReplicas
        ),
        int(
            "REDIS_REPLICA_TIMEOUT_MS",
            "redis-replica-timeout-ms",
            "How long WAIT blocks for REDIS_MIN_REPLICAS; below REDIS_TIMEOUT_MS.",
            1...59_999,
            \.redisReplicaTimeoutMs
        ),
        int(
            "REDIS_MIN_LOCAL_FSYNC",
            "redis-min-local-fsync",
            "1: WAITAOF (Redis 7.2+): the primary's AOF must have fsynced a packet before its ACK.",
            0...1,
            \.redisMinLocalFsync
        ),
        int(
            "REDIS_CHECK_INTERVAL_MS",
            "redis-check-interval-ms",
            "How often Redis' persistence settings and the streams' length and consumer lag are read.",
            1000...3_600_000,
            \.redisCheckIntervalMs
        ),
        Setting(
            env: "REDIS_SENTINELS",
            flag: "redis-sentinels",
            help: "host:port,... (or redis://[:password@]host:port) of Sentinels naming the primary; empty: REDIS_URL is it.",
            read: { $0.redisSentinels.map(\.description).joined(separator: ",") },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
                c.redisSentinels = []
                for item in v.split(separator: ",") {
                    let text = item.trimmingWhitespace()
                    guard !text.isEmpty else { continue }
                    let url: RedisURL
                    do throws(RedisURL.ParseError) {
                        url = try RedisURL(parsing: text.contains("://") ? text : "redis://\(text)")
                    } catch {
                        throw ConfigurationError(key: "REDIS_SENTINELS", message: "'\(text)': \(error.description)")
                    }
                    guard case .tcp = url.endpoint else {
                        throw ConfigurationError(key: "REDIS_SENTINELS", message: "'\(text)': a Sentinel is host:port")
                    }
                    c.redisSentinels.append(url)
                }
            }
        ),
        string("REDIS_MASTER_NAME", "redis-master-name", "The primary's name in Sentinel (with REDIS_SENTINELS).", \.redisMasterName),
        redisModeSetting,
        redisClusterNodesSetting,
        optional(
            "REDIS_TLS_CA_FILE",
            "redis-tls-ca-file",
            "PEM CA(s) that sign the Redis server's certificate (rediss://); default: the system store.",
            \.redisTLS.caFile
        ),
        optional(
            "REDIS_TLS_CERT_FILE",
            "redis-tls-cert-file",
            "PEM client certificate for Redis (tls-auth-clients), with REDIS_TLS_KEY_FILE.",
            \.redisTLS.certFile
        ),
        optional("REDIS_TLS_KEY_FILE", "redis-tls-key-file", "PEM private key of REDIS_TLS_CERT_FILE.", \.redisTLS.keyFile),
        optional(
            "REDIS_TLS_SERVER_NAME",
            "redis-tls-server-name",
            "Name checked in Redis' certificate (and sent as SNI); default: the URL's host.",
            \.redisTLS.serverName
        ),
        Setting(env: "LOG_LEVEL", flag: "log-level", help: "trace, debug, info, notice, warning, error, critical.", read: \.logLevel) {
            (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
            guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(v) else {
                throw ConfigurationError(key: "LOG_LEVEL", message: "unknown level '\(v)'")
            }
            c.logLevel = v
        },
        Setting(env: "LOG_FORMAT", flag: "log-format", help: "json (one object per line) or text.", read: \.logFormat) {
            (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
            guard v == "json" || v == "text" else {
                throw ConfigurationError(key: "LOG_FORMAT", message: "expected json or text, got '\(v)'")
            }
            c.logFormat = v
        },
        onOff("COMMANDS", "commands", "on: deliver the downlink commands queued in Redis; off: never.", \.commandsEnabled),
        onOff(
            "DEVICE_REGISTRY",
            "device-registry",
            "on: keep each device's instance, peer and last-seen time in Redis; off: never.",
            \.deviceRegistryEnabled
        ),
        string("REDIS_DEVICE_PREFIX", "device-prefix", "Prefix of the device registry's keys.", \.devicePrefix),
        string(
            "REDIS_NOTICES_STREAM",
            "notices-stream",
            "Stream every instance reads: command wake-ups, logins elsewhere.",
            \.noticesStream
        ),
        int(
            "DEVICE_SEEN_INTERVAL_MS",
            "device-seen-interval-ms",
            "At most one last-seen write to the registry per session per this long.",
            1_000...3_600_000,
            \.deviceSeenIntervalMs
        ),
        string(
            "REDIS_COMMAND_PREFIX",
            "command-prefix",
            "Prefix of the downlink command keys (queue, commands, lease, wake stream).",
            \.commandPrefix
        ),
        string("REDIS_COMMAND_EVENTS_STREAM", "command-events-stream", "Stream of downlink command outcomes.", \.commandEventsStream),
        int(
            "REDIS_COMMAND_EVENTS_MAXLEN",
            "command-events-maxlen",
            "Approximate cap of the command-events stream.",
            1...Int(Int32.max),
            \.commandEventsMaxLength
        ),
        int(
            "COMMAND_TIMEOUT_MS",
            "command-timeout-ms",
            "How long a sent command waits for its answer (then timeout).",
            100...3_600_000,
            \.commandTimeoutMs
        ),
        int(
            "COMMAND_LATE_GRACE_MS",
            "command-late-grace-ms",
            "After a timeout, how long an answer is still attributed (late) while nothing else is sent.",
            0...3_600_000,
            \.commandLateGraceMs
        ),
        int(
            "COMMAND_LOGIN_GRACE_MS",
            "command-login-grace-ms",
            "After login, how long before queued commands are looked at.",
            0...600_000,
            \.commandLoginGraceMs
        ),
        string("INSTANCE_ID", "instance-id", "Name of this instance in logs (default: host name).", \.instanceID),
        string("METRICS_HOST", "metrics-host", "Address of the metrics and health listener.", \.metricsHost),
        int(
            "METRICS_PORT",
            "metrics-port",
            "Port of /metrics, /healthz, /readyz (0: any free port, logged at start).",
            0...65535,
            \.metricsPort
        ),
        int(
            "METRICS_MAX_CONNECTIONS",
            "metrics-max-connections",
            "Open connections to the metrics port beyond this are closed.",
            1...10_000,
            \.metricsMaxConnections
        ),
        int(
            "SHUTDOWN_TIMEOUT_MS",
            "shutdown-timeout-ms",
            "Bound of the graceful drain; past it, exit 1.",
            100...3_600_000,
            \.shutdownTimeoutMs
        ),
        string("CONFIG_FILE", "config-file", "File of KEY=value settings, read at start and re-read on SIGHUP.", \.configFile),
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
        try c.validate()
        return c
    }

    /// Whether any connection to Redis (the primary or a Sentinel) uses TLS.
    public var redisUsesTLS: Bool { redisURL.tls || redisSentinels.contains { $0.tls } }

    /// The TLS context for `rediss://` (nil without TLS), built once at start: an unreadable or invalid CA,
    /// certificate or key is an error naming its setting (exit 2), never a silent fallback.
    public func makeRedisTLSContext() throws(ConfigurationError) -> RedisTLSContext? {
        guard redisUsesTLS else { return nil }
        do throws(RedisTLSContext.SetupError) {
            return try RedisTLSContext(options: redisTLS)
        } catch {
            let key =
                switch error.input {
                case .caFile: "REDIS_TLS_CA_FILE"
                case .certFile: "REDIS_TLS_CERT_FILE"
                case .keyFile: "REDIS_TLS_KEY_FILE"
                case .context: "REDIS_URL"
                }
            throw ConfigurationError(key: key, message: error.message)
        }
    }

    /// Checks the settings that depend on each other.
    func validate() throws(ConfigurationError) {
        if deviceAuthorityMode == .file, deviceAllowlistFile == nil {
            throw ConfigurationError(key: "DEVICE_ALLOWLIST_FILE", message: "must be set with DEVICE_AUTHORITY_MODE=file")
        }
        try deviceTLS.validate(tcpPort: port)
        try validateCluster()
        if proxyProtocol != .off, proxyTrustedCIDRs.isEmpty {
            throw ConfigurationError(
                key: "PROXY_TRUSTED_CIDRS",
                message: "must name the load balancers with PROXY_PROTOCOL=\(proxyProtocol.rawValue)"
            )
        }
        if proxyProtocol == .off, !proxyTrustedCIDRs.isEmpty {
            throw ConfigurationError(key: "PROXY_TRUSTED_CIDRS", message: "is set, but PROXY_PROTOCOL is off: no header would be read")
        }
        if !redisUsesTLS {
            let given = [
                ("REDIS_TLS_CA_FILE", redisTLS.caFile), ("REDIS_TLS_CERT_FILE", redisTLS.certFile),
                ("REDIS_TLS_KEY_FILE", redisTLS.keyFile),
                ("REDIS_TLS_SERVER_NAME", redisTLS.serverName),
            ]
            if let (key, _) = given.first(where: { $0.1 != nil }) {
                throw ConfigurationError(
                    key: key,
                    message: "is set, but neither REDIS_URL nor REDIS_SENTINELS uses rediss://: Redis would be reached without TLS"
                )
            }
        }
        if redisMinReplicas > 0 || redisMinLocalFsync > 0, redisReplicaTimeoutMs >= redisTimeoutMs {
            throw ConfigurationError(
                key: "REDIS_REPLICA_TIMEOUT_MS",
                message: "\(redisReplicaTimeoutMs) must be below REDIS_TIMEOUT_MS (\(redisTimeoutMs)), which bounds WAIT's reply"
            )
        }
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
        IngestConfiguration.settings.filter { $0.read(self) != $0.read(other) }.map(\.env)
    }

    private static func string(
        _ env: String,
        _ flag: String,
        _ help: String,
        _ field: any WritableKeyPath<IngestConfiguration, String> & Sendable
    ) -> Setting {
        Setting(
            env: env,
            flag: flag,
            help: help,
            read: { $0[keyPath: field] },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
                guard !v.isEmpty else { throw ConfigurationError(key: env, message: "must not be empty") }
                c[keyPath: field] = v
            }
        )
    }

    /// A setting that takes one of an enumeration's raw values.
    private static func choice<Value: RawRepresentable<String> & CaseIterable & Sendable>(
        _ env: String,
        _ flag: String,
        _ help: String,
        _ field: any WritableKeyPath<IngestConfiguration, Value> & Sendable
    ) -> Setting {
        Setting(
            env: env,
            flag: flag,
            help: help,
            read: { $0[keyPath: field].rawValue },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
                guard let value = Value(rawValue: v) else {
                    let names = Value.allCases.map(\.rawValue)
                    let expected = names.dropLast().joined(separator: ", ") + " or " + names.last!
                    throw ConfigurationError(key: env, message: "expected \(expected), got '\(v)'")
                }
                c[keyPath: field] = value
            }
        )
    }

    /// A comma-separated list (blanks around items and empty items ignored; empty: none), each item parsed
    /// by `parse` (nil: not `expected`).
    private static func list<Item: CustomStringConvertible & Sendable>(
        _ env: String,
        _ flag: String,
        _ help: String,
        _ field: any WritableKeyPath<IngestConfiguration, [Item]> & Sendable,
        expected: String,
        parse: @escaping @Sendable (String) -> Item?
    ) -> Setting {
        Setting(
            env: env,
            flag: flag,
            help: help,
            read: { $0[keyPath: field].map(\.description).joined(separator: ",") },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
                var items: [Item] = []
                for text in v.split(separator: ",").map({ $0.trimmingWhitespace() }) where !text.isEmpty {
                    guard let item = parse(text) else { throw ConfigurationError(key: env, message: "'\(text)' is not \(expected)") }
                    items.append(item)
                }
                c[keyPath: field] = items
            }
        )
    }

    /// A switch: `on` or `off`.
    private static func onOff(
        _ env: String,
        _ flag: String,
        _ help: String,
        _ field: any WritableKeyPath<IngestConfiguration, Bool> & Sendable
    ) -> Setting {
        Setting(
            env: env,
            flag: flag,
            help: help,
            read: { $0[keyPath: field] ? "on" : "off" },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
                guard v == "on" || v == "off" else { throw ConfigurationError(key: env, message: "expected on or off, got '\(v)'") }
                c[keyPath: field] = v == "on"
            }
        )
    }

    /// A text setting whose empty value means "not set".
    private static func optional(
        _ env: String,
        _ flag: String,
        _ help: String,
        _ field: any WritableKeyPath<IngestConfiguration, String?> & Sendable
    ) -> Setting {
        Setting(
            env: env,
            flag: flag,
            help: help,
            read: { $0[keyPath: field] ?? "" },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in c[keyPath: field] = v.isEmpty ? nil : v }
        )
    }

    /// A port setting whose empty value means "no such listener".
    private static func optionalPort(
        _ env: String,
        _ flag: String,
        _ help: String,
        _ field: any WritableKeyPath<IngestConfiguration, Int?> & Sendable
    ) -> Setting {
        Setting(
            env: env,
            flag: flag,
            help: help,
            read: { $0[keyPath: field].map(String.init) ?? "" },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
                guard !v.isEmpty else { return c[keyPath: field] = nil }
                guard let n = Int(v), (0...65535).contains(n) else {
                    throw ConfigurationError(key: env, message: "expected a port in 0...65535 or empty, got '\(v)'")
                }
                c[keyPath: field] = n
            }
        )
    }

    private static func int(
        _ env: String,
        _ flag: String,
        _ help: String,
        _ range: ClosedRange<Int>,
        _ field: any WritableKeyPath<IngestConfiguration, Int> & Sendable
    ) -> Setting {
        Setting(
            env: env,
            flag: flag,
            help: help,
            read: { "\($0[keyPath: field])" },
            apply: { (c: inout IngestConfiguration, v: String) throws(ConfigurationError) in
                guard let n = Int(v.replacingUnderscores()), range.contains(n) else {
                    throw ConfigurationError(
                        key: env,
                        message: "expected a whole number in \(range.lowerBound)...\(range.upperBound), got '\(v)'"
                    )
                }
                c[keyPath: field] = n
            }
        )
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

/// A setting that cannot be used: which one and why.
public struct ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    public var key: String
    public var message: String

    public init(key: String, message: String) {
        self.key = key
        self.message = message
    }

    public var description: String { "\(key): \(message)" }
}
