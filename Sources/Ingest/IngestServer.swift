import CoreMetrics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The device listener: accepts connections up to `MAX_CONNECTIONS`, gives each an idle timeout and a
/// ``DeviceSessionHandler``, and backs off accepting when the process runs out of file descriptors.
public final class IngestServer: Sendable {
    private let environment: SessionEnvironment
    private let group: any EventLoopGroup
    private let active = NIOLockedValueBox(0)
    private let serverChannel = NIOLockedValueBox<(any Channel)?>(nil)

    public init(configuration: IngestConfiguration, publisher: RedisPublisher, logger: Logger, group: any EventLoopGroup) {
        self.environment = SessionEnvironment(configuration: configuration, publisher: publisher, logger: logger)
        self.group = group
    }

    /// Binds the listener; returns the bound address (the real port when `TELTONIKA_PORT` is 0).
    public func start() async throws -> SocketAddress {
        let configuration = environment.configuration
        let idle = TimeAmount.milliseconds(Int64(configuration.idleTimeoutMs))
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler())
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelInitializer { [self] channel in
                guard admit(channel) else {
                    IngestMetrics.connections(result: "refused").increment()
                    return channel.close()
                }
                IngestMetrics.connections(result: "accepted").increment()
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        IdleStateHandler(readTimeout: idle),
                        DeviceSessionHandler(environment: environment)
                    )
                }
            }
        let channel = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        serverChannel.withLockedValue { $0 = channel }
        let address = channel.localAddress!
        environment.logger.info(
            "listening for devices",
            metadata: ["event": "server.listening", "address": "\(address)", "port": "\(address.port ?? 0)"]
        )
        return address
    }

    /// Counts the connection in, or refuses it at the limit; releases the slot when it closes.
    private func admit(_ channel: any Channel) -> Bool {
        let admitted = active.withLockedValue { n -> Bool in
            guard n < environment.configuration.maxConnections else { return false }
            n += 1
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { [active] _ in active.withLockedValue { $0 -= 1 } }
        } else {
            environment.logger.warning("connection refused: at MAX_CONNECTIONS", metadata: ["event": "server.connection_refused"])
        }
        return admitted
    }

    /// Stops accepting (the listener closes); open connections are left to the caller.
    public func stopAccepting() async {
        let channel = serverChannel.withLockedValue { c -> (any Channel)? in
            defer { c = nil }
            return c
        }
        try? await channel?.close()
    }
}
