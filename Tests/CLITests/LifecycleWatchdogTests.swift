import Foundation
import Lifecycle
import Logging
import ServiceLifecycle
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The drain's last resort: when the services overrun `SHUTDOWN_TIMEOUT_MS` plus the margin (a drain
/// that does not end by itself, which takes a bug), the watchdog logs `process.shutdown_timeout` and the
/// process exits 1. Run in a child process (an exit test): it ends the process.
@Suite(.timeLimit(.minutes(1))) struct LifecycleWatchdogTests {
    /// A service that ignores the graceful shutdown.
    struct Stubborn: Service {
        func run() async throws {
            while true { try? await Task.sleep(for: .seconds(60)) }
        }
    }

    @Test func testTheWatchdogExitsOneWhenTheDrainOverrunsItsDeadline() async {
        let result = await #expect(processExitsWith: .exitCode(1), observing: [\.standardErrorContent, \.standardOutputContent]) {
            var lifecycle = ProcessLifecycle(shutdownTimeout: .milliseconds(200), logger: Logger(label: "watchdog-test"))
            lifecycle.watchdogMargin = .milliseconds(100)
            Thread.detachNewThread {
                Thread.sleep(forTimeInterval: 0.3)
                kill(getpid(), SIGTERM)
            }
            try? await lifecycle.run(services: [Stubborn()], onShutdown: {}, onReload: {})
            exit(0)  // not reached: the drain never ends, and only the watchdog can end the process
        }
        let output = String(decoding: (result?.standardErrorContent ?? []) + (result?.standardOutputContent ?? []), as: UTF8.self)
        #expect(output.contains("process.shutdown_timeout"), "\(output.suffix(500))")
    }
}
