/// The UDP listener: AVL datagrams decoded, published, ACKed once Redis confirmed them; resends recognised.
import Codec8
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import RedisWire

/// Where a UDP packet's ACK goes: the datagram's source and its channel packet ID.
struct UDPReplyTarget {
    let address: SocketAddress
    let packetID: UInt16
}

/// The UDP listener (`UDP_PORT`): one datagram channel on one event loop, its handler, and its half of
/// the drain.
final class UDPListener: Sendable {
    private let environment: SessionEnvironment
    private let group: any EventLoopGroup
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)

    init(environment: SessionEnvironment, group: any EventLoopGroup) {
        self.environment = environment
        self.group = group
    }

    /// Receive buffer for one datagram: the largest UDP payload fits, so an oversized datagram is read
    /// whole and refused by its length, never cut short by the kernel.
    static let receiveBytes = 65_536

    /// Binds `UDP_HOST:UDP_PORT`; returns the bound address.
    func start(host: String, port: Int) async throws -> SocketAddress {
        let environment = self.environment
        let bootstrap = DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            // A bounded batch per loop tick: a datagram flood cannot keep the loop from TCP devices.
            .channelOption(.maxMessagesPerRead, value: 16)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: Self.receiveBytes))
            // Room for bursts between reads; the kernel caps it at net.core.rmem_max (and doubles it).
            .channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(environment.configuration.udpReceiveBufferBytes))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(UDPDatagramHandler(environment: environment))
                }
            }
        let bound = try await bootstrap.bind(host: host, port: port).get()
        channel.withLockedValue { $0 = bound }
        let address = bound.localAddress!
        let granted = (try? await bound.getOption(.socketOption(.so_rcvbuf)).get()) ?? 0
        environment.logger.lifecycle.info(
            "listening for UDP datagrams",
            metadata: [
                "event": "server.udp_listening", "address": "\(address)", "port": .stringConvertible(address.port ?? 0),
                "receive_buffer_bytes": .stringConvertible(granted),
            ]
        )
        return address
    }

    /// The drain's UDP half begins: from the moment this returns, new packets are no longer published (a
    /// resend of a stored one is still ACKed). ``drain(_:until:)`` finishes it.
    func beginDrain() async -> UDPDrainStarted? {
        guard let channel = channel.withLockedValue({ $0 }) else { return nil }
        let answered = channel.eventLoop.makePromise(of: Void.self)
        try? await channel.eventLoop.submit {
            channel.pipeline.fireUserInboundEventTriggered(UDPDrain(answered: answered))
        }.get()
        return UDPDrainStarted(channel: channel, answered: answered.futureResult)
    }

    /// Waits until every published packet is answered or `deadline`, then closes the socket. Returns the
    /// packets still unanswered at the deadline (never ACKed: their devices resend them).
    func drain(_ started: UDPDrainStarted?, until deadline: NIODeadline) async -> Int {
        guard let started else { return 0 }
        let (channel, answered) = (started.channel, started.answered)
        let timer = channel.eventLoop.scheduleTask(deadline: deadline) {
            channel.pipeline.fireUserInboundEventTriggered(UDPDrainDeadline())
        }
        try? await answered.get()
        timer.cancel()
        let left =
            (try? await channel.eventLoop.submit { () -> Int in
                (try? channel.pipeline.syncOperations.handler(type: UDPDatagramHandler.self))?.published ?? 0
            }.get()) ?? 0
        try? await channel.close()
        return left
    }
}

/// Sent to the UDP handler when the server drains; `answered` succeeds once nothing it published waits.
/// A UDP drain under way: the socket, and when every published packet is answered.
struct UDPDrainStarted: Sendable {
    let channel: any Channel
    let answered: EventLoopFuture<Void>
}

struct UDPDrain: Sendable {
    let answered: EventLoopPromise<Void>
}

/// Sent to the UDP handler at the drain's deadline: answer the drain now.
struct UDPDrainDeadline: Sendable {}

/// One datagram at a time: decode, consult the retransmit window, publish, ACK on Redis' confirmation.
/// Everything runs on the channel's event loop; publish outcomes hop back to it.
final class UDPDatagramHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let environment: SessionEnvironment
    private var window: UDPRetransmitWindow<UDPReplyTarget>
    private var rejectLog = LogLimiter()
    private var overflowLog = LogLimiter()
    private var failureLog = LogLimiter()
    /// Packets published and not yet answered.
    private(set) var published = 0
    /// Draining: new packets are not published.
    private var draining = false
    /// Who waits for the last published packet to be answered (the drain).
    private var drainWaiter: EventLoopPromise<Void>? = nil

    init(environment: SessionEnvironment) {
        self.environment = environment
        let configuration = environment.configuration
        window = UDPRetransmitWindow(
            capacity: configuration.udpWindowEntries,
            ttlNanoseconds: UInt64(configuration.udpWindowTTLMs) * 1_000_000
        )
    }

    /// What one datagram asks for, decided while its bytes are at hand.
    private enum Action {
        case rejected(Codec8Error)
        case unknownDevice(IMEI)
        case acknowledgeAgain(UDPReplyTarget, avlPacketID: UInt8, records: UInt8)
        case joined
        case draining
        /// New: its records are encoded in the writer.
        case publish(UDPRetransmitWindow<UDPReplyTarget>.Ticket, UDPReplyTarget, records: Int)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let received = NIODeadline.now()
        let maxDataLength = environment.configuration.maxFrameBytes
        let encoderBox = environment.encoder
        var commands: RESPBuffer? = nil
        let action = envelope.data.withUnsafeReadableBytes { raw -> Action in
            let datagram: UDPDatagramView
            do throws(Codec8Error) {
                datagram = try UDPDatagramView(datagram: raw, maxDataLength: maxDataLength)
            } catch {
                return .rejected(error)
            }
            guard environment.authority.verdict(datagram.imei) == .allowed else { return .unknownDevice(datagram.imei) }
            var hasher = Hasher()
            hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: raw[datagram.dataOffset...]))
            let reply = UDPReplyTarget(address: envelope.remoteAddress, packetID: datagram.packetID)
            let decision = window.admit(
                imei: datagram.imei,
                avlPacketID: datagram.avlPacketID,
                payloadHash: hasher.finalize(),
                reply: reply,
                now: received.uptimeNanoseconds
            )
            switch decision {
            case .acknowledgeAgain(let records):
                return .acknowledgeAgain(reply, avlPacketID: datagram.avlPacketID, records: records)
            case .joinPending:
                return .joined
            case .publish(let ticket):
                guard !draining else {
                    window.failed(ticket)
                    return .draining
                }
                environment.metrics.records(codec: datagram.packet.codec).increment(by: Int64(datagram.packet.recordCount))
                commands = encoderBox.encoder.records(of: datagram.packet, imei: datagram.imei, udp: true)
                return .publish(ticket, reply, records: datagram.packet.recordCount)
            }
        }
        switch action {
        case .rejected(let error):
            reject(error, from: envelope.remoteAddress, bytes: envelope.data.readableBytes)
        case .unknownDevice(let imei):
            environment.metrics.udpDatagrams(.unknownDevice).increment()
            environment.unknownDevice(imei, peer: envelope.remoteAddress, transport: "udp")
        case .acknowledgeAgain(let reply, let avlPacketID, let records):
            environment.metrics.udpDatagrams(.reacked).increment()
            acknowledge(context, reply, avlPacketID: avlPacketID, records: records)
        case .joined:
            environment.metrics.udpDatagrams(.joined).increment()
        case .draining:
            environment.metrics.udpDatagrams(.draining).increment()
        case .publish(let ticket, let reply, let records):
            publish(context, commands: commands!, ticket: ticket, reply: reply, records: records, received: received)
        }
        environment.metrics.udpWindowEntries.set(Int64(window.count))
    }

    /// Queues a new packet's `XADD`s; a full queue forgets it (no ACK: the device resends).
    private func publish(
        _ context: ChannelHandlerContext,
        commands: RESPBuffer,
        ticket: UDPRetransmitWindow<UDPReplyTarget>.Ticket,
        reply: UDPReplyTarget,
        records: Int,
        received: NIODeadline
    ) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let job = environment.makeJob(commands: commands, records: records, bound: bound) { handler, outcome in
            handler.0.answered(handler.1, ticket: ticket, reply: reply, records: records, received: received, outcome: outcome)
        }
        guard environment.publisher.submit(job) else {
            window.failed(ticket)
            environment.metrics.udpDatagrams(.overflow).increment()
            environment.metrics.publishOverflow.increment()
            if let heldBack = overflowLog.admit(nowNanoseconds: received.uptimeNanoseconds) {
                environment.logger.warning(
                    "publish queue full: UDP packet not acknowledged",
                    metadata: ["event": "udp.overflow", "records": .stringConvertible(records), "suppressed": .stringConvertible(heldBack)]
                )
            }
            return
        }
        published += 1
    }

    /// Redis answered a published packet: ACK it (to the latest copy's sender), or forget it so that
    /// the device's resend is published again.
    private func answered(
        _ context: ChannelHandlerContext,
        ticket: UDPRetransmitWindow<UDPReplyTarget>.Ticket,
        reply: UDPReplyTarget,
        records: Int,
        received: NIODeadline,
        outcome: PublishOutcome
    ) {
        published -= 1
        defer {
            environment.metrics.udpWindowEntries.set(Int64(window.count))
            if published == 0 { finishDrain() }
        }
        switch outcome {
        case .stored:
            let count = UInt8(records)
            let target = window.stored(ticket, records: count, now: NIODeadline.now().uptimeNanoseconds) ?? reply
            environment.metrics.udpDatagrams(.acked).increment()
            environment.metrics.acks.increment()
            environment.metrics.ackLatency.recordNanoseconds((NIODeadline.now() - received).nanoseconds)
            acknowledge(context, target, avlPacketID: ticket.key.avlPacketID, records: count)
        case .expired(let reason):
            window.failed(ticket)
            environment.metrics.udpDatagrams(.notStored).increment()
            environment.metrics.publishFailed(.datagram, reason: reason).increment()
            if let heldBack = failureLog.admit(nowNanoseconds: NIODeadline.now().uptimeNanoseconds) {
                environment.logger.error(
                    "UDP packet not confirmed by Redis: no ACK",
                    metadata: [
                        "event": "udp.publish_failed", "records": .stringConvertible(records), "reason": "\(reason)",
                        "suppressed": .stringConvertible(heldBack),
                    ]
                )
            }
        case .dropped:
            window.failed(ticket)
            environment.metrics.udpDatagrams(.notStored).increment()
        }
    }

    private func acknowledge(_ context: ChannelHandlerContext, _ target: UDPReplyTarget, avlPacketID: UInt8, records: UInt8) {
        let ack = UDPAck(packetID: target.packetID, avlPacketID: avlPacketID, acceptedRecords: records)
        var buffer = context.channel.allocator.buffer(capacity: 7)
        buffer.writeBytes(ack.bytes)
        context.writeAndFlush(wrapOutboundOut(AddressedEnvelope(remoteAddress: target.address, data: buffer)), promise: nil)
    }

    private func reject(_ error: Codec8Error, from peer: SocketAddress, bytes: Int) {
        environment.metrics.udpDatagrams(.malformed).increment()
        if let heldBack = rejectLog.admit(nowNanoseconds: NIODeadline.now().uptimeNanoseconds) {
            environment.logger.warning(
                "UDP datagram rejected: no ACK",
                metadata: [
                    "event": "udp.rejected", "error": "\(error.category)", "detail": "\(error)", "peer": "\(peerString(peer))",
                    "bytes": .stringConvertible(bytes), "suppressed": .stringConvertible(heldBack),
                ]
            )
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case let event as UDPDrain:
            draining = true
            drainWaiter = event.answered
            if published == 0 { finishDrain() }
        case is UDPDrainDeadline:
            finishDrain()
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// Answers the drain once (when the last packet is answered, or at its deadline).
    private func finishDrain() {
        drainWaiter?.succeed()
        drainWaiter = nil
    }

    /// A send to an unreachable peer (ICMP) or a similar socket error: count nothing, keep serving.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        environment.logger.debug("UDP socket error", metadata: ["event": "udp.socket_error", "error": "\(error)"])
    }
}

@available(*, unavailable)
extension UDPDatagramHandler: Sendable {}
