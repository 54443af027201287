/// The `serve` subcommand: wires configuration, logging, the device server, the metrics port and process life.
import ArgumentParser
import Foundation
import Ingest
import Lifecycle
import Logging
import Metrics
import NIOCore
import NIOPosix
import Prometheus
import RedisWire
import ServiceLifecycle

/// `teltonika-ingest serve`: the device server (the default subcommand).
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve Teltonika devices on TCP and publish their records to Redis Streams.",
        discussion: "Every setting comes from a flag, the environment or CONFIG_FILE (in that order of precedence):\n\n"
            + IngestConfiguration.settings.map(settingHelp).joined(separator: "\n")
            + "\n\nSignals: SIGTERM/SIGINT drain and exit (a second one exits 1 at once); SIGHUP re-reads CONFIG_FILE"
            + " and the TLS certificate, key and client CA."
            + "\nDefaults, signals, exit codes and guidance: OPERATIONS.md."
    )

    /// One setting in `serve --help`: the flag, then its variable and default, then what it does, each
    /// line under 80 columns and indented, so the parser's own wrapping (to the terminal, or 80 columns
    /// when not a terminal, continuing at column 0) never breaks one.
    static func settingHelp(_ setting: IngestConfiguration.Setting) -> String {
        let indent = "      "
        let lines = ["  --\(setting.flag) VALUE", indent + "\(setting.env), default: \(setting.defaultText)"]
        return (lines + wrap(setting.help, width: 79 - indent.count).map { indent + $0 }).joined(separator: "\n")
    }

    /// Words of `text` in lines of at most `width` characters (a longer word gets a line of its own).
    static func wrap(_ text: String, width: Int) -> [String] {
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty && line.count + 1 + word.count > width {
                lines.append(line)
                line = ""
            }
            line += line.isEmpty ? String(word) : " " + word
        }
        if !line.isEmpty { lines.append(line) }
        return lines
    }

    @Argument(parsing: .allUnrecognized, help: .hidden)
    var options: [String] = []

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let flags = try parseFlags()
        let configuration: IngestConfiguration
        let tls: RedisTLSContext?
        let deviceTLS: DeviceTLSContext?
        do {
            configuration = try IngestConfiguration.resolve(environment: environment, flags: flags)
            tls = try configuration.makeRedisTLSContext()
            deviceTLS = try configuration.makeDeviceTLSContext()
        } catch let error as ConfigurationError {
            throw ValidationError("invalid setting \(error)")
        }
        let instanceID = configuration.instanceID.isEmpty ? ProcessInfo.processInfo.hostName : configuration.instanceID
        let format = LineLogHandler.Format(rawValue: configuration.logFormat) ?? .json
        LoggingSystem.bootstrap { LineLogHandler(label: $0, format: format, instanceID: instanceID) }
        LineLogHandler.setLevel(Logger.Level(rawValue: configuration.logLevel) ?? .info)
        CrashHandler.install(json: format == .json, instanceID: instanceID)
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: IngestMetrics.shared.registry))
        let logger = Logger(label: "teltonika-ingest")
        if let kind = environment["TELTONIKA_CRASH_TEST"] { Self.scheduleTestCrash(kind, logger: logger) }
        Self.raiseFileDescriptorLimit(maxConnections: configuration.maxConnections, logger: logger)

        let ingest = IngestService(configuration: configuration, logger: logger, tls: tls, deviceTLS: deviceTLS)
        let metrics = MetricsServer(
            host: configuration.metricsHost,
            port: configuration.metricsPort,
            maxConnections: configuration.metricsMaxConnections,
            health: ingest.health,
            logger: logger
        )
        let settings = SettingsReloader(configuration, environment: environment, flags: flags, logger: logger)
        // Its lines (shutdown and reload requested, forced exit) are the process' life: shown at any LOG_LEVEL.
        let lifecycle = ProcessLifecycle(shutdownTimeout: .milliseconds(configuration.shutdownTimeoutMs), logger: logger.lifecycle)
        let systemd = SystemdNotifier(environment: environment)
        do {
            try await lifecycle.run(
                services: Self.systemdService(systemd, ingest: ingest, logger: logger.lifecycle) + [metrics, ingest],
                onShutdown: {
                    systemd?.notify("STOPPING=1\nSTATUS=draining")
                    ingest.beginShutdown()
                },
                onReload: {
                    settings.reload()
                    ingest.refreshAllowlist()
                    ingest.reloadDeviceTLS()
                }
            )
        } catch {
            logger.critical(
                "stopped by an error",
                metadata: ["event": "server.failed", "error": "\(error)", "exit_code": .stringConvertible(1)]
            )
            terminate(.failure)
        }
        guard let report = ingest.drainReport else {
            // The services only return after a drain: anything else is a broken invariant.
            fatalError("the device server returned without draining")
        }
        let fields: Logger.Metadata = [
            "packets_in_flight": .stringConvertible(report.packetsInFlight),
            "abandoned_records": .stringConvertible(report.abandonedRecords),
            "connections_cut": .stringConvertible(report.connectionsCut),
            "redis_thread_finished": .stringConvertible(report.publisherFinished), "seconds": .stringConvertible(report.seconds),
        ]
        if report.isClean {
            logger.lifecycle.info(
                "drained and stopped",
                metadata: fields.merging(["event": "server.stopped", "exit_code": .stringConvertible(0)]) { $1 }
            )
            return
        }
        logger.critical(
            "drain timed out: records abandoned unacknowledged (devices resend them)",
            metadata: fields.merging(["event": "server.drain_timeout", "exit_code": .stringConvertible(1)]) { $1 }
        )
        terminate(.failure)
    }

    /// Under systemd (`NOTIFY_SOCKET`, a `Type=notify` unit): `READY=1` once the listeners are bound, and
    /// with `WatchdogSec=` a `WATCHDOG=1` every half interval while the device event loops answer (as
    /// `/healthz` checks them, from a loop of its own so a hung device loop cannot fake it). First in the
    /// list, so it stops last and keeps pinging through the drain.
    private static func systemdService(_ systemd: SystemdNotifier?, ingest: IngestService, logger: Logger) -> [any Service] {
        guard let systemd else { return [] }
        let probeLoop = MultiThreadedEventLoopGroup(numberOfThreads: 1).next()
        return [
            SystemdNotifyService(
                notifier: systemd,
                isReady: { ingest.health.isListening },
                // Once drained, the device loops are gone by design and the process is about to exit.
                isAlive: {
                    if ingest.drainReport != nil { return true }
                    return (try? await ingest.health.eventLoopsRespond(on: probeLoop, timeout: .seconds(1)).get()) ?? false
                },
                logger: logger
            )
        ]
    }

    /// Test-only (TELTONIKA_CRASH_TEST, documented in OPERATIONS.md): crash 300 ms after start.
    /// Raises the soft `RLIMIT_NOFILE` to the hard limit, and warns when even that leaves less than
    /// `MAX_CONNECTIONS` plus ~100 descriptors for the rest of the process (listeners, Redis, logs).
    private static func raiseFileDescriptorLimit(maxConnections: Int, logger: Logger) {
        guard let limit = FileDescriptorLimit.raiseSoftToHard() else { return }
        var metadata: Logger.Metadata = [
            "event": "process.fd_limit", "soft": .stringConvertible(limit.soft), "hard": .stringConvertible(limit.hard),
            "soft_before": .stringConvertible(limit.softBefore),
            "max_connections": .stringConvertible(maxConnections),
        ]
        guard limit.soft < maxConnections + 100 else {
            logger.info("file-descriptor limit", metadata: metadata)
            return
        }
        metadata["event"] = "process.fd_limit_low"
        logger.warning(
            "file-descriptor limit below MAX_CONNECTIONS + 100: devices beyond it wait in the backlog or time out",
            metadata: metadata
        )
    }

    private static func scheduleTestCrash(_ kind: String, logger: Logger) {
        logger.warning("test crash requested", metadata: ["event": "process.crash_test", "kind": "\(kind)"])
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: 0.3)
            CrashHandler.crashForTesting(kind)
        }
    }

    /// `--name value` and `--name=value` pairs, checked against the known settings.
    private func parseFlags() throws -> [String: String] {
        let known = Set(IngestConfiguration.settings.map(\.flag))
        var flags: [String: String] = [:]
        var i = 0
        while i < options.count {
            let option = options[i]
            guard option.hasPrefix("--") else { throw ValidationError("unexpected argument '\(option)'") }
            var name = String(option.dropFirst(2))
            var value: String
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            } else {
                guard i + 1 < options.count else { throw ValidationError("--\(name) needs a value") }
                i += 1
                value = options[i]
            }
            guard known.contains(name) else { throw ValidationError("unknown option '--\(name)'") }
            flags[name] = value
            i += 1
        }
        return flags
    }
}
