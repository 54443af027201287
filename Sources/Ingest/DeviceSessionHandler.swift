/// One device connection's channel handler: the bounded reader, carrying out what the session machine decides.
import Codec8
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import RedisWire
import Synchronization

/// Where a session's publish jobs go: the Redis publisher, or a fake in unit tests.
protocol PublishSink: Sendable {
    /// Queues a job; false (and the job untouched) when the queue has no room.
    func submit(_ job: PublishJob) -> Bool
}

extension RedisPublisher: PublishSink {}

/// What every session of the server shares.
final class SessionEnvironment: Sendable {
    let configuration: IngestConfiguration
    let publisher: any PublishSink
    /// Where this server's metrics are recorded (the process-wide registry, or a test's own).
    let metrics: IngestMetrics
    let registry: DeviceRegistry
    let logger: Logger
    /// One entry encoder per event-loop thread (its 8 KiB scratch is not paid per connection).
    let encoders = ThreadSpecificVariable<EncoderBox>()
    /// Sessions with a packet published but not yet answered (ACK or close): what a drain waits for.
    let packetsInFlight = Atomic<Int>(0)
    /// Receive-buffer bytes across connections beyond each one's allowance (`MAX_BUFFERED_BYTES`).
    let bufferBudget: BufferBudget
    /// Failed logins by source address (`MAX_LOGIN_FAILURES_PER_IP`), shared by every event loop.
    let loginFailures: NIOLockedValueBox<LoginFailureLimiter>?
    /// The devices' addresses that PROXY headers named (see ``deviceAddress(of:)``).
    let deviceAddresses = DeviceAddresses()

    /// Which IMEIs may log in (and send datagrams).
    let authority: DeviceAuthority
    /// Downlink commands (nil with `COMMANDS=off`).
    let commands: CommandDelivery?
    /// The device registry in Redis (nil with `DEVICE_REGISTRY=off`).
    let directory: DeviceRegistration?
    /// One `device.unknown` line per 10 s across connections (a scanner cannot flood the log).
    private let unknownDeviceLog = NIOLockedValueBox(LogLimiter())

    init(
        configuration: IngestConfiguration,
        publisher: any PublishSink,
        logger: Logger,
        metrics: IngestMetrics = .shared,
        authority: DeviceAuthority = DeviceAuthority(mode: .allowAll),
        commands: CommandDelivery? = nil,
        directory: DeviceRegistration? = nil
    ) {
        self.configuration = configuration
        self.authority = authority
        self.commands = commands
        self.directory = directory
        self.publisher = publisher
        self.metrics = metrics
        self.logger = logger
        registry = DeviceRegistry { [metrics] online in metrics.devicesOnline.set(Int64(online)) }
        bufferBudget = BufferBudget(limit: configuration.maxBufferedBytes)
        let budget = configuration.maxLoginFailuresPerIP
        loginFailures = budget > 0 ? NIOLockedValueBox(LoginFailureLimiter(budgetPerMinute: budget)) : nil
    }

    /// A publish job for `commands` (`PUBLISH_TIMEOUT_MS` from now) whose outcome is given to
    /// `answer`, with the value `bound` holds, on `bound`'s event loop.
    func makeJob<Owner>(
        commands: RESPBuffer,
        records: Int,
        message: Bool = false,
        bound: NIOLoopBound<Owner>,
        answer: @escaping @Sendable (Owner, PublishOutcome) -> Void
    ) -> PublishJob {
        PublishJob(
            commands: commands,
            recordCount: records,
            deadline: .now() + .milliseconds(Int64(configuration.publishTimeoutMs)),
            isMessage: message,
            eventLoop: bound.eventLoop,
            completion: { outcome in answer(bound.value, outcome) }
        )
    }

    /// Counts and (at most once per 10 s across connections) logs a device the authority refused.
    func unknownDevice(_ imei: IMEI, peer: SocketAddress?, transport: String) {
        let verdict = authority.verdict(imei)
        let now = NIODeadline.now().uptimeNanoseconds
        guard let heldBack = unknownDeviceLog.withLockedValue({ $0.admit(nowNanoseconds: now) }) else { return }
        logger.warning(
            "unknown device refused",
            metadata: [
                "event": "device.unknown", "imei": "\(imei)", "peer": "\(peerString(peer))", "transport": "\(transport)",
                "allowlist": "\(verdict == .notLoaded ? "not_loaded" : "loaded")", "suppressed": .stringConvertible(heldBack),
            ]
        )
    }

    /// One `device.certificate_mismatch` line per 10 s across connections.
    private let certificateMismatchLog = NIOLockedValueBox(LogLimiter())

    /// Logs (at most once per 10 s across connections) a TLS login whose IMEI is not its certificate's name.
    func certificateMismatch(_ imei: IMEI, certificateName: String?, peer: SocketAddress?) {
        let now = NIODeadline.now().uptimeNanoseconds
        guard let heldBack = certificateMismatchLog.withLockedValue({ $0.admit(nowNanoseconds: now) }) else { return }
        logger.warning(
            "login IMEI is not the client certificate's",
            metadata: [
                "event": "device.certificate_mismatch", "imei": "\(imei)", "certificate_name": "\(certificateName ?? "")",
                "peer": "\(peerString(peer))", "suppressed": .stringConvertible(heldBack),
            ]
        )
    }

    /// One log line per 10 s across connections for buffer-budget refusals.
    private let bufferLog = NIOLockedValueBox(LogLimiter())

    func admitBufferLog(nowNanoseconds: UInt64) -> Int? {
        bufferLog.withLockedValue { $0.admit(nowNanoseconds: nowNanoseconds) }
    }

    /// Per-connection events logged by every connection that has them, sampled across connections.
    enum SessionLogEvent: Int, CaseIterable {
        case handshakeTimeout, idleTimeout, connectionError, replaced, replacedElsewhere
    }

    /// One sampler per ``SessionLogEvent`` (50 lines at once, then 5 a second, each kind on its own).
    private let sessionLogs = SessionLogEvent.allCases.map { _ in NIOLockedValueBox(LogSampler()) }

    /// nil: leave this line out. Otherwise write it with `suppressed`, the lines of its kind left out since.
    func admitSessionLog(_ event: SessionLogEvent) -> Int? {
        sessionLogs[event.rawValue].withLockedValue { $0.admit(nowNanoseconds: NIODeadline.now().uptimeNanoseconds) }
    }

    /// A login from `address` failed: it counts against the address' budget.
    func loginFailed(from address: SocketAddress?) {
        guard let loginFailures, let ip = address?.ipAddress else { return }
        let now = NIODeadline.now().uptimeNanoseconds
        loginFailures.withLockedValue { $0.failed(ip, now: now) }
    }

    /// Whether `address` may connect (its failed logins have not used up the budget).
    func admitsLogins(from address: SocketAddress?) -> Bool {
        guard let loginFailures, let ip = address?.ipAddress else { return true }
        let now = NIODeadline.now().uptimeNanoseconds
        return loginFailures.withLockedValue { $0.admits(ip, now: now) }
    }

    /// The calling event loop's encoder.
    var encoder: EncoderBox {
        if let box = encoders.currentValue { return box }
        let box = EncoderBox(
            StreamEntryEncoder(
                telemetryStream: configuration.telemetryStream,
                responsesStream: configuration.responsesStream,
                maxLength: configuration.streamMaxLength,
                responsesMaxLength: configuration.responsesMaxLength,
                shards: configuration.streamShards
            )
        )
        encoders.currentValue = box
        return box
    }
}

/// A mutable encoder owned by one thread (held in a thread-specific variable, never shared).
final class EncoderBox: @unchecked Sendable {
    var encoder: StreamEntryEncoder
    init(_ encoder: StreamEntryEncoder) { self.encoder = encoder }
}

/// The packet a session has in flight: its Redis job, and when its frame completed (for the ACK latency).
struct PacketInFlight {
    let job: PublishJob
    let frameCompleted: NIODeadline
    /// The frame's codec name (for logs).
    var codec: String = ""
}

/// One device connection: carries out what ``DeviceSessionStateMachine`` decides (login, one packet
/// or device message in flight at a time, drain), with the bytes, the channel, Redis, metrics and logs.
///
/// The bounded reader: while a frame is in flight with bytes already buffered behind it (or the session
/// drains, or the peer is not reading its ACKs) the handler holds back the channel's `read()` calls, so the
/// socket is not read and TCP flow control stops the peer; with nothing buffered, one read ahead is let
/// through (it keeps the socket armed in epoll, and a device waiting for its ACK sends nothing). Bytes
/// already received wait in one buffer, compacted before every append, so it never holds more than
/// one frame plus one read (``bufferBound(maxFrameBytes:readBytes:)``), whatever the peer sends and
/// however its writes are split. The server reads at most ``readChunkBytes`` per read, one read per loop tick.
///
/// On ``SessionDrain`` (graceful shutdown) the session stops reading and closes itself: at once when
/// nothing is in flight, else once the frame in flight is answered (a packet's ACK written first).
/// Nothing after it is read or handled.
final class DeviceSessionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The most one socket read delivers (the device channels' receive allocator maximum).
    static let readChunkBytes = 16 * 1024

    /// The most a connection's buffer holds, in capacity: a partial frame (below the frame bound) plus
    /// one read, rounded up to the allocation size.
    static func bufferBound(maxFrameBytes: Int, readBytes: Int = readChunkBytes) -> Int {
        var bound = 1
        while bound < maxFrameBytes + TeltonikaFramer.overhead + readBytes { bound <<= 1 }
        return bound
    }

    private let environment: SessionEnvironment
    /// The framing: the same decoder NIO's verifier checks, driven one frame at a time.
    private var decoder: TeltonikaFrameDecoder
    private let maxFrameBytes: Int
    private var session: DeviceSessionStateMachine<PacketInFlight>
    private var pending: ByteBuffer? = nil
    /// A `read()` from the channel held back while no frame may be handled.
    private var readHeld = false
    private var handshakeTimer: Scheduled<Void>? = nil
    /// Runs from the first byte of a packet frame while it is being read (`FRAME_TIMEOUT_MS`); cancelled
    /// when the frame is complete. Not running while a frame is in flight (the server is not reading).
    private var frameTimer: Scheduled<Void>? = nil
    /// `IDLE_TIMEOUT_MS`: armed for the silence left since ``lastRead``; when it fires with bytes read
    /// meanwhile it is armed again for what is left. Here rather than NIO's `IdleStateHandler`, whose
    /// handler and context cost every idle connection about 0.3 KiB more.
    private var idleTimer: Scheduled<Void>? = nil
    /// When the last bytes arrived (the event loop's clock).
    private var lastRead = NIODeadline.uptimeNanoseconds(0)
    /// What this connection's buffer is charged against the shared budget now.
    private var charged = 0
    /// Why this side closed the connection (nil: the device did), counted when it is gone.
    private var closeReason: DisconnectReason? = nil
    /// The peer's `ip:port`, for log lines.
    private var peer = ""
    /// This connection's logger: the server's with `peer` and, after login, `imei`. Made when a line is
    /// written rather than kept per connection (its metadata was about 330 bytes of every idle connection).
    private var logger: Logger {
        var logger = environment.logger
        logger[metadataKey: "peer"] = "\(peer)"
        if let imei = session.imei { logger[metadataKey: "imei"] = "\(imei)" }
        return logger
    }
    /// Whether debug lines are written (checked before a per-packet line is made).
    private var debugLogging: Bool { environment.logger.logLevel <= .debug }
    /// The downlink command slot, from login on (nil with `COMMANDS=off` or before login).
    private var commands: CommandSlot? = nil
    /// This session in the device registry, from login on (nil with `DEVICE_REGISTRY=off` or before login).
    private var registered: RegisteredSession? = nil
    /// The login grace, the answer's deadline, the grace window, or a retry of a take.
    private var commandTimer: Scheduled<Void>? = nil
    /// `TLS_CLIENT_CERT_IMEI` on the TLS port: the name the login IMEI must equal, once the handshake gave it.
    private var certificate: CertificateIdentity

    private enum CertificateIdentity {
        /// Plain TCP, or the setting off: any IMEI the authority allows.
        case notRequired
        /// Required, and the handshake has not reported it: no IMEI matches (never the case at a login: the
        /// handshake completes before the first byte of the session is read).
        case awaited
        /// The client certificate's one subject common name (nil: none, or several).
        case named(String?)
    }

    /// `certificateNamesIMEI`: the connection is on the TLS port with `TLS_CLIENT_CERT_IMEI` (its
    /// ``DeviceTLSHandler`` reports the certificate's name with ``SessionCertificateName``).
    init(environment: SessionEnvironment, certificateNamesIMEI: Bool = false) {
        self.environment = environment
        self.certificate = certificateNamesIMEI ? .awaited : .notRequired
        let configuration = environment.configuration
        self.decoder = TeltonikaFrameDecoder(maxDataLength: configuration.maxFrameBytes)
        self.maxFrameBytes = configuration.maxFrameBytes
        self.session = DeviceSessionStateMachine(
            messageLimiter: MessageRateLimiter(perSecond: configuration.deviceMessageRate, burst: configuration.deviceMessageBurst),
            overflowWait: .milliseconds(Int64(configuration.overflowWaitMs))
        )
    }

    /// Capacity of the receive buffer now (tests check it against ``bufferBound(maxFrameBytes:readBytes:)``).
    var bufferedCapacity: Int { pending?.capacity ?? 0 }

    // MARK: - Channel events

    func channelActive(context: ChannelHandlerContext) {
        peer = peerString(environment.deviceAddress(of: context.channel))
        environment.metrics.connectionsActive.increment()
        let timeout = TimeAmount.milliseconds(Int64(environment.configuration.handshakeTimeoutMs))
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            guard handler.session.handshakeTimedOut() else { return }
            handler.environment.metrics.handshakes(result: .timeout).increment()
            handler.environment.loginFailed(from: handler.environment.deviceAddress(of: context.channel))
            if let suppressed = handler.environment.admitSessionLog(.handshakeTimeout) {
                handler.logger.warning(
                    "no login in time",
                    metadata: ["event": "device.handshake_timeout", "suppressed": .stringConvertible(suppressed)]
                )
            }
            handler.close(context, .handshakeTimeout)
        }
        lastRead = context.eventLoop.now
        armIdleTimer(context, in: .milliseconds(Int64(environment.configuration.idleTimeoutMs)))
        context.fireChannelActive()
    }

    /// The idle timer: closes the connection once it has been silent for `IDLE_TIMEOUT_MS`.
    private func armIdleTimer(_ context: ChannelHandlerContext, in delay: TimeAmount) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        idleTimer = context.eventLoop.scheduleTask(in: delay) {
            let (handler, context) = bound.value
            let idle = TimeAmount.milliseconds(Int64(handler.environment.configuration.idleTimeoutMs))
            let silent = context.eventLoop.now - handler.lastRead
            guard silent >= idle else { return handler.armIdleTimer(context, in: idle - silent) }
            handler.idleTimer = nil
            if let suppressed = handler.environment.admitSessionLog(.idleTimeout) {
                handler.logger.info(
                    "idle connection closed",
                    metadata: ["event": "device.idle_timeout", "suppressed": .stringConvertible(suppressed)]
                )
            }
            handler.close(context, .idleTimeout)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        frameTimer?.cancel()
        idleTimer?.cancel()
        idleTimer = nil
        environment.metrics.connectionsActive.decrement()
        let ended = session.connectionClosed()
        if let packet = ended.abandoned {
            packet.job.cancel()
            if ended.abandonedPacket { environment.packetsInFlight.subtract(1, ordering: .relaxed) }
        }
        if let imei = ended.imei {
            environment.registry.remove(imei, channel: context.channel)
            commandsClosed(imei: imei)
        }
        if let registered { environment.directory?.directory.loggedOut(registered.imei, session: registered.session) }
        if let rest = pending, rest.readableBytes > 0, ended.bufferedBytesAreTruncatedFrame {
            environment.metrics.frames(codec: .unknown, result: .malformed).increment()
            logger.warning(
                "connection closed inside a frame: no ACK",
                metadata: ["event": "frame.truncated", "error": "truncated", "buffered_bytes": .stringConvertible(rest.readableBytes)]
            )
        }
        let reason = closeReason ?? .peerClosed
        environment.metrics.disconnects(reason).increment()
        logger.debug("connection closed", metadata: ["event": "device.disconnected", "reason": "\(reason.rawValue)"])
        pending = nil
        chargeBuffer(context)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastRead = context.eventLoop.now
        var bytes = unwrapInboundIn(data)
        environment.metrics.bytesReceived.increment(by: Int64(bytes.readableBytes))
        if pending == nil {
            pending = bytes
        } else {
            // Compact first: what was already cut is released, so the buffer holds only unread bytes
            // (less than one frame) plus this read, however the peer's writes fall on frame boundaries.
            if pending!.readerIndex > 0 { pending!.discardReadBytes() }
            pending!.writeBuffer(&bytes)
        }
        process(context)
        chargeBuffer(context)
    }

    /// After the buffer was cut: a partial frame left in a much larger buffer moves to one of its own
    /// size (the frame's declared size, once its header is in); then the buffer's size beyond the
    /// allowance is charged to the shared budget, and a connection that would take it past
    /// `MAX_BUFFERED_BYTES` is closed (counted, `connection.buffer_budget`).
    private func chargeBuffer(_ context: ChannelHandlerContext) {
        if var rest = pending, rest.readableBytes > 0 {
            var target = rest.readableBytes
            if session.framerMode == .packets, rest.readableBytes >= 8, rest.getInteger(at: rest.readerIndex, as: UInt32.self) == 0,
                let length = rest.getInteger(at: rest.readerIndex + 4, as: UInt32.self)
            {
                target = max(target, Int(length) + TeltonikaFramer.overhead)
            }
            if rest.capacity >= target + 1024 {
                var sized = context.channel.allocator.buffer(capacity: target)
                sized.writeBuffer(&rest)
                pending = sized
            }
        }
        let want = max(0, (pending?.capacity ?? 0) - BufferBudget.allowance)
        guard want != charged else { return }
        if environment.bufferBudget.recharge(from: charged, to: want) {
            charged = want
            environment.metrics.bufferedBytes.set(Int64(environment.bufferBudget.inUse))
            return
        }
        environment.metrics.bufferBudgetRefusals.increment()
        if let heldBack = environment.admitBufferLog(nowNanoseconds: NIODeadline.now().uptimeNanoseconds) {
            logger.warning(
                "receive buffers across connections at MAX_BUFFERED_BYTES: closing",
                metadata: [
                    "event": "connection.buffer_budget", "buffer_bytes": .stringConvertible(want + BufferBudget.allowance),
                    "limit": .stringConvertible(environment.bufferBudget.limit), "suppressed": .stringConvertible(heldBack),
                ]
            )
        }
        pending = nil
        close(context, .bufferBudget)
    }

    /// The channel asks to read more: passed on while the peer takes its ACKs and a frame may be handled,
    /// or a frame is in flight with nothing buffered (``DeviceSessionStateMachine/mayReadAhead(buffered:)``:
    /// the socket's read interest stays armed); otherwise held until the frame in flight is answered
    /// (never, once draining) or the ACKs written so far have drained (a device that pipelines packets and
    /// never reads its ACKs cannot pile them up in memory).
    func read(context: ChannelHandlerContext) {
        let buffered = pending?.readableBytes ?? 0
        if context.channel.isWritable, session.framerMode != nil || session.mayReadAhead(buffered: buffered) {
            context.read()
        } else {
            readHeld = true
        }
    }

    /// Reading may go on: handles what is buffered, then asks for more if a read was held back.
    private func resumeReading(_ context: ChannelHandlerContext) {
        process(context)
        chargeBuffer(context)
        if readHeld, session.framerMode != nil, context.channel.isWritable {
            readHeld = false
            context.read()
        }
        commandOpportunity(context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { resumeReading(context) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is SessionDrain {
            handshakeTimer?.cancel()
            let action = session.drain()
            logger.debug(
                "draining: nothing more is read",
                metadata: ["event": "device.draining", "in_flight": .stringConvertible(action == .finishInFlight)]
            )
            switch action {
            case .close: close(context, .drain)
            case .finishInFlight, .none: break
            }
            return
        }
        if event is SessionReplaced {
            close(context, .replaced)
            return
        }
        if event is SessionRevoked {
            logger.notice("device left the allowlist: closing", metadata: ["event": "device.revoked"])
            close(context, .revoked)
            return
        }
        if event is CommandWake {
            commands?.wake()
            commandOpportunity(context)
            return
        }
        if let elsewhere = event as? SessionLoggedInElsewhere {
            loggedInElsewhere(context, as: elsewhere.session)
            return
        }
        if event is SessionTLSFailed {
            close(context, .tlsHandshakeFailed)
            return
        }
        if let reported = event as? SessionCertificateName {
            if case .awaited = certificate { certificate = .named(reported.name) }
            return
        }
        if event is SessionProxyRefused {
            close(context, .proxyRefused)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let suppressed = environment.admitSessionLog(.connectionError) {
            logger.warning(
                "connection error",
                metadata: ["event": "device.connection_error", "error": "\(error)", "suppressed": .stringConvertible(suppressed)]
            )
        }
        close(context, .error)
    }

    // MARK: - Framing

    /// Cuts and handles frames from the buffer until it needs more bytes or a frame is in flight.
    private func process(_ context: ChannelHandlerContext) {
        defer { armFrameTimer(context) }
        while session.framerMode != nil, pending != nil, pending!.readableBytes > 0 {
            let frame: TeltonikaFrameDecoder.Frame?
            do throws(Codec8Error) {
                frame = try decoder.decode(buffer: &pending!)
            } catch {
                reject(context, error: error, codec: pending!.getInteger(at: pending!.readerIndex + 8, as: UInt8.self))
                return
            }
            if frame != nil {
                frameTimer?.cancel()
                frameTimer = nil
            }
            switch frame {
            case nil:
                return
            case .keepAlive:
                environment.metrics.keepAlives.increment()
                deviceSeen(record: false)
            case .login(let login):
                self.login(context, frame: login)
            case .packet(let packet):
                self.packet(context, frame: packet)
            }
            if pending?.readableBytes == 0 { pending = nil }
        }
    }

    /// Starts the frame timer when part of a packet frame waits in the buffer while the session reads
    /// (after login). Keep-alive bytes never reach here as a partial frame, so they do not extend it.
    private func armFrameTimer(_ context: ChannelHandlerContext) {
        guard frameTimer == nil, session.framerMode == .packets, let rest = pending, rest.readableBytes > 0 else { return }
        let timeout = TimeAmount.milliseconds(Int64(environment.configuration.frameTimeoutMs))
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let buffered = rest.readableBytes
        frameTimer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            handler.frameTimer = nil
            // A frame completed meanwhile would have cancelled this timer; one in flight stops the clock.
            guard handler.session.framerMode == .packets, handler.pending.map({ $0.readableBytes > 0 }) == true else { return }
            handler.logger.warning(
                "frame not completed in time: closing",
                metadata: [
                    "event": "frame.timeout", "timeout_ms": .stringConvertible(handler.environment.configuration.frameTimeoutMs),
                    "buffered_bytes": .stringConvertible(handler.pending?.readableBytes ?? buffered),
                ]
            )
            handler.close(context, .frameTimeout)
        }
    }

    private func login(_ context: ChannelHandlerContext, frame: ByteBuffer) {
        // Released, not only cancelled: a kept `Scheduled` holds its promise and closure (about 250 bytes
        // of every idle connection).
        handshakeTimer?.cancel()
        handshakeTimer = nil
        let parsed = frame.withUnsafeReadableBytes { raw in Result { () throws(Codec8Error) in try IMEI.parseLogin(raw) } }
        switch session.loginReceived(parsed, isAllowed: { certified($0) && environment.authority.verdict($0) == .allowed }) {
        case .accept(let imei):
            if let old = environment.registry.register(imei, channel: context.channel) {
                environment.metrics.connectionsReplaced.increment()
                if let suppressed = environment.admitSessionLog(.replaced) {
                    logger.info(
                        "newer login replaces the older connection",
                        metadata: [
                            "event": "device.replaced", "old_peer": "\(peerString(environment.deviceAddress(of: old)))",
                            "suppressed": .stringConvertible(suppressed),
                        ]
                    )
                }
                // Its own handler closes it, on its own event loop, and counts why.
                old.pipeline.fireUserInboundEventTriggered(SessionReplaced())
            }
            environment.metrics.handshakes(result: .accepted).increment()
            logger.debug("device logged in", metadata: ["event": "device.login"])
            // The registry's write is queued before the device gets its answer, so that a newer login of
            // the device (which it makes only after this answer) is written after this one. Queued after
            // the answer, a thread paused between the two let the newer login be written first: the
            // registry named the older session current and the newer connection was closed.
            if let registration = environment.directory {
                let session = registration.directory.newSession()
                registered = RegisteredSession(imei: imei, session: session, at: .now())
                registration.directory.loggedIn(imei, session: session, peer: peer, atMs: wallClockMilliseconds())
            }
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(integer: UInt8(1))), promise: nil)
            if let delivery = environment.commands {
                commands = delivery.makeSlot()
                scheduleCommandTimer(context, in: delivery.loginGrace) { handler, context in
                    handler.commands?.loginGraceEnded()
                    handler.commandOpportunity(context)
                }
            }
        case .refuse(let result, let error):
            refuseLogin(context, error: error, result: result)
        case .deny(let imei):
            let address = environment.deviceAddress(of: context.channel)
            environment.loginFailed(from: address)
            if !certified(imei) {
                let name: String? = if case .named(let name) = certificate { name } else { nil }
                environment.metrics.handshakes(result: .certificateMismatch).increment()
                environment.certificateMismatch(imei, certificateName: name, peer: address)
            } else {
                environment.metrics.handshakes(result: .unknownDevice).increment()
                environment.unknownDevice(imei, peer: address, transport: "tcp")
            }
            answerZeroAndClose(context, reason: .loginRejected)
        }
    }

    /// Whether `imei` may log in on this connection as far as its client certificate goes.
    private func certified(_ imei: IMEI) -> Bool {
        switch certificate {
        case .notRequired: true
        case .awaited: false
        case .named(let name): name == imei.description
        }
    }

    /// Writes the login refusal 0x00 and closes once it is written.
    private func answerZeroAndClose(_ context: ChannelHandlerContext, reason: DisconnectReason) {
        let channel = context.channel
        closeReason = closeReason ?? reason
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(integer: UInt8(0)))).whenComplete { _ in channel.close(promise: nil) }
    }

    /// Answers 0x00, closes once it is written. `result`: `rejected` (bad digits) or `malformed` (bad length).
    private func refuseLogin(_ context: ChannelHandlerContext, error: Codec8Error, result: HandshakeResult) {
        environment.metrics.handshakes(result: result).increment()
        environment.loginFailed(from: environment.deviceAddress(of: context.channel))
        logger.warning("login rejected", metadata: ["event": "device.login_rejected", "error": "\(error.category)", "detail": "\(error)"])
        answerZeroAndClose(context, reason: .loginRejected)
    }

    /// What a frame after login turned out to be.
    private enum Parsed {
        /// An AVL packet, its records encoded in the writer.
        case avl(codec: AVLCodec, records: Int)
        /// A device message and what the session made of it (encoded only when admitted).
        case message(codec: DeviceMessage.Codec, DeviceSessionStateMachine<PacketInFlight>.MessageAction)
    }

    private func packet(_ context: ChannelHandlerContext, frame: ByteBuffer) {
        guard case .ready(let imei) = session.state else { preconditionFailure("a packet frame in state \(session.state)") }
        let completed = NIODeadline.now()
        let encoderBox = environment.encoder
        var commands: RESPBuffer? = nil
        var answered: (CommandSlot.Correlation?, DeviceMessage)? = nil
        let outcome: Result<Parsed, Codec8Error> = frame.withUnsafeReadableBytes { raw in
            do throws(Codec8Error) {
                switch try TeltonikaFrame.parse(raw, maxDataLength: maxFrameBytes) {
                case .avl(let packet):
                    commands = encoderBox.encoder.records(of: packet, imei: imei)
                    return .success(.avl(codec: packet.codec, records: packet.recordCount))
                case .message(let message):
                    // A response answers the command in flight (if any), whether or not it is stored.
                    if CommandDelivery.isResponse(message) { answered = (commandAnswered(message, imei: imei, at: completed), message) }
                    let commandID = answered?.0?.command.id
                    // The budget is checked before any work is spent on the message.
                    let codec = message.codec
                    let action = session.messageDecoded(nowNanoseconds: completed.uptimeNanoseconds) {
                        var writer = RESPWriter()
                        encoderBox.encoder.appendMessage(
                            message,
                            imei: imei,
                            receivedMs: wallClockMilliseconds(),
                            commandID: commandID,
                            to: &writer
                        )
                        return PacketInFlight(
                            job: makeJob(context, commands: RESPBuffer(writer), records: 1, message: true),
                            frameCompleted: completed,
                            codec: codec.name
                        )
                    }
                    // After messageDecoded has returned: the session is not mutated twice at once.
                    if action == .publish, let heldBack = session.admitLog(.message, nowNanoseconds: completed.uptimeNanoseconds) {
                        logger.info(
                            "device message",
                            metadata: [
                                "event": "device.message", "codec": "\(codec.name)", "type": "\(message.type)",
                                "suppressed": .stringConvertible(heldBack),
                            ]
                        )
                    }
                    return .success(.message(codec: codec, action))
                }
            } catch {
                return .failure(error)
            }
        }
        switch outcome {
        case .failure(let error):
            reject(context, error: error, codec: frame.getInteger(at: frame.readerIndex + 8, as: UInt8.self))
        case .success(.message(let codec, let action)):
            if let (correlation, message) = answered { commandAnswerHandled(context, correlation, message: message, imei: imei) }
            environment.metrics.frames(codec: FrameCodec(codec), result: .ok).increment()
            environment.metrics.deviceMessages(codec: codec).increment()
            deviceMessage(context, codec: codec, action: action, completed: completed)
        case .success(.avl(let codec, let records)):
            environment.metrics.frames(codec: FrameCodec(codec), result: .ok).increment()
            environment.metrics.records(codec: codec).increment(by: Int64(records))
            if debugLogging {
                logger.debug(
                    "packet",
                    metadata: ["event": "device.packet", "codec": "\(codec.name)", "records": .stringConvertible(records)]
                )
            }
            let action = session.packetDecoded(records: records) {
                PacketInFlight(job: makeJob(context, commands: commands!, records: records), frameCompleted: completed)
            }
            switch action {
            case .publish:
                environment.packetsInFlight.add(1, ordering: .relaxed)
                submit(context, job: session.inFlight!.job)
            case .acknowledge(let records):
                acknowledge(context, records: records, frameCompleted: completed)
            }
        }
    }

    /// A device message: in flight until Redis answers (reading stops meanwhile), or dropped when over
    /// the connection's budget or when the queue is full (counted, logged at most once per 10 s).
    private func deviceMessage(
        _ context: ChannelHandlerContext,
        codec: DeviceMessage.Codec,
        action: DeviceSessionStateMachine<PacketInFlight>.MessageAction,
        completed: NIODeadline
    ) {
        switch action {
        case .publish:
            if environment.publisher.submit(session.inFlight!.job) { return }
            // Still inside the framing loop, which goes on by itself; only a drained session closes here.
            let next = session.messageNotQueued()
            environment.metrics.publishOverflow.increment()
            defer { if next == .close { close(context, .drain) } }
            if let heldBack = session.admitLog(.messageOverflow, nowNanoseconds: completed.uptimeNanoseconds) {
                logger.warning(
                    "device message dropped: publish queue full",
                    metadata: [
                        "event": "publish.overflow", "records": .stringConvertible(1), "waited_ms": .stringConvertible(0),
                        "suppressed": .stringConvertible(heldBack),
                    ]
                )
            }
        case .rateLimited:
            environment.metrics.deviceMessagesRateLimited.increment()
            if let heldBack = session.admitLog(.messageRateLimited, nowNanoseconds: completed.uptimeNanoseconds) {
                logger.warning(
                    "device messages over the connection's budget: dropped",
                    metadata: [
                        "event": "device.message_rate_limited", "codec": "\(codec.name)",
                        "limit_per_second": .stringConvertible(environment.configuration.deviceMessageRate),
                        "burst": .stringConvertible(environment.configuration.deviceMessageBurst),
                        "suppressed": .stringConvertible(heldBack),
                    ]
                )
            }
        }
    }

    /// A publish job whose outcome comes back to this handler on its event loop.
    private func makeJob(_ context: ChannelHandlerContext, commands: RESPBuffer, records: Int, message: Bool = false) -> PublishJob {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        return environment.makeJob(commands: commands, records: records, message: message, bound: bound) { handler, outcome in
            handler.0.published(handler.1, outcome: outcome)
        }
    }

    /// Queues the packet's job; while the queue is full the session machine says when to try again,
    /// or (after `OVERFLOW_WAIT_MS`) to close without ACK (the device resends after reconnecting).
    private func submit(_ context: ChannelHandlerContext, job: PublishJob) {
        // A retry timer that fires after its packet was answered or its connection closed does nothing.
        guard let current = session.inFlight, current.job === job else { return }
        if environment.publisher.submit(job) { return }
        switch session.packetNotQueued(at: context.eventLoop.now) {
        case .giveUp(let waited):
            environment.metrics.publishOverflow.increment()
            logger.warning(
                "publish queue full: packet not acknowledged",
                metadata: [
                    "event": "publish.overflow", "records": .stringConvertible(job.recordCount),
                    "waited_ms": .stringConvertible(waited.nanoseconds / 1_000_000),
                ]
            )
            close(context, .overflow)
        case .retry(let delay):
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: delay) {
                let (handler, context) = bound.value
                handler.submit(context, job: job)
            }
        }
    }

    private func published(_ context: ChannelHandlerContext, outcome: PublishOutcome) {
        guard let packet = session.inFlight else { return }
        switch session.published(outcome) {
        case .acknowledge(let records, .read):
            acknowledge(context, records: records, frameCompleted: packet.frameCompleted)
            environment.packetsInFlight.subtract(1, ordering: .relaxed)
            resumeReading(context)
        case .acknowledge(let records, .close):
            // Draining: close once the ACK is out (a promise only here, not on every ACK).
            let written = context.eventLoop.makePromise(of: Void.self)
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            written.futureResult.whenComplete { _ in
                let (handler, context) = bound.value
                handler.close(context, .drain)
            }
            acknowledge(context, records: records, frameCompleted: packet.frameCompleted, promise: written)
            environment.packetsInFlight.subtract(1, ordering: .relaxed)
        case .messageStored(let next):
            deviceSeen(record: false)
            carryOn(context, next)
        case .messageNotStored(let reason, let next):
            environment.metrics.publishFailed(.message, reason: reason).increment()
            logger.error(
                "device message not confirmed by Redis: not stored",
                metadata: ["event": "publish.message_failed", "codec": "\(packet.codec)", "reason": "\(reason)"]
            )
            carryOn(context, next)
        case .closeUnconfirmed(let reason):
            environment.metrics.publishFailed(.packet, reason: reason).increment()
            logger.error(
                "records not confirmed by Redis: no ACK, closing",
                metadata: ["event": "publish.failed", "records": .stringConvertible(packet.job.recordCount), "reason": "\(reason)"]
            )
            close(context, .publishFailed)
        case .close:
            close(context, .peerClosed)
        case .ignore:
            break
        }
    }

    /// After an answered device message: read on, or (draining) close.
    private func carryOn(_ context: ChannelHandlerContext, _ next: DeviceSessionStateMachine<PacketInFlight>.Next) {
        switch next {
        case .read: resumeReading(context)
        case .close: close(context, .drain)
        }
    }

    private func acknowledge(
        _ context: ChannelHandlerContext,
        records: Int,
        frameCompleted: NIODeadline,
        promise: EventLoopPromise<Void>? = nil
    ) {
        deviceSeen(record: records > 0)
        var ack = context.channel.allocator.buffer(capacity: 4)
        ack.writeInteger(UInt32(records))
        // Counted first, so that whoever sees the ACK also sees it counted.
        environment.metrics.acks.increment()
        environment.metrics.ackLatency.recordNanoseconds((NIODeadline.now() - frameCompleted).nanoseconds)
        context.writeAndFlush(wrapOutboundOut(ack), promise: promise)
    }

    private func reject(_ context: ChannelHandlerContext, error: Codec8Error, codec: UInt8?) {
        let frameCodec = FrameCodec(byte: codec)
        let result: FrameResult
        switch session.frameRejected(error) {
        case .refuseLogin(let handshakeResult, let error):
            refuseLogin(context, error: error, result: handshakeResult)
            return
        case .close(let frameResult, _):
            result = frameResult
        }
        if case .unsupportedCodec = error { environment.metrics.unknownCodec.increment() }
        environment.metrics.frames(codec: frameCodec, result: result).increment()
        logger.warning(
            "frame rejected: no ACK, closing",
            metadata: ["event": "frame.rejected", "error": "\(error.category)", "detail": "\(error)", "codec": "\(frameCodec.rawValue)"]
        )
        close(context, .frameRejected)
    }

    /// Closes the connection; the first reason given is the one counted when it is gone.
    private func close(_ context: ChannelHandlerContext, _ reason: DisconnectReason) {
        closeReason = closeReason ?? reason
        frameTimer?.cancel()
        frameTimer = nil
        session.inFlight?.job.cancel()
        pending = nil
        context.close(promise: nil)
    }
}

// MARK: - Device registry and downlink commands

extension DeviceSessionHandler {
    /// A notice says the device logged in as `session`: this connection closes if the registry now names
    /// another session than this one (so a notice older than this login, or about it, changes nothing).
    fileprivate func loggedInElsewhere(_ context: ChannelHandlerContext, as session: String) {
        guard let mine = registered?.session, mine != session, let registration = environment.directory else { return }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        registration.directory.currentSession(registered!.imei) { current in
            bound.eventLoop.execute {
                let (handler, context) = bound.value
                guard let current, current != mine, handler.registered?.session == mine, context.channel.isActive else { return }
                handler.environment.metrics.connectionsReplaced.increment()
                if let suppressed = handler.environment.admitSessionLog(.replacedElsewhere) {
                    handler.logger.notice(
                        "device logged in on another connection: closing this one",
                        metadata: [
                            "event": "device.replaced_elsewhere", "session": "\(current)", "suppressed": .stringConvertible(suppressed),
                        ]
                    )
                }
                handler.close(context, .replaced)
            }
        }
    }

    /// The device was seen (a packet ACKed with `record`, a keep-alive, a message): its last-seen time is
    /// written at most once per `DEVICE_SEEN_INTERVAL_MS`.
    fileprivate func deviceSeen(record: Bool) {
        guard registered != nil, let registration = environment.directory else { return }
        guard let write = registered!.seen(at: .now(), wallMs: wallClockMilliseconds(), record: record, interval: registration.seenInterval)
        else { return }
        registration.directory.seen(registered!.imei, session: registered!.session, recordAt: write.recordAt)
    }

    /// The session is idle for a command: logged in, no packet or message in flight, nothing buffered,
    /// not draining, and the device reads what it is sent.
    private func isIdleForCommand(_ context: ChannelHandlerContext) -> Bool {
        guard case .ready = session.state, !session.isDraining, context.channel.isWritable else { return false }
        return (pending?.readableBytes ?? 0) == 0
    }

    /// A moment to take or write a command (after the login grace, a wake-up notice, an answered frame,
    /// a take's answer).
    fileprivate func commandOpportunity(_ context: ChannelHandlerContext) {
        guard commands != nil, !session.isDraining, let imei = session.imei, let delivery = environment.commands else { return }
        switch commands!.opportunity(sessionIdle: isIdleForCommand(context), now: .now()) {
        case .none:
            return
        case .take:
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            delivery.store.take(imei) { result in
                bound.eventLoop.execute {
                    let (handler, context) = bound.value
                    handler.commandTaken(context, result, imei: imei)
                }
            }
        case .write(let command):
            delivery.metrics.inFlight.increment()
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: command.frame(for: imei))), promise: nil)
            delivery.store.sent(command, imei: imei)
            logger.info(
                "command sent",
                metadata: [
                    "event": "command.sent", "cmd_id": "\(command.id)", "codec": "\(command.codec.name)",
                    "attempt": .stringConvertible(command.attempt),
                ]
            )
            armCommandDeadline(context)
        }
    }

    private func commandTaken(_ context: ChannelHandlerContext, _ result: TakeResult, imei: IMEI) {
        guard commands != nil, let delivery = environment.commands else { return }
        switch commands!.takeAnswered(result) {
        case .none:
            commandOpportunity(context)
        case .retry(let delay):
            scheduleCommandTimer(context, in: delay) { handler, context in
                handler.commands?.wake()
                handler.commandOpportunity(context)
            }
        case .giveBack(let command):
            delivery.store.giveBack(command, imei: imei, unsent: true)
        }
    }

    /// Runs `body` after `delay` on this session's loop (replacing the timer pending, if any).
    private func scheduleCommandTimer(
        _ context: ChannelHandlerContext,
        in delay: TimeAmount,
        _ body: @escaping (DeviceSessionHandler, ChannelHandlerContext) -> Void
    ) {
        commandTimer?.cancel()
        let bound = NIOLoopBound((self, context, body), eventLoop: context.eventLoop)
        commandTimer = context.eventLoop.scheduleTask(in: delay) {
            let (handler, context, body) = bound.value
            handler.commandTimer = nil
            body(handler, context)
        }
    }

    /// The timer for the sent command's answer or the end of its grace window.
    private func armCommandDeadline(_ context: ChannelHandlerContext) {
        guard let deadline = commands?.deadline else {
            commandTimer?.cancel()
            commandTimer = nil
            return
        }
        scheduleCommandTimer(context, in: deadline - .now()) { handler, context in handler.commandDeadlinePassed(context) }
    }

    private func commandDeadlinePassed(_ context: ChannelHandlerContext) {
        guard commands != nil, let imei = session.imei, let delivery = environment.commands else { return }
        switch commands!.timerFired(now: .now()) {
        case .none:
            armCommandDeadline(context)
        case .timedOut(let command, let hold):
            delivery.metrics.inFlight.decrement()
            delivery.store.finish(command, imei: imei, outcome: .timeout, response: nil, latency: nil, holdLease: hold + .seconds(2))
            logger.warning(
                "command not answered in time: not sent again",
                metadata: [
                    "event": "command.timeout", "cmd_id": "\(command.id)",
                    "timeout_ms": .stringConvertible(delivery.timeout.nanoseconds / 1_000_000),
                ]
            )
            armCommandDeadline(context)
        case .graceOver(let command):
            delivery.store.giveBack(command, imei: imei, unsent: false)
            commandOpportunity(context)
        }
    }

    /// A Codec 12/14 response: which command it answers (nil: none in flight, counted).
    fileprivate func commandAnswered(_ message: DeviceMessage, imei: IMEI, at now: NIODeadline) -> CommandSlot.Correlation? {
        guard commands != nil, let answer = CommandDelivery.answer(message, from: imei),
            let correlation = commands!.answerReceived(answer, now: now)
        else {
            environment.commands?.metrics.uncorrelated.increment()
            return nil
        }
        return correlation
    }

    /// Records the outcome of an answered command, then looks for the next one.
    fileprivate func commandAnswerHandled(
        _ context: ChannelHandlerContext,
        _ correlation: CommandSlot.Correlation?,
        message: DeviceMessage,
        imei: IMEI
    ) {
        guard let correlation, let delivery = environment.commands else { return }
        if correlation.outcome != .late { delivery.metrics.inFlight.decrement() }
        delivery.store.finish(
            correlation.command,
            imei: imei,
            outcome: correlation.outcome,
            response: message,
            latency: correlation.latency,
            holdLease: nil
        )
        logger.info(
            "command answered",
            metadata: [
                "event": "command.answered", "cmd_id": "\(correlation.command.id)", "outcome": "\(correlation.outcome.rawValue)",
                "latency_ms": .stringConvertible(correlation.latency.nanoseconds / 1_000_000),
            ]
        )
        commandTimer?.cancel()
        commandTimer = nil
        commandOpportunity(context)
    }

    /// The connection is gone: a command taken is given back; one written and unanswered is `unknown`.
    fileprivate func commandsClosed(imei: IMEI) {
        commandTimer?.cancel()
        commandTimer = nil
        guard commands != nil, let delivery = environment.commands else { return }
        switch commands!.connectionClosed() {
        case .none:
            break
        case .giveBack(let command):
            delivery.store.giveBack(command, imei: imei, unsent: true)
        case .release(let command):
            delivery.store.giveBack(command, imei: imei, unsent: false)
        case .unknown(let command):
            delivery.metrics.inFlight.decrement()
            delivery.store.finish(command, imei: imei, outcome: .unknown, response: nil, latency: nil, holdLease: nil)
            logger.warning(
                "connection lost with a command unanswered: outcome unknown",
                metadata: ["event": "command.unknown", "cmd_id": "\(command.id)"]
            )
        }
    }
}

@available(*, unavailable)
extension DeviceSessionHandler: Sendable {}

/// Sent through every device pipeline when the server drains: finish the packet in flight, read nothing more.
struct SessionDrain: Sendable {}

/// Sent to a connection whose IMEI logged in again on a newer one: close.
struct SessionReplaced: Sendable {}

/// Milliseconds since the UNIX epoch, from the system clock.
func wallClockMilliseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec / 1_000_000)
}

/// `ip:port` of a peer, for logs.
func peerString(_ address: SocketAddress?) -> String {
    guard let address else { return "unknown" }
    guard let ip = address.ipAddress, let port = address.port else { return "\(address)" }
    return address.protocol == .inet6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
}
