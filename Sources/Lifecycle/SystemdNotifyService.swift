/// READY=1, WATCHDOG=1 and the process' liveness, as a service beside the server's.
import Logging
import ServiceLifecycle

/// Feeds systemd: `READY=1` once the server says it is ready to take devices, then, with `WatchdogSec=`,
/// `WATCHDOG=1` every half interval for as long as the server says it is alive. A process whose event
/// loops hang stops pinging and systemd kills it (SIGABRT: the crash handler's line and a backtrace),
/// then restarts it. `STOPPING=1` is the caller's to send when the drain begins (``SystemdNotifier``).
///
/// List it first among the services: the group stops services in reverse order, so it keeps pinging
/// through the drain and stops last.
public struct SystemdNotifyService: Service {
    let notifier: SystemdNotifier
    let isReady: @Sendable () -> Bool
    let isAlive: @Sendable () async -> Bool
    let logger: Logger

    /// - Parameters:
    ///   - isReady: true once the listeners are bound (checked every 20 ms until then).
    ///   - isAlive: the liveness check behind each ping (`/healthz`'s: every event loop answers).
    public init(
        notifier: SystemdNotifier,
        isReady: @escaping @Sendable () -> Bool,
        isAlive: @escaping @Sendable () async -> Bool,
        logger: Logger
    ) {
        self.notifier = notifier
        self.isReady = isReady
        self.isAlive = isAlive
        self.logger = logger
    }

    public func run() async throws {
        while !isReady() {
            if Task.isShuttingDownGracefully { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        notifier.notify("READY=1\nSTATUS=serving devices")
        logger.info(
            "told systemd: ready",
            metadata: [
                "event": "process.systemd_ready", "notify_socket": "\(notifier.socketPath)",
                "watchdog_ms": .stringConvertible(notifier.watchdogInterval.map { $0.milliseconds * 2 } ?? 0),
            ]
        )
        guard let interval = notifier.watchdogInterval else {
            try? await gracefulShutdown()
            return
        }
        var missed = 0
        while !Task.isShuttingDownGracefully {
            if await isAlive() {
                notifier.notify("WATCHDOG=1")
                missed = 0
            } else {
                missed += 1
                logger.warning(
                    "not alive: no watchdog ping for systemd",
                    metadata: ["event": "process.watchdog_missed", "missed": .stringConvertible(missed)]
                )
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
