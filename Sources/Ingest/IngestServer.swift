/// The device listeners (TCP, and TLS with TLS_PORT): one admission (MAX_CONNECTIONS), the session pipeline,
/// and the device half of the drain.
import Dispatch
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Prometheus
import Synchronization

/// The device listeners: the TCP port and, with `TLS_PORT`, the TLS port, which share one admission (at most
/// `MAX_CONNECTIONS` connections over both), one set of open connections (the drain waits for all of them)
/// and one session pipeline: a ``DeviceSessionHandler`` (idle timeout included), behind ``NIOSSLServerHandler``
/// and ``DeviceTLSHandler`` on the TLS port. Each backs off accepting when the process runs out of file
/// descriptors.
public final class IngestServer: Sendable {
    /// What every session shares (and the UDP listener, which publishes through the same parts).
    let environment: SessionEnvironment
    private let group: any EventLoopGroup
    /// Open device connections, by identity (their count is what MAX_CONNECTIONS bounds); whether the
    /// server drains (no more are admitted); who waits for the last one to close.
    /// `counted`: the address each connection counts against in `perAddress` (a connection behind a PROXY
    /// header is counted once its header named the device).
    private let connections = NIOLockedValueBox(
        (
            open: [ObjectIdentifier: any Channel](), perAddress: [String: Int](), counted: [ObjectIdentifier: String](),
            draining: false, waiters: [ResumeOnce<Bool>](), refusalLog: LogLimiter()
        )
    )
    /// The listeners: the TCP port, and the TLS port when there is one.
    private let serverChannels = NIOLockedValueBox<[any Channel]>([])

    public convenience init(configuration: IngestConfiguration, publisher: RedisPublisher, logger: Logger, group: any EventLoopGroup) {
        self.init(configuration: configuration, publisher: publisher, logger: logger, group: group, metrics: .shared)
    }

    init(
        configuration: IngestConfiguration,
        publisher: any PublishSink,
        logger: Logger,
        group: any EventLoopGroup,
        metrics: IngestMetrics,
        authority: DeviceAuthority = DeviceAuthority(mode: .allowAll),
        commands: CommandDelivery? = nil,
        directory: DeviceRegistration? = nil
    ) {
        self.environment = SessionEnvironment(
            configuration: configuration,
            publisher: publisher,
            logger: logger,
            metrics: metrics,
            authority: authority,
            commands: commands,
            directory: directory
        )
        self.group = group
    }

    /// Binds the TCP listener (`TELTONIKA_HOST:TELTONIKA_PORT`); returns the bound address (the real port when
    /// `TELTONIKA_PORT` is 0).
    public func start() async throws -> SocketAddress {
        let address = try await listen(port: environment.configuration.port, tls: nil)
        environment.logger.lifecycle.info(
            "listening for devices",
            metadata: ["event": "server.listening", "address": "\(address)", "port": .stringConvertible(address.port ?? 0)]
        )
        return address
    }

    /// Binds the TLS listener (`TELTONIKA_HOST:TLS_PORT`): the same sessions, admission and drain as TCP, each
    /// connection behind a TLS handler made from the context in force when it is accepted.
    public func startTLS(_ tls: DeviceTLSContext) async throws -> SocketAddress {
        let address = try await listen(port: tls.options.port ?? 0, tls: tls)
        let options = tls.options
        environment.logger.lifecycle.info(
            "listening for devices over TLS",
            metadata: [
                "event": "server.tls_listening", "address": "\(address)", "port": .stringConvertible(address.port ?? 0),
                "min_version": "\(options.minimumVersion.rawValue)",
                "client_certificates": "\(options.clientCAFile == nil ? "off" : "required")",
                "certificate_imei": "\(options.clientCertIMEI ? "on" : "off")",
                "certificate_serial": "\(tls.current.serial)", "certificate_not_after": .stringConvertible(tls.current.notAfter),
            ]
        )
        return address
    }

    /// One device listener on `port`; with `tls`, every connection's pipeline starts with TLS.
    private func listen(port: Int, tls: DeviceTLSContext?) async throws -> SocketAddress {
        let configuration = environment.configuration
        let (metrics, logger) = (environment.metrics, environment.logger)
        // One limiter for the listener: a scanner opening many connections writes one line per 10 s.
        let handshakeFailureLog = NIOLockedValueBox(LogLimiter())
        let proxy = ProxyListener(
            environment: environment,
            refusalLog: NIOLockedValueBox(LogLimiter()),
            admitDevice: { [self] channel, address in admitAddress(channel, address: address) }
        )
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        AcceptBackoffHandler(),
                        AcceptErrorHandler(metrics: metrics, logger: logger)
                    )
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            // The bounded reader (see DeviceSessionHandler): one read of at most 16 KiB per loop tick, so
            // a connection whose frame is in flight receives at most one read more before it stops.
            .childChannelOption(.maxMessagesPerRead, value: 1)
            // NIO keeps each connection's last receive buffer for the next read: starting at 256 bytes (a
            // login, a one-record packet) instead of 2 KiB, an idle connection holds 256; a device sending
            // larger packets grows its own (doubling per full read, up to 16 KiB).
            .childChannelOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: DeviceSessionHandler.readChunkBytes)
            )
            .childChannelInitializer { [self] channel in
                let mode = configuration.proxyProtocol
                let trusted = mode != .off && configuration.proxyTrustedCIDRs.contains(channel.remoteAddress)
                if mode == .v2, !trusted {
                    metrics.proxyRefusals(.untrusted).increment()
                    ProxyHeaderHandler.log(
                        proxy,
                        .untrusted,
                        detail: "connection from outside PROXY_TRUSTED_CIDRS",
                        peer: channel.remoteAddress
                    )
                    return channel.close()
                }
                // Behind a trusted load balancer the device's address is known only after its header.
                guard admit(channel, countAddress: !trusted) else { return channel.close() }
                let proxyHandler = mode == .off ? nil : ProxyHeaderHandler(listener: proxy, trusted: trusted, required: mode == .v2)
                return channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    if let proxyHandler { try pipeline.addHandler(proxyHandler) }
                    if let tls {
                        let handler = NIOSSLServerHandler(context: tls.current.context)
                        try pipeline.addHandler(handler)
                        try pipeline.addHandler(
                            DeviceTLSHandler(
                                tls: handler,
                                metrics: metrics,
                                logger: logger,
                                failureLog: handshakeFailureLog,
                                deviceAddress: { [environment] in environment.deviceAddress(of: $0) },
                                reportsCertificateName: tls.options.clientCertIMEI
                            )
                        )
                    }
                    try pipeline.addHandler(
                        DeviceSessionHandler(environment: environment, certificateNamesIMEI: tls?.options.clientCertIMEI == true)
                    )
                }
            }
        let channel = try await bootstrap.bind(host: configuration.host, port: port).get()
        serverChannels.withLockedValue { $0.append(channel) }
        return channel.localAddress!
    }

    /// Counts the connection in, or refuses it (counted, logged at most once per 10 s): once draining, at
    /// `MAX_CONNECTIONS`, and (with `countAddress`) as ``admitAddress(_:address:)`` does for its peer address.
    /// Releases the slot when it closes. Without `countAddress` (a trusted load balancer's connection, whose
    /// PROXY header is still to come) the device's address is admitted later, by the proxy handler.
    private func admit(_ channel: any Channel, countAddress: Bool) -> Bool {
        let id = ObjectIdentifier(channel)
        let configuration = environment.configuration
        let refusal = connections.withLockedValue { c -> RefusalReason? in
            if c.draining { return .draining }
            if c.open.count >= configuration.maxConnections { return .maxConnections }
            c.open[id] = channel
            return nil
        }
        if let refusal { return refused(channel, refusal, peer: channel.remoteAddress) }
        channel.closeFuture.whenComplete { [connections] _ in
            let waiters = connections.withLockedValue { c -> [ResumeOnce<Bool>] in
                c.open.removeValue(forKey: id)
                if let address = c.counted.removeValue(forKey: id) {
                    let left = c.perAddress[address, default: 1] - 1
                    c.perAddress[address] = left > 0 ? left : nil
                }
                guard c.open.isEmpty else { return [] }
                defer { c.waiters = [] }
                return c.waiters
            }
            for waiter in waiters { waiter.resume(true) }
        }
        return countAddress ? admitAddress(channel, address: channel.remoteAddress) : true
    }

    /// Counts an open connection against the device address `address`, or refuses it (counted, logged): at
    /// `MAX_CONNECTIONS_PER_IP` from that address, or while its failed logins are over
    /// `MAX_LOGIN_FAILURES_PER_IP`. The caller closes a refused connection.
    private func admitAddress(_ channel: any Channel, address: SocketAddress?) -> Bool {
        let id = ObjectIdentifier(channel)
        let ip = address?.ipAddress ?? ""
        let configuration = environment.configuration
        let loginsAllowed = environment.admitsLogins(from: address)
        let refusal = connections.withLockedValue { c -> RefusalReason? in
            guard c.open[id] != nil else { return nil }  // closed meanwhile: nothing to count
            if c.perAddress[ip, default: 0] >= configuration.maxConnectionsPerIP { return .perAddress }
            if !loginsAllowed { return .loginFailures }
            c.perAddress[ip, default: 0] += 1
            c.counted[id] = ip
            return nil
        }
        if let refusal { return refused(channel, refusal, peer: address) }
        environment.metrics.connections(result: .accepted).increment()
        return true
    }

    /// Counts and (at most once per 10 s) logs a refused connection; returns false.
    private func refused(_ channel: any Channel, _ refusal: RefusalReason, peer: SocketAddress?) -> Bool {
        let now = NIODeadline.now().uptimeNanoseconds
        let logLine = connections.withLockedValue { $0.refusalLog.admit(nowNanoseconds: now) }
        environment.metrics.connections(result: .refused).increment()
        environment.metrics.refusals(refusal).increment()
        if let suppressed = logLine {
            environment.logger.warning(
                "connection refused",
                metadata: [
                    "event": "server.connection_refused", "reason": "\(refusal.rawValue)", "peer": "\(peerString(peer))",
                    "suppressed": .stringConvertible(suppressed),
                ]
            )
        }
        return false
    }

    /// Stops accepting (every listener closes); open connections are left to the caller.
    public func stopAccepting() async {
        let channels = serverChannels.withLockedValue { c -> [any Channel] in
            defer { c = [] }
            return c
        }
        for channel in channels { try? await channel.close() }
    }

    /// Open device connections.
    public var connectionCount: Int { connections.withLockedValue { $0.open.count } }

    /// Packets published but not yet ACKed or given up.
    public var packetsInFlight: Int { environment.packetsInFlight.load(ordering: .relaxed) }

    /// The drain's device half: every session stops reading and closes itself, at once or once its
    /// frame in flight is answered (a packet's ACK written first). Waits for the last connection to
    /// close, or `deadline`; then closes what is left. Returns the packets that were still unanswered
    /// at the deadline (never ACKed: their devices resend them) and the connections it had to cut.
    public func drainSessions(until deadline: NIODeadline) async -> (packetsInFlight: Int, connectionsCut: Int) {
        let open = connections.withLockedValue { c -> [any Channel] in
            c.draining = true
            return Array(c.open.values)
        }
        for channel in open { channel.pipeline.fireUserInboundEventTriggered(SessionDrain()) }
        if await allClosed(by: deadline) { return (0, 0) }
        let unanswered = packetsInFlight
        let left = connections.withLockedValue { Array($0.open.values) }
        for channel in left { channel.close(promise: nil) }
        _ = await allClosed(by: .now() + .milliseconds(500))
        return (unanswered, left.count)
    }

    /// True once no connection is open, false at `deadline` if some still are. No polling: the last
    /// close resumes it; a Dispatch timer answers at the deadline.
    private func allClosed(by deadline: NIODeadline) async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let once = ResumeOnce(continuation)
            let empty = connections.withLockedValue { c -> Bool in
                if !c.open.isEmpty { c.waiters.append(once) }
                return c.open.isEmpty
            }
            if empty { return once.resume(true) }
            let seconds = Double(max(0, (deadline - .now()).nanoseconds)) / 1e9
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { once.resume(false) }
        }
    }
}

/// Counts and logs what `accept` fails with on the device listener (after `AcceptBackoffHandler` paused
/// accepting): out of file descriptors (`EMFILE`/`ENFILE`) is the one that matters, as devices then wait
/// in the backlog or time out while the server would otherwise say nothing. One log line per 10 s.
final class AcceptErrorHandler: ChannelInboundHandler {
    typealias InboundIn = Any

    private let metrics: IngestMetrics
    private let logger: Logger
    private var limiter = LogLimiter()

    init(metrics: IngestMetrics, logger: Logger) {
        self.metrics = metrics
        self.logger = logger
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let fdLimit = (error as? IOError).map { $0.errnoCode == EMFILE || $0.errnoCode == ENFILE } ?? false
        metrics.acceptErrors(fdLimit ? .fdLimit : .other).increment()
        if let suppressed = limiter.admit(nowNanoseconds: NIODeadline.now().uptimeNanoseconds) {
            logger.error(
                "cannot accept device connections",
                metadata: [
                    "event": "server.accept_failed", "error": "\(error)", "reason": "\(fdLimit ? "fd_limit" : "other")",
                    "suppressed": .stringConvertible(suppressed),
                ]
            )
        }
    }
}
