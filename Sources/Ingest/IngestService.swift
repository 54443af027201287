/// The device server as a ServiceLifecycle service: start, readiness, and the drain under one deadline.
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import RedisWire
import ServiceLifecycle
import Synchronization

/// What a drain left undone. Empty means every packet that was read got its ACK and every queued
/// record reached Redis.
public struct DrainReport: Sendable, Equatable {
    /// Packets whose publish had not completed at the deadline (never ACKed: the devices resend them).
    public var packetsInFlight: Int
    /// Records Redis had not confirmed at the deadline (never ACKed).
    public var abandonedRecords: Int
    /// Device connections still open at the deadline, closed by the server (a session that had
    /// answered its frame in flight would have closed itself).
    public var connectionsCut: Int
    /// False when the Redis thread was stuck in a call at the deadline (Redis hung).
    public var publisherFinished: Bool
    public var seconds: Double

    public var isClean: Bool { packetsInFlight == 0 && abandonedRecords == 0 && publisherFinished }
}

/// Readiness and liveness of the device server, for `/readyz`, `/healthz` and `teltonika_ready`.
public final class ServerHealth: Sendable {
    let listening = Atomic<Bool>(false)
    let draining = Atomic<Bool>(false)
    let publisher: RedisPublisher
    let eventLoops: any EventLoopGroup
    let authority: DeviceAuthority

    init(publisher: RedisPublisher, eventLoops: any EventLoopGroup, authority: DeviceAuthority = DeviceAuthority(mode: .allowAll)) {
        self.publisher = publisher
        self.eventLoops = eventLoops
        self.authority = authority
    }

    /// Ready: listener bound, Redis connected, not draining, the allowlist loaded (when there is one).
    /// Otherwise the first reason that applies.
    public var readiness: (ready: Bool, reason: String) {
        if draining.load(ordering: .relaxed) { return (false, "draining") }
        if !listening.load(ordering: .relaxed) { return (false, "not listening") }
        if !authority.isLoaded { return (false, "allowlist not loaded") }
        if !publisher.isConnected { return (false, "redis down") }
        return (true, "ok")
    }

    /// True once every device listener is bound (systemd's `READY=1` waits for it).
    public var isListening: Bool { listening.load(ordering: .relaxed) }

    /// Succeeds when every device event loop ran a no-op task within `timeout` (`/healthz`, and the
    /// systemd watchdog's pings).
    public func eventLoopsRespond(on loop: any EventLoop, timeout: TimeAmount) -> EventLoopFuture<Bool> {
        let pings = eventLoops.makeIterator().map { $0.submit {} }
        let all = EventLoopFuture.andAllSucceed(pings, on: loop).map { true }
        let promise = loop.makePromise(of: Bool.self)
        let timer = loop.scheduleTask(in: timeout) { promise.succeed(false) }
        all.whenComplete { result in
            timer.cancel()
            promise.succeed((try? result.get()) ?? false)
        }
        return promise.futureResult
    }
}

/// The device server as a service: publisher, event loops and listener; on graceful shutdown, the drain.
///
/// Drain, in order (OPERATIONS.md, "Signals and shutdown"): readiness false; the listener closes;
/// every session stops reading, finishes its frame in flight (a packet published, then ACKed) and
/// closes itself; the publish queue drains to Redis; the Redis connection closes. All of it is bounded
/// by the deadline set when shutdown began (`SHUTDOWN_TIMEOUT_MS`); what is left then is reported in
/// the ``DrainReport`` and the process exits 1.
public final class IngestService: Service, Sendable {
    public let health: ServerHealth
    private let configuration: IngestConfiguration
    private let logger: Logger
    private let publisher: RedisPublisher
    /// Where Redis is, for the start line (no password).
    private let redisDescription: String
    private let metrics: IngestMetrics
    private let group: MultiThreadedEventLoopGroup
    /// The device event loops (`EVENT_LOOP_THREADS`, or one per core).
    private let eventLoopCount: Int
    private let authority: DeviceAuthority
    /// Where the allowlist comes from (nil in `allow_all`).
    private let allowlistSource: (any AllowlistSource)?
    private let refresher = NIOLockedValueBox<AllowlistRefresher?>(nil)
    /// The TLS port's context (nil without `TLS_PORT`).
    private let deviceTLS: DeviceTLSContext?
    /// The second Redis connection (device registry, downlink commands); nil when both are off.
    private let side: RedisSideChannel?
    /// Downlink commands in Redis (nil with `COMMANDS=off`).
    private let commandStore: RedisCommandStore?
    /// The device registry (nil with `DEVICE_REGISTRY=off`).
    private let directory: RedisDeviceDirectory?
    private let connector: any RedisConnector
    private let noticeReader = NIOLockedValueBox<NoticeReader?>(nil)
    private let state = NIOLockedValueBox<
        (deadline: NIODeadline?, report: DrainReport?, address: SocketAddress?, tlsAddress: SocketAddress?, udpAddress: SocketAddress?)
    >(
        (nil, nil, nil, nil, nil)
    )

    /// - Parameters:
    ///   - tls: the context for `rediss://` (``IngestConfiguration/makeRedisTLSContext()``).
    ///   - deviceTLS: the TLS port's context (``IngestConfiguration/makeDeviceTLSContext()``).
    public convenience init(
        configuration: IngestConfiguration,
        logger: Logger,
        tls: RedisTLSContext? = nil,
        deviceTLS: DeviceTLSContext? = nil
    ) {
        self.init(
            configuration: configuration,
            logger: logger,
            connector: IngestService.connector(for: configuration, tls: tls, logger: logger),
            metrics: .shared,
            deviceTLS: deviceTLS
        )
    }

    /// Redis as configured: `REDIS_URL`, the primary the Sentinels name, or a Redis Cluster.
    static func connector(
        for configuration: IngestConfiguration,
        tls: RedisTLSContext? = nil,
        logger: Logger = Logger(label: "teltonika-ingest"),
        metrics: IngestMetrics = .shared
    ) -> any RedisConnector {
        if configuration.redisMode == .cluster {
            return ClusterConnector(
                seeds: ClusterConnector.seeds(of: configuration),
                template: configuration.redisURL,
                timeoutMs: configuration.redisTimeoutMs,
                tls: tls,
                logger: logger,
                metrics: metrics.cluster
            )
        }
        if configuration.redisSentinels.isEmpty {
            return HiredisConnector(url: configuration.redisURL, timeoutMs: configuration.redisTimeoutMs, tls: tls)
        }
        return SentinelConnector(
            sentinels: configuration.redisSentinels,
            masterName: configuration.redisMasterName,
            primary: configuration.redisURL,
            timeoutMs: configuration.redisTimeoutMs,
            tls: tls
        )
    }

    /// With the Redis connector and the metrics registry given (in-process tests pass a fake Redis
    /// and a registry of their own).
    init(
        configuration: IngestConfiguration,
        logger: Logger,
        connector: any RedisConnector,
        metrics: IngestMetrics,
        deviceTLS: DeviceTLSContext? = nil
    ) {
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
        self.deviceTLS = deviceTLS
        if let deviceTLS { metrics.tlsCertificateExpiry.set(deviceTLS.current.notAfter) }
        redisDescription = connector.description
        self.connector = connector
        if configuration.commandsEnabled || configuration.deviceRegistryEnabled {
            let instance = configuration.instanceID.isEmpty ? ProcessInfo.processInfo.hostName : configuration.instanceID
            side = RedisSideChannel(instance: instance, connector: connector, errors: metrics.commands.storeErrors, logger: logger)
        } else {
            side = nil
        }
        commandStore = side.flatMap { side in
            guard configuration.commandsEnabled else { return nil }
            return RedisCommandStore(
                settings: CommandStoreSettings(
                    keys: CommandKeys(prefix: configuration.commandPrefix),
                    eventsStream: configuration.commandEventsStream,
                    eventsMaxLength: configuration.commandEventsMaxLength,
                    noticesStream: configuration.noticesStream,
                    leaseMs: configuration.commandTimeoutMs + configuration.commandLateGraceMs + 2_000,
                    retentionMs: 86_400_000
                ),
                side: side,
                metrics: metrics.commands,
                logger: logger
            )
        }
        directory = side.flatMap { side in
            guard configuration.deviceRegistryEnabled else { return nil }
            return RedisDeviceDirectory(
                keys: DeviceKeys(prefix: configuration.devicePrefix),
                noticesStream: configuration.noticesStream,
                side: side
            )
        }
        var publishing = PublisherConfiguration(
            redis: configuration.redisURL,
            queueCapacity: configuration.publishQueueCapacity,
            redisTimeoutMs: configuration.redisTimeoutMs,
            durabilityCheckMs: configuration.redisCheckIntervalMs,
            minReplicas: configuration.redisMinReplicas,
            replicaTimeoutMs: configuration.redisReplicaTimeoutMs,
            minLocalFsync: configuration.redisMinLocalFsync == 1
        )
        publishing.watchedStreams = configuration.watchedStreams
        self.publisher = RedisPublisher(
            configuration: publishing,
            connector: connector,
            logger: logger,
            metrics: metrics
        )
        self.eventLoopCount = configuration.eventLoopThreads > 0 ? configuration.eventLoopThreads : System.coreCount
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: eventLoopCount)
        self.authority = DeviceAuthority(mode: configuration.deviceAuthorityMode)
        switch configuration.deviceAuthorityMode {
        case .allowAll: allowlistSource = nil
        case .file: allowlistSource = FileAllowlist(path: configuration.deviceAllowlistFile ?? "")
        case .redis: allowlistSource = RedisAllowlist(connector: connector, key: configuration.redisDeviceAllowlistKey)
        }
        self.health = ServerHealth(publisher: publisher, eventLoops: group, authority: authority)
    }

    /// SIGHUP: loads the allowlist again now (nothing in `allow_all`).
    public func refreshAllowlist() {
        refresher.withLockedValue { $0 }?.refreshSoon(reason: "sighup")
    }

    /// The drain's outcome, once `run()` has returned after a shutdown.
    public var drainReport: DrainReport? { state.withLockedValue { $0.report } }

    /// Where the device listener is bound, once it is (the real port when `TELTONIKA_PORT` is 0).
    public var listeningAddress: SocketAddress? { state.withLockedValue { $0.address } }

    /// Where the TLS listener is bound, once it is (nil without `TLS_PORT`).
    public var tlsAddress: SocketAddress? { state.withLockedValue { $0.tlsAddress } }

    /// Where the UDP listener is bound, once it is (nil without `UDP_PORT`).
    public var udpAddress: SocketAddress? { state.withLockedValue { $0.udpAddress } }

    /// Shutdown was asked for (first signal): readiness turns false now, and the drain deadline is
    /// fixed from this moment. Safe to call from any thread, more than once.
    public func beginShutdown() {
        health.draining.store(true, ordering: .relaxed)
        state.withLockedValue { s in
            if s.deadline == nil { s.deadline = .now() + .milliseconds(Int64(configuration.shutdownTimeoutMs)) }
        }
    }

    public func run() async throws {
        var starting: Logger.Metadata = [
            "event": "server.starting", "redis": "\(redisDescription)",
            "min_replicas": .stringConvertible(configuration.redisMinReplicas), "stream": "\(configuration.telemetryStream)",
            "max_frame_bytes": .stringConvertible(configuration.maxFrameBytes),
            "max_connections": .stringConvertible(configuration.maxConnections),
            "event_loops": .stringConvertible(eventLoopCount),
            "version": "\(IngestMetrics.version)", "revision": "\(IngestMetrics.revision)",
        ]
        // A number when the listener is on, absent when it is off (one type per field, for log pipelines).
        starting["udp_port"] = configuration.udpPort.map { .stringConvertible($0) }
        starting["tls_port"] = configuration.deviceTLS.port.map { .stringConvertible($0) }
        logger.lifecycle.info("starting", metadata: starting)
        publisher.start()
        side?.start()
        let commands = commandStore.map { store in
            CommandDelivery(
                store: store,
                metrics: metrics.commands,
                timeout: .milliseconds(Int64(configuration.commandTimeoutMs)),
                lateGrace: .milliseconds(Int64(configuration.commandLateGraceMs)),
                loginGrace: .milliseconds(Int64(configuration.commandLoginGraceMs))
            )
        }
        let server = IngestServer(
            configuration: configuration,
            publisher: publisher,
            logger: logger,
            group: group,
            metrics: metrics,
            authority: authority,
            commands: commands,
            directory: directory.map {
                DeviceRegistration(directory: $0, seenInterval: .milliseconds(Int64(configuration.deviceSeenIntervalMs)))
            }
        )
        if side != nil {
            let registry = server.environment.registry
            let reader = NoticeReader(
                key: configuration.noticesStream,
                connector: connector,
                timeoutMs: configuration.redisTimeoutMs,
                read: metrics.commands.notices,
                errors: metrics.commands.storeErrors,
                logger: logger,
                onNotice: { notice in
                    guard let channel = registry.connection(of: notice.imei) else { return }
                    if let session = notice.session {
                        channel.pipeline.fireUserInboundEventTriggered(SessionLoggedInElsewhere(session: session))
                    } else {
                        channel.pipeline.fireUserInboundEventTriggered(CommandWake())
                    }
                },
                onResync: { for channel in registry.allConnections { channel.pipeline.fireUserInboundEventTriggered(CommandWake()) } }
            )
            reader.start()
            noticeReader.withLockedValue { $0 = reader }
        }
        if let allowlistSource {
            // Loaded before the listener accepts; if it cannot be, every login is refused and /readyz
            // says why until a refresh succeeds.
            let refresher = AllowlistRefresher(
                source: allowlistSource,
                authority: authority,
                registry: server.environment.registry,
                metrics: metrics,
                logger: logger,
                interval: .milliseconds(Int64(configuration.deviceAllowlistRefreshMs))
            )
            refresher.refresh(reason: "start")
            refresher.start()
            self.refresher.withLockedValue { $0 = refresher }
        }
        let udpListener = configuration.udpPort.map { _ in UDPListener(environment: server.environment, group: group) }
        // Each listener in turn; one that cannot bind stops what already runs and ends the service.
        let address = try await listening(server, "\(configuration.host):\(configuration.port)", transport: "tcp") {
            try await server.start()
        }
        state.withLockedValue { $0.address = address }
        if let deviceTLS, let tlsPort = deviceTLS.options.port {
            let address = try await listening(server, "\(configuration.host):\(tlsPort)", transport: "tls") {
                try await server.startTLS(deviceTLS)
            }
            state.withLockedValue { $0.tlsAddress = address }
        }
        if let udpListener, let udpPort = configuration.udpPort {
            let host = configuration.udpHost ?? configuration.host
            let address = try await listening(server, "\(host):\(udpPort)", transport: "udp") {
                try await udpListener.start(host: host, port: udpPort)
            }
            state.withLockedValue { $0.udpAddress = address }
        }
        health.listening.store(true, ordering: .relaxed)
        // Until the service group asks for a graceful shutdown (or is cancelled: then drain all the same).
        try? await gracefulShutdown()
        let report = await drain(server, udp: udpListener)
        state.withLockedValue { $0.report = report }
    }

    /// Binds one listener; when it cannot, logs `server.listen_failed` with its address, stops the listeners
    /// already bound, the publisher and the event loops, and rethrows (exit 1).
    private func listening(
        _ server: IngestServer,
        _ address: String,
        transport: String,
        _ bind: () async throws -> SocketAddress
    ) async throws -> SocketAddress {
        do {
            return try await bind()
        } catch {
            logger.critical(
                "cannot listen",
                metadata: ["event": "server.listen_failed", "error": "\(error)", "address": "\(address)", "transport": "\(transport)"]
            )
            await server.stopAccepting()
            await noticeReader.withLockedValue { $0 }?.stop(deadline: .now() + .seconds(1))
            await side?.stop(deadline: .now() + .seconds(1))
            _ = await publisher.stop(deadline: .now())
            try await group.shutdownGracefully()
            throw error
        }
    }

    /// SIGHUP: the TLS port reads its certificate, key and client CA again; later handshakes use them, open
    /// sessions keep theirs. A file that cannot be used keeps the previous ones (`tls.reload_failed`).
    public func reloadDeviceTLS() {
        guard let deviceTLS else { return }
        switch deviceTLS.reload() {
        case .success(let loaded):
            metrics.tlsReloads(.ok).increment()
            metrics.tlsCertificateExpiry.set(loaded.notAfter)
            logger.lifecycle.notice(
                "TLS certificate reloaded: new handshakes use it",
                metadata: [
                    "event": "tls.reloaded", "certificate_serial": "\(loaded.serial)",
                    "certificate_not_after": .stringConvertible(loaded.notAfter),
                ]
            )
        case .failure(let error):
            metrics.tlsReloads(.failed).increment()
            let kept = deviceTLS.current
            logger.error(
                "TLS certificate not reloaded: keeping the current one",
                metadata: [
                    "event": "tls.reload_failed", "error": "\(error)", "certificate_serial": "\(kept.serial)",
                    "certificate_not_after": .stringConvertible(kept.notAfter),
                ]
            )
        }
    }

    private func drain(_ server: IngestServer, udp: UDPListener?) async -> DrainReport {
        beginShutdown()
        let started = NIODeadline.now()
        let deadline = state.withLockedValue { $0.deadline! }
        // UDP publishes nothing new from here on: a datagram that arrives once the drain is logged is refused.
        let udpDrain = await udp?.beginDrain()
        logger.lifecycle.notice(
            "draining",
            metadata: [
                "event": "server.draining", "connections": .stringConvertible(server.connectionCount),
                "packets_in_flight": .stringConvertible(server.packetsInFlight),
                "queued_records": .stringConvertible(publisher.queuedRecords),
                "timeout_ms": .stringConvertible(configuration.shutdownTimeoutMs),
            ]
        )
        await server.stopAccepting()
        refresher.withLockedValue { $0 }?.stop()
        // The notices reader ends within its block interval, joined after the sessions have drained.
        noticeReader.withLockedValue { $0 }?.beginStop()
        // Sessions finish their frame in flight (the publisher still runs) and close themselves; then
        // the publisher sends what is still queued. One deadline bounds both.
        // Meanwhile UDP publishes nothing new; what it published is answered (ACK) before its socket closes.
        async let udpDrained = udp?.drain(udpDrain, until: deadline) ?? 0
        let drained = await server.drainSessions(until: deadline)
        let udpUnanswered = await udpDrained
        // Sessions closed: what they gave back or ended is written before Redis is let go.
        await side?.stop(deadline: deadline)
        await noticeReader.withLockedValue { $0 }?.stop(deadline: deadline)
        let stopped = await publisher.stop(deadline: deadline)
        if stopped.threadFinished {
            do {
                try await group.shutdownGracefully()
            } catch {
                // Shutting the loops down can only fail if done twice: an invariant broke.
                fatalError("event loop shutdown failed during drain: \(error)")
            }
        }
        return DrainReport(
            packetsInFlight: drained.packetsInFlight + udpUnanswered,
            abandonedRecords: stopped.abandonedRecords,
            connectionsCut: drained.connectionsCut,
            publisherFinished: stopped.threadFinished,
            seconds: Double((NIODeadline.now() - started).nanoseconds) / 1e9
        )
    }
}
