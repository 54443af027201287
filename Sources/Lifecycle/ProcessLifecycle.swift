/// Process life: signals, the drain's watchdog, and the exit status.
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// Process life around a set of services: signals, the bounded shutdown, the exit status.
///
/// - SIGTERM or SIGINT (first): `onShutdown` runs at once (readiness turns false), a watchdog is
///   armed for `shutdownTimeout` plus `watchdogMargin`, and the service group shuts the services down
///   in reverse order (so list the device server last: it drains first, the metrics port stays up).
/// - The same signals again during the drain: exit 1 at once (`process.forced_exit`).
/// - SIGHUP: `onReload` (re-read the runtime-adjustable settings); connections are untouched.
/// - The watchdog firing means the drain overran its own deadline: `process.shutdown_timeout`, exit 1.
public struct ProcessLifecycle: Sendable {
    public var shutdownTimeout: Duration
    /// Time the drain gets past its deadline to report and exit by itself before the watchdog acts.
    public var watchdogMargin: Duration = .seconds(2)
    public var logger: Logger

    public init(shutdownTimeout: Duration, logger: Logger) {
        self.shutdownTimeout = shutdownTimeout
        self.logger = logger
    }

    /// Runs the services until they have all returned (after a shutdown) or one failed (rethrown).
    public func run(
        services: [any Service],
        onShutdown: @escaping @Sendable () -> Void,
        onReload: @escaping @Sendable () -> Void
    ) async throws {
        var configuration = ServiceGroupConfiguration(
            services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
            logger: logger
        )
        // The signals are handled below, not by the group: the group ignores a second SIGTERM.
        configuration.gracefulShutdownSignals = []
        let group = ServiceGroup(configuration: configuration)
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { [self] in
                var shuttingDown = false
                for await signal in signals {
                    if signal == .sighup {
                        logger.info("reload requested", metadata: ["event": "process.reload_requested", "signal": "SIGHUP"])
                        onReload()
                    } else if !shuttingDown {
                        shuttingDown = true
                        logger.notice(
                            "shutdown requested: draining",
                            metadata: [
                                "event": "process.shutdown_requested", "signal": "\(signal)",
                                "timeout_ms": .stringConvertible(shutdownTimeout.milliseconds),
                            ]
                        )
                        onShutdown()
                        armWatchdog()
                        await group.triggerGracefulShutdown()
                    } else {
                        logger.critical(
                            "second signal during the drain: exiting now; records not yet confirmed were not ACKed",
                            metadata: ["event": "process.forced_exit", "signal": "\(signal)", "exit_code": .stringConvertible(1)]
                        )
                        _exit(ExitStatus.failure.rawValue)
                    }
                }
            }
            try await group.run()
            tasks.cancelAll()
        }
    }

    private func armWatchdog() {
        let limit = shutdownTimeout + watchdogMargin
        let logger = self.logger
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: limit.seconds)
            logger.critical(
                "shutdown did not finish in time: exiting; records not yet confirmed were not ACKed",
                metadata: [
                    "event": "process.shutdown_timeout", "limit_ms": .stringConvertible(limit.milliseconds),
                    "exit_code": .stringConvertible(1),
                ]
            )
            _exit(ExitStatus.failure.rawValue)
        }
    }
}

extension Duration {
    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
