/// SIGHUP: re-reads CONFIG_FILE and applies what can change without a restart.
import Foundation
import Logging
import Prometheus
import Synchronization

extension IngestConfiguration {
    /// The configuration in force at start: defaults < `CONFIG_FILE` < environment < flags. Reads the
    /// settings file when one is named.
    public static func resolve(environment: [String: String], flags: [String: String]) throws -> IngestConfiguration {
        var file: [String: String] = [:]
        if let path = configFilePath(environment: environment, flags: flags) {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ConfigurationError(key: "CONFIG_FILE", message: "cannot read '\(path)'")
            }
            file = try parseFile(text)
        }
        return try load(environment: environment, flags: flags, file: file)
    }
}

/// SIGHUP: re-reads the settings and applies what can change at run time (``IngestConfiguration/reloadable``:
/// the log level); other changed settings are named as needing a restart. A bad file changes nothing.
public final class SettingsReloader: Sendable {
    private let current: Mutex<IngestConfiguration>
    private let environment: [String: String]
    private let flags: [String: String]
    private let logger: Logger
    private let metrics: IngestMetrics

    public init(_ configuration: IngestConfiguration, environment: [String: String], flags: [String: String], logger: Logger) {
        current = Mutex(configuration)
        self.environment = environment
        self.flags = flags
        self.logger = logger
        self.metrics = .shared
    }

    public func reload() {
        let next: IngestConfiguration
        do {
            next = try IngestConfiguration.resolve(environment: environment, flags: flags)
        } catch {
            metrics.configReloads(.failed).increment()
            logger.error(
                "settings not reloaded: keeping the current ones",
                metadata: ["event": "config.reload_failed", "error": "\(error)"]
            )
            return
        }
        let changed = current.withLock { old -> [String] in
            let changed = next.changedSettings(comparedTo: old)
            old.logLevel = next.logLevel
            return changed
        }
        LineLogHandler.setLevel(Logger.Level(rawValue: next.logLevel) ?? .info)
        metrics.configReloads(.ok).increment()
        logger.lifecycle.notice(
            "settings reloaded",
            metadata: [
                "event": "config.reloaded", "log_level": "\(next.logLevel)",
                "applied": "\(changed.filter { IngestConfiguration.reloadable.contains($0) }.joined(separator: ","))",
                "restart_required": "\(changed.filter { !IngestConfiguration.reloadable.contains($0) }.joined(separator: ","))",
                "config_file": "\(IngestConfiguration.configFilePath(environment: environment, flags: flags) ?? "")",
            ]
        )
    }
}
