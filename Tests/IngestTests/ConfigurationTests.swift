import FixtureSupport
import Ingest
import RedisWire
import Testing

struct RedisURLTests {
    @Test func testForms() throws {
        #expect(try RedisURL(parsing: "redis://localhost") == RedisURL(endpoint: .tcp(host: "localhost", port: 6379)))
        #expect(
            try RedisURL(parsing: "redis://user:p%40ss@10.0.0.5:6380/4")
                == RedisURL(endpoint: .tcp(host: "10.0.0.5", port: 6380), username: "user", password: "p@ss", database: 4)
        )
        #expect(try RedisURL(parsing: "redis://:pw@[::1]:7000") == RedisURL(endpoint: .tcp(host: "::1", port: 7000), password: "pw"))
        #expect(try RedisURL(parsing: "redis://pw@h:1/") == RedisURL(endpoint: .tcp(host: "h", port: 1), password: "pw"))
        #expect(try RedisURL(parsing: "unix:///run/redis.sock?db=2") == RedisURL(endpoint: .unix(path: "/run/redis.sock"), database: 2))
    }

    @Test(arguments: ["http://h", "redis://", "redis://h:0", "redis://h:99999", "redis://h/x", "unix://relative", "unix:///s?db=-1"])
    func testRejected(_ text: String) {
        #expect(throws: RedisURL.ParseError.self) { try RedisURL(parsing: text) }
    }

    @Test func testPasswordIsHiddenInLogs() throws {
        let url = try RedisURL(parsing: "redis://u:secret@h:1/2")
        #expect(!url.description.contains("secret"))
        #expect(url.description == "redis://u:***@h:1/2")
    }
}

struct IngestConfigurationTests {
    @Test func testDefaults() throws {
        let c = try IngestConfiguration.load(environment: [:], flags: [:])
        #expect(c.port == 5027)
        #expect(c.host == "0.0.0.0")
        #expect(c.telemetryStream == "telemetry:teltonika")
        #expect(c.responsesStream == "telemetry:teltonika:responses")
        #expect(c.streamMaxLength == 1_000_000)
        #expect(c.handshakeTimeoutMs == 10_000)
        #expect(c.logFormat == "json")
    }

    @Test func testFlagWinsOverEnvironment() throws {
        let c = try IngestConfiguration.load(environment: ["TELTONIKA_PORT": "6000", "MAX_FRAME_BYTES": "2048"], flags: ["port": "7000"])
        #expect(c.port == 7000)
        #expect(c.maxFrameBytes == 2048)
    }

    @Test func testInvalidValuesNameTheSetting() {
        #expect(throws: ConfigurationError.self) { try IngestConfiguration.load(environment: ["IDLE_TIMEOUT_MS": "soon"], flags: [:]) }
        do {
            _ = try IngestConfiguration.load(environment: [:], flags: ["max-connections": "0"])
            Issue.record("accepted 0 connections")
        } catch {
            #expect(error.key == "MAX_CONNECTIONS")
        }
    }

    @Test func testFileModeNeedsAFile() throws {
        do {
            _ = try IngestConfiguration.load(environment: ["DEVICE_AUTHORITY_MODE": "file"], flags: [:])
            Issue.record("file mode without a file")
        } catch {
            #expect(error.key == "DEVICE_ALLOWLIST_FILE")
        }
        #expect(throws: ConfigurationError.self) { try IngestConfiguration.load(environment: ["DEVICE_AUTHORITY_MODE": "all"], flags: [:]) }
    }

    @Test func testUDPPortIsOffUnlessSet() throws {
        #expect(try IngestConfiguration.load(environment: [:], flags: [:]).udpPort == nil)
        #expect(try IngestConfiguration.load(environment: ["UDP_PORT": ""], flags: [:]).udpPort == nil)
        #expect(try IngestConfiguration.load(environment: ["UDP_PORT": "5027"], flags: [:]).udpPort == 5027)
        for bad in ["65536", "-1", "udp"] {
            do {
                _ = try IngestConfiguration.load(environment: ["UDP_PORT": bad], flags: [:])
                Issue.record("accepted UDP_PORT=\(bad)")
            } catch {
                #expect(error.key == "UDP_PORT")
            }
        }
    }

    /// `WAIT` must be answered within the reply timeout, so its timeout must be below it.
    @Test func testTheReplicaTimeoutMustBeBelowTheRedisTimeout() throws {
        let ok = try IngestConfiguration.load(environment: ["REDIS_MIN_REPLICAS": "1", "REDIS_REPLICA_TIMEOUT_MS": "4999"], flags: [:])
        #expect(ok.redisMinReplicas == 1 && ok.redisReplicaTimeoutMs == 4999)
        do {
            _ = try IngestConfiguration.load(
                environment: ["REDIS_MIN_REPLICAS": "1", "REDIS_REPLICA_TIMEOUT_MS": "2000", "REDIS_TIMEOUT_MS": "2000"],
                flags: [:]
            )
            Issue.record("accepted a WAIT timeout as long as the reply timeout")
        } catch {
            #expect(error.key == "REDIS_REPLICA_TIMEOUT_MS")
            #expect(error.message.contains("REDIS_TIMEOUT_MS"))
        }
    }

    @Test func testSentinelsParse() throws {
        let c = try IngestConfiguration.load(
            environment: ["REDIS_SENTINELS": "10.0.0.1:26379, s2.example:26380,redis://:pw@[::1]:26381", "REDIS_MASTER_NAME": "ingest"],
            flags: [:]
        )
        #expect(c.redisSentinels.map(\.endpointDescription) == ["10.0.0.1:26379", "s2.example:26380", "[::1]:26381"])
        #expect(c.redisSentinels[2].password == "pw")
        #expect(c.redisMasterName == "ingest")
        #expect(try IngestConfiguration.load(environment: ["REDIS_SENTINELS": ""], flags: [:]).redisSentinels.isEmpty)
        for bad in ["10.0.0.1:0", "unix:///tmp/s.sock", "host:port"] {
            do {
                _ = try IngestConfiguration.load(environment: ["REDIS_SENTINELS": bad], flags: [:])
                Issue.record("accepted \(bad)")
            } catch {
                #expect(error.key == "REDIS_SENTINELS")
            }
        }
    }

    @Test func testEverySettingHasAUniqueEnvAndFlag() {
        let s = IngestConfiguration.settings
        #expect(Set(s.map(\.env)).count == s.count)
        #expect(Set(s.map(\.flag)).count == s.count)
    }

    /// Each setting, changed alone, is the only one `changedSettings` names (what SIGHUP reports).
    @Test func testChangedSettingsNamesExactlyTheChangedOnes() throws {
        // Over TLS, so that the REDIS_TLS_* settings are valid alone, and with a TLS port, so that the TLS_* are;
        // with the PROXY protocol on, so that PROXY_PROTOCOL and PROXY_TRUSTED_CIDRS are.
        let tls = [
            "REDIS_URL": "rediss://127.0.0.1:6380", "TLS_PORT": "5443", "TLS_CERT_FILE": "/tls.pem", "TLS_KEY_FILE": "/tls.key",
            "PROXY_PROTOCOL": "optional", "PROXY_TRUSTED_CIDRS": "10.0.0.0/8",
        ]
        let base = try IngestConfiguration.load(environment: tls, flags: [:])
        let other: [String: String] = [
            "TELTONIKA_HOST": "127.0.0.2", "TELTONIKA_PORT": "5028", "HANDSHAKE_TIMEOUT_MS": "9000", "IDLE_TIMEOUT_MS": "5000",
            "MAX_FRAME_BYTES": "2048", "MAX_CONNECTIONS": "5", "REDIS_URL": "rediss://10.0.0.1:6380/2", "REDIS_TELEMETRY_STREAM": "a",
            "REDIS_RESPONSES_STREAM": "b", "REDIS_STREAM_MAXLEN": "7", "PUBLISH_QUEUE_CAPACITY": "300", "PUBLISH_TIMEOUT_MS": "900",
            "OVERFLOW_WAIT_MS": "5", "REDIS_TIMEOUT_MS": "60", "LOG_LEVEL": "debug", "LOG_FORMAT": "text", "INSTANCE_ID": "i",
            "METRICS_HOST": "127.0.0.3", "METRICS_PORT": "9191", "SHUTDOWN_TIMEOUT_MS": "1000", "CONFIG_FILE": "/tmp/x",
            "REDIS_RESPONSES_MAXLEN": "100", "DEVICE_MESSAGE_RATE": "3", "DEVICE_MESSAGE_BURST": "4", "METRICS_MAX_CONNECTIONS": "2",
            "REDIS_MIN_REPLICAS": "1", "REDIS_REPLICA_TIMEOUT_MS": "300", "REDIS_SENTINELS": "10.0.0.9:26379",
            "REDIS_MASTER_NAME": "other", "REDIS_MIN_LOCAL_FSYNC": "1", "REDIS_CHECK_INTERVAL_MS": "5000", "REDIS_TLS_CA_FILE": "/ca.pem",
            "REDIS_TLS_CERT_FILE": "/c.pem", "REDIS_TLS_KEY_FILE": "/k.pem", "REDIS_TLS_SERVER_NAME": "redis.example",
            "UDP_PORT": "5027", "UDP_HOST": "127.0.0.4", "UDP_WINDOW_ENTRIES": "10", "UDP_WINDOW_TTL_MS": "5000",
            "FRAME_TIMEOUT_MS": "5000", "MAX_CONNECTIONS_PER_IP": "3", "MAX_LOGIN_FAILURES_PER_IP": "0", "MAX_BUFFERED_BYTES": "100000",
            "DEVICE_AUTHORITY_MODE": "redis", "DEVICE_ALLOWLIST_FILE": "/a.txt", "REDIS_DEVICE_ALLOWLIST_KEY": "k",
            "DEVICE_ALLOWLIST_REFRESH_MS": "5000", "UDP_RECEIVE_BUFFER_BYTES": "100000",
            "TLS_PORT": "5444", "TLS_CERT_FILE": "/other.pem", "TLS_KEY_FILE": "/other.key", "TLS_CLIENT_CA_FILE": "/devices-ca.pem",
            "TLS_MIN_VERSION": "1.3", "TLS_CLIENT_CERT_IMEI": "on", "COMMANDS": "off", "REDIS_COMMAND_PREFIX": "c",
            "REDIS_COMMAND_EVENTS_STREAM": "e",
            "REDIS_COMMAND_EVENTS_MAXLEN": "10", "COMMAND_TIMEOUT_MS": "1000", "COMMAND_LATE_GRACE_MS": "0", "COMMAND_LOGIN_GRACE_MS": "0",
            "DEVICE_REGISTRY": "off", "REDIS_DEVICE_PREFIX": "d", "REDIS_NOTICES_STREAM": "n", "DEVICE_SEEN_INTERVAL_MS": "5000",
            "PROXY_PROTOCOL": "v2", "PROXY_TRUSTED_CIDRS": "192.0.2.7, 2001:db8::/32", "REDIS_STREAM_SHARDS": "4",
            "REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": "10.0.0.5:7000", "EVENT_LOOP_THREADS": "3",
        ]
        #expect(Set(other.keys) == Set(IngestConfiguration.settings.map(\.env)))
        #expect(base.changedSettings(comparedTo: base).isEmpty)
        // REDIS_CLUSTER_NODES goes only with REDIS_MODE=cluster, TLS_CLIENT_CERT_IMEI only with client certificates:
        // changed together, both named.
        let companions = [
            "REDIS_CLUSTER_NODES": ["REDIS_MODE": "cluster"], "TLS_CLIENT_CERT_IMEI": ["TLS_CLIENT_CA_FILE": "/devices-ca.pem"],
        ]
        for (env, value) in other {
            let extra = companions[env] ?? [:]
            let changed = try IngestConfiguration.load(environment: tls.merging([env: value]) { $1 }.merging(extra) { $1 }, flags: [:])
            #expect(Set(changed.changedSettings(comparedTo: base)) == Set([env] + extra.keys), "\(env)")
        }
    }
}
