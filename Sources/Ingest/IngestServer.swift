import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import Synchronization

/// The device listener: accepts connections up to `MAX_CONNECTIONS`, gives each an idle timeout and a
/// ``DeviceSessionHandler``, and backs off accepting when the process runs out of file descriptors.
public final class IngestServer: Sendable {
    private let environment: SessionEnvironment
    private let group: any EventLoopGroup
    /// Open device connections, by identity (their count is what MAX_CONNECTIONS bounds).
    private let channels = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
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
            // The bounded reader (see DeviceSessionHandler): one read of at most 16 KiB per loop tick, so
            // a connection whose frame is in flight receives at most one read more before it stops.
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: DeviceSessionHandler.readChunkBytes)
            )
            .childChannelInitializer { [self] channel in
                guard admit(channel) else {
                    IngestMetrics.shared.connections(result: .refused).increment()
                    return channel.close()
                }
                IngestMetrics.shared.connections(result: .accepted).increment()
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
        let id = ObjectIdentifier(channel)
        let admitted = channels.withLockedValue { open -> Bool in
            guard open.count < environment.configuration.maxConnections else { return false }
            open[id] = channel
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { [channels] _ in _ = channels.withLockedValue { $0.removeValue(forKey: id) } }
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

    /// Open device connections.
    public var connectionCount: Int { channels.withLockedValue { $0.count } }

    /// Packets published but not yet ACKed or given up.
    public var packetsInFlight: Int { environment.packetsInFlight.load(ordering: .relaxed) }

    /// Tells every session to stop reading; packets in flight still complete and get their ACK.
    public func drainSessions() {
        for channel in channels.withLockedValue({ Array($0.values) }) {
            channel.pipeline.fireUserInboundEventTriggered(SessionDrain())
        }
    }

    /// Waits until no packet is in flight, or `deadline`; returns the packets still in flight.
    public func waitForPacketsInFlight(until deadline: NIODeadline) async -> Int {
        while packetsInFlight > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        return packetsInFlight
    }

    /// Closes every device connection and waits (at most until `deadline`) for them to close.
    public func closeAll(until deadline: NIODeadline) async {
        let open = channels.withLockedValue { Array($0.values) }
        for channel in open { channel.close(promise: nil) }
        while connectionCount > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}
