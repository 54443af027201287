import Dispatch
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Runs the server until SIGTERM or SIGINT: publisher, listener, then a bounded stop.
///
/// A first, simple stop: close the listener, give queued packets up to 5 s to reach Redis, exit.
/// The full drain (readiness, in-flight ACKs, SHUTDOWN_TIMEOUT_MS, second signal) belongs to the
/// Lifecycle issue.
public struct IngestProcess {
    let configuration: IngestConfiguration
    let logger: Logger

    public init(configuration: IngestConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        logger.info(
            "starting",
            metadata: [
                "event": "server.starting", "redis": "\(configuration.redisURL)", "stream": "\(configuration.telemetryStream)",
                "max_frame_bytes": "\(configuration.maxFrameBytes)", "max_connections": "\(configuration.maxConnections)",
            ]
        )
        let publisher = RedisPublisher(
            configuration: PublisherConfiguration(
                redis: configuration.redisURL,
                queueCapacity: configuration.publishQueueCapacity,
                redisTimeoutMs: configuration.redisTimeoutMs
            ),
            logger: logger
        )
        publisher.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let server = IngestServer(configuration: configuration, publisher: publisher, logger: logger, group: group)
        do {
            _ = try await server.start()
        } catch {
            logger.critical("cannot listen", metadata: ["event": "server.listen_failed", "error": "\(error)"])
            publisher.stop(deadline: .now())
            try? await group.shutdownGracefully()
            throw error
        }
        let signal = await waitForSignal([SIGTERM, SIGINT])
        logger.info("stopping", metadata: ["event": "server.stopping", "signal": "\(signal)"])
        await server.stopAccepting()
        publisher.stop(deadline: .now() + .seconds(5))
        try? await group.shutdownGracefully()
        logger.info("stopped", metadata: ["event": "server.stopped"])
    }
}

/// Suspends until one of `signals` arrives; returns its number.
func waitForSignal(_ signals: [Int32]) async -> Int32 {
    await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
        let queue = DispatchQueue(label: "signals")
        let once = SignalOnce(continuation)
        for s in signals {
            signal(s, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: s, queue: queue)
            source.setEventHandler { once.fire(s) }
            source.resume()
            once.keep(source)
        }
    }
}

/// Resumes a continuation on the first signal only (touched only on the signal queue after setup).
private final class SignalOnce: @unchecked Sendable {
    private var continuation: CheckedContinuation<Int32, Never>?
    private var sources: [any DispatchSourceSignal] = []

    init(_ continuation: CheckedContinuation<Int32, Never>) { self.continuation = continuation }

    func keep(_ source: any DispatchSourceSignal) { sources.append(source) }

    func fire(_ signal: Int32) {
        continuation?.resume(returning: signal)
        continuation = nil
    }
}
