import Codec8
import Logging
import NIOCore
import NIOPosix
import Prometheus
import Synchronization

/// What every session of the server shares.
final class SessionEnvironment: Sendable {
    let configuration: IngestConfiguration
    let publisher: RedisPublisher
    let registry = DeviceRegistry()
    let logger: Logger
    /// One entry encoder per event-loop thread (its 8 KiB scratch is not paid per connection).
    let encoders = ThreadSpecificVariable<EncoderBox>()
    /// Sessions with a packet published but not yet answered (ACK or close): what a drain waits for.
    let packetsInFlight = Atomic<Int>(0)

    init(configuration: IngestConfiguration, publisher: RedisPublisher, logger: Logger) {
        self.configuration = configuration
        self.publisher = publisher
        self.logger = logger
    }

    /// The calling event loop's encoder.
    var encoder: EncoderBox {
        if let box = encoders.currentValue { return box }
        let box = EncoderBox(
            StreamEntryEncoder(
                telemetryStream: configuration.telemetryStream,
                responsesStream: configuration.responsesStream,
                maxLength: configuration.streamMaxLength
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
}

/// One device connection: carries out what ``DeviceSessionStateMachine`` decides (login, packets one
/// in flight at a time, drain), with the bytes, the channel, Redis, metrics and logs.
///
/// While a packet is publishing the socket is not read (backpressure); bytes already received wait in
/// the buffer, which never holds more than one frame plus one read.
///
/// On ``SessionDrain`` (graceful shutdown) the session stops reading: a packet in flight still gets
/// published and ACKed, nothing after it is read or handled, and the server closes the connection
/// once the publish queue has drained.
final class DeviceSessionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let environment: SessionEnvironment
    private let framer: TeltonikaFramer
    private var session = DeviceSessionStateMachine<PacketInFlight>()
    private var pending: ByteBuffer? = nil
    private var handshakeTimer: Scheduled<Void>? = nil
    private var logger: Logger

    init(environment: SessionEnvironment) {
        self.environment = environment
        self.framer = TeltonikaFramer(maxDataLength: environment.configuration.maxFrameBytes)
        self.logger = environment.logger
    }

    // MARK: - Channel events

    func channelActive(context: ChannelHandlerContext) {
        logger[metadataKey: "peer"] = "\(peerString(context.remoteAddress))"
        IngestMetrics.shared.connectionsActive.increment()
        let timeout = TimeAmount.milliseconds(Int64(environment.configuration.handshakeTimeoutMs))
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            guard handler.session.handshakeTimedOut() else { return }
            IngestMetrics.shared.handshakes(result: "timeout").increment()
            handler.logger.warning("no login in time", metadata: ["event": "device.handshake_timeout"])
            handler.close(context)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        IngestMetrics.shared.connectionsActive.decrement()
        let ended = session.connectionClosed()
        if let packet = ended.abandoned {
            packet.job.cancel()
            environment.packetsInFlight.subtract(1, ordering: .relaxed)
        }
        if let imei = ended.imei { environment.registry.remove(imei, channel: context.channel) }
        if let rest = pending, rest.readableBytes > 0, ended.bufferedBytesAreTruncatedFrame {
            IngestMetrics.shared.frames(codec: "unknown", result: "malformed").increment()
            logger.warning(
                "connection closed inside a frame: no ACK",
                metadata: ["event": "frame.truncated", "error": "truncated", "buffered_bytes": "\(rest.readableBytes)"]
            )
        }
        logger.info("connection closed", metadata: ["event": "device.disconnected"])
        pending = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        IngestMetrics.shared.bytesReceived.increment(by: Int64(bytes.readableBytes))
        if pending == nil {
            pending = bytes
        } else {
            pending!.writeBuffer(&bytes)
        }
        process(context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is SessionDrain {
            session.drain()
            handshakeTimer?.cancel()
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
            return
        }
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            logger.info("idle connection closed", metadata: ["event": "device.idle_timeout"])
            close(context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.warning("connection error", metadata: ["event": "device.connection_error", "error": "\(error)"])
        close(context)
    }

    // MARK: - Framing

    /// Cuts and handles frames from the buffer until it needs more bytes or a packet is in flight.
    private func process(_ context: ChannelHandlerContext) {
        while let mode = session.framerMode, let buffer = pending, buffer.readableBytes > 0 {
            let decision: TeltonikaFramer.Decision
            do throws(Codec8Error) {
                decision = try buffer.withUnsafeReadableBytes { (raw) throws(Codec8Error) in try framer.next(raw, mode: mode) }
            } catch {
                reject(context, error: error, codec: buffer.getInteger(at: buffer.readerIndex + 8, as: UInt8.self))
                return
            }
            switch decision {
            case .needMore:
                return
            case .keepAlive:
                pending!.moveReaderIndex(forwardBy: 1)
                IngestMetrics.shared.keepAlives.increment()
            case .frame(let length):
                let frame = pending!.readSlice(length: length)!
                if mode == .login {
                    login(context, frame: frame)
                } else {
                    packet(context, frame: frame)
                }
            }
            if pending?.readableBytes == 0 { pending = nil }
        }
    }

    private func login(_ context: ChannelHandlerContext, frame: ByteBuffer) {
        handshakeTimer?.cancel()
        let parsed = frame.withUnsafeReadableBytes { raw in Result { () throws(Codec8Error) in try IMEI.parseLogin(raw) } }
        switch session.loginReceived(parsed) {
        case .accept(let imei):
            logger[metadataKey: "imei"] = "\(imei)"
            if let old = environment.registry.register(imei, channel: context.channel) {
                IngestMetrics.shared.connectionsReplaced.increment()
                logger.info(
                    "newer login replaces the older connection",
                    metadata: ["event": "device.replaced", "old_peer": "\(peerString(old.remoteAddress))"]
                )
                old.close(promise: nil)
            }
            IngestMetrics.shared.handshakes(result: "accepted").increment()
            logger.info("device logged in", metadata: ["event": "device.login"])
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(integer: UInt8(1))), promise: nil)
        case .refuse(let result, let error):
            refuseLogin(context, error: error, result: result)
        case .ignore:
            break
        }
    }

    /// Answers 0x00, closes once it is written. `result`: `rejected` (bad digits) or `malformed` (bad length).
    private func refuseLogin(_ context: ChannelHandlerContext, error: Codec8Error, result: String) {
        IngestMetrics.shared.handshakes(result: result).increment()
        logger.warning("login rejected", metadata: ["event": "device.login_rejected", "error": "\(error.category)", "detail": "\(error)"])
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(integer: UInt8(0)))).whenComplete { _ in channel.close(promise: nil) }
    }

    private func packet(_ context: ChannelHandlerContext, frame: ByteBuffer) {
        guard case .ready(let imei) = session.state else { return }
        let completed = NIODeadline.now()
        let encoderBox = environment.encoder
        var writer = RESPWriter()
        let outcome: Result<(codec: String, records: Int, isAVL: Bool), Codec8Error> = frame.withUnsafeReadableBytes { raw in
            do throws(Codec8Error) {
                switch try TeltonikaFrame.parse(raw, maxDataLength: framer.maxDataLength) {
                case .avl(let packet):
                    encoderBox.encoder.appendRecords(of: packet, imei: imei, to: &writer)
                    return .success((packet.codec.name, packet.recordCount, true))
                case .message(let message):
                    encoderBox.encoder.appendMessage(message, imei: imei, receivedMs: wallClockMilliseconds(), to: &writer)
                    logger.info(
                        "device message",
                        metadata: ["event": "device.message", "codec": "\(message.codec.name)", "type": "\(message.type)"]
                    )
                    return .success((message.codec.name, 0, false))
                }
            } catch {
                return .failure(error)
            }
        }
        switch outcome {
        case .failure(let error):
            reject(context, error: error, codec: frame.getInteger(at: frame.readerIndex + 8, as: UInt8.self))
        case .success(let parsed) where !parsed.isAVL:
            IngestMetrics.shared.frames(codec: parsed.codec, result: "ok").increment()
            IngestMetrics.shared.deviceMessages(codec: parsed.codec).increment()
            let logger = self.logger
            let job = PublishJob(
                commands: writer.bytes,
                commandCount: writer.commandCount,
                recordCount: 1,
                deadline: .now() + .milliseconds(Int64(environment.configuration.publishTimeoutMs)),
                completion: { outcome in
                    // Nothing waits for a device message (it is never ACKed), so its loss is only logged.
                    guard case .expired(let reason) = outcome else { return }
                    logger.error(
                        "device message not confirmed by Redis: not stored",
                        metadata: ["event": "publish.message_failed", "codec": "\(parsed.codec)", "reason": "\(reason)"]
                    )
                }
            )
            if !environment.publisher.submit(job) {
                IngestMetrics.shared.publishOverflow.increment()
                logger.warning("device message dropped: publish queue full", metadata: ["event": "publish.overflow"])
            }
        case .success(let parsed):
            IngestMetrics.shared.frames(codec: parsed.codec, result: "ok").increment()
            IngestMetrics.shared.records(codec: parsed.codec).increment(by: Int64(parsed.records))
            logger.debug("packet", metadata: ["event": "device.packet", "codec": "\(parsed.codec)", "records": "\(parsed.records)"])
            let action = session.packetDecoded(records: parsed.records) {
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                let job = PublishJob(
                    commands: writer.bytes,
                    commandCount: writer.commandCount,
                    recordCount: parsed.records,
                    deadline: .now() + .milliseconds(Int64(environment.configuration.publishTimeoutMs)),
                    completion: { outcome in
                        bound.eventLoop.execute {
                            let (handler, context) = bound.value
                            handler.published(context, outcome: outcome)
                        }
                    }
                )
                return PacketInFlight(job: job, frameCompleted: completed)
            }
            switch action {
            case .publish:
                environment.packetsInFlight.add(1, ordering: .relaxed)
                context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
                submit(context, job: session.inFlight!.job, waitedMs: 0)
            case .acknowledge(let records):
                acknowledge(context, records: records, frameCompleted: completed)
            case .ignore:
                break
            }
        }
    }

    /// Queues the job; a full queue is retried every 10 ms for up to `OVERFLOW_WAIT_MS`, then the
    /// connection is closed without ACK (the device resends after reconnecting).
    private func submit(_ context: ChannelHandlerContext, job: PublishJob, waitedMs: Int) {
        guard let current = session.inFlight, current.job === job else { return }
        if environment.publisher.submit(job) { return }
        let limit = environment.configuration.overflowWaitMs
        guard waitedMs < limit else {
            IngestMetrics.shared.publishOverflow.increment()
            logger.warning(
                "publish queue full: packet not acknowledged",
                metadata: ["event": "publish.overflow", "records": "\(job.recordCount)", "waited_ms": "\(waitedMs)"]
            )
            close(context)
            return
        }
        let step = min(10, limit - waitedMs)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .milliseconds(Int64(step))) {
            let (handler, context) = bound.value
            handler.submit(context, job: job, waitedMs: waitedMs + step)
        }
    }

    private func published(_ context: ChannelHandlerContext, outcome: PublishOutcome) {
        guard let packet = session.inFlight else { return }
        switch session.published(outcome) {
        case .acknowledge(let records, let resumeReading):
            acknowledge(context, records: records, frameCompleted: packet.frameCompleted)
            environment.packetsInFlight.subtract(1, ordering: .relaxed)
            guard resumeReading else { return }
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            process(context)
        case .closeUnconfirmed(let reason):
            logger.error(
                "records not confirmed by Redis: no ACK, closing",
                metadata: ["event": "publish.failed", "records": "\(packet.job.recordCount)", "reason": "\(reason)"]
            )
            close(context)
        case .close:
            close(context)
        case .ignore:
            break
        }
    }

    private func acknowledge(_ context: ChannelHandlerContext, records: Int, frameCompleted: NIODeadline) {
        var ack = context.channel.allocator.buffer(capacity: 4)
        ack.writeInteger(UInt32(records))
        // Counted first, so that whoever sees the ACK also sees it counted.
        IngestMetrics.shared.acks.increment()
        IngestMetrics.shared.ackLatency.recordNanoseconds((NIODeadline.now() - frameCompleted).nanoseconds)
        context.writeAndFlush(wrapOutboundOut(ack), promise: nil)
    }

    private func reject(_ context: ChannelHandlerContext, error: Codec8Error, codec: UInt8?) {
        let codecName = codec.flatMap { AVLCodec(rawValue: $0)?.name ?? DeviceMessage.Codec(rawValue: $0)?.name } ?? "unknown"
        let result: String
        switch session.frameRejected(error) {
        case .refuseLogin(let handshakeResult, let error):
            refuseLogin(context, error: error, result: handshakeResult)
            return
        case .close(let frameResult, _):
            result = frameResult
        }
        if case .unsupportedCodec = error { IngestMetrics.shared.unknownCodec.increment() }
        IngestMetrics.shared.frames(codec: codecName, result: result).increment()
        logger.warning(
            "frame rejected: no ACK, closing",
            metadata: ["event": "frame.rejected", "error": "\(error.category)", "detail": "\(error)", "codec": "\(codecName)"]
        )
        close(context)
    }

    private func close(_ context: ChannelHandlerContext) {
        session.inFlight?.job.cancel()
        pending = nil
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension DeviceSessionHandler: Sendable {}

/// Sent through every device pipeline when the server drains: finish the packet in flight, read nothing more.
struct SessionDrain: Sendable {}

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
