/// One simulated tracker over UDP: one datagram in flight, the same datagram again until it is ACKed.
import Codec8
import NIOCore
import NIOPosix

/// One simulated tracker over UDP (`simulate --transport udp`): a UDP socket of its own, connected to the
/// server, and a small state machine on one event loop.
///
/// ```
///  idle --start--> opening --socket--> ready --packet--> awaitingAck --right ACK--> ready
///                                                          |    ^
///                                                          +----+ no right ACK within the response
///                                                                 timeout: the same datagram again
/// ```
///
/// Each packet is built as a TCP device builds it (``SimulatorOutbox``), its AVL data array wrapped in
/// the UDP header with the device's IMEI, a channel packet ID and an AVL packet ID, both one more than the
/// previous packet's. A resend is the same datagram: same IDs, same bytes, so that the server can tell it
/// from a new packet. The right ACK echoes both IDs and accepts every record; `--drop-acks` makes the
/// device ignore that share of right ACKs, as if the network lost them. An ACK with the IDs of the packet
/// ACKed before is the second answer to a resend that crossed the first ACK, and is ignored.
final class SimulatedUDPDevice: SimulatorFleetDevice {
    enum State {
        case idle
        case opening
        case ready
        case awaitingAck
        case finished
    }

    let index: Int
    private let shard: SimulatorShard
    private let configuration: SimulatorConfiguration
    private let imei: IMEI
    private var outbox: SimulatorOutbox
    private let timers: SimulatorDeviceTimers
    private var random: SimulatorRandom
    private(set) var state = State.idle
    private var channel: (any Channel)?
    private var stopping = false
    private var wrongAckOutstanding = false
    /// The right ACK to the last send was ignored on purpose: its timeout is no fault of the server's.
    private var droppedThisSend = false
    /// The IDs of the datagram in flight (or the last one sent).
    private var packetID: UInt16
    private var avlPacketID: UInt8
    /// The IDs of the datagram ACKed before the one in flight.
    private var previousIDs: (packetID: UInt16, avlPacketID: UInt8)?

    init(index: Int, shard: SimulatorShard, track: SimulatorTrack, seed: UInt64) {
        self.index = index
        self.shard = shard
        configuration = shard.configuration
        imei = shard.configuration.imei(of: index)
        outbox = SimulatorOutbox(track: track, configuration: shard.configuration)
        timers = SimulatorDeviceTimers(eventLoop: shard.eventLoop)
        random = SimulatorRandom(seed: seed)
        // IDs start anywhere, as a device's do after a reboot; the server keys packets by IMEI and ID.
        packetID = UInt16(truncatingIfNeeded: random.next())
        avlPacketID = UInt8(truncatingIfNeeded: random.next())
    }

    // MARK: Driving

    /// Opens the socket after `delay` (the ramp-up).
    func start(after delay: TimeAmount) {
        outbox.startPacing(after: delay, configuration: configuration, random: &random)
        timers.schedule(at: .now() + delay) { [self] in open() }
    }

    /// No new packets from now on; a datagram in flight still gets its response timeout.
    func stop() {
        stopping = true
        if state != .awaitingAck { finish() }
    }

    /// The end, whatever is in flight.
    func hardStop() { finish() }

    private func open() {
        guard let server = shard.udpServer else { return finish() }
        state = .opening
        let device = NIOLoopBound(self, eventLoop: shard.eventLoop)
        DatagramBootstrap(group: shard.eventLoop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(SimulatorDatagramHandler(device: device.value))
                }
            }
            .connect(to: server)
            .assumeIsolated()
            .whenComplete { [self] result in opened(result) }
    }

    private func opened(_ result: Result<any Channel, any Error>) {
        guard state == .opening else {
            if case .success(let stale) = result { stale.close(promise: nil) }
            return
        }
        switch result {
        case .failure:
            // No socket (the process is out of descriptors, say): try again a little later.
            shard.counters.connectFailures += 1
            state = .idle
            timers.schedule(at: .now() + .milliseconds(Int64(configuration.backoffBaseMs))) { [self] in open() }
        case .success(let channel):
            shard.counters.connections += 1
            self.channel = channel
            state = .ready
            sendNext()
        }
    }

    /// Builds the next packet when its time has come, or ends the device.
    private func sendNext() {
        guard !stopping, !outbox.exhausted else { return finish() }
        if let due = outbox.nextPacketDue(configuration: configuration) {
            state = .ready
            timers.schedule(at: due) { [self] in sendNext() }
            return
        }
        outbox.encodeNext(shard: shard)
        packetID &+= 1
        avlPacketID &+= 1
        // The AVL data array is the TCP frame without its preamble, length field and CRC.
        let frame = shard.scratch
        let datagram = UDPDatagramView.encode(
            packetID: packetID,
            avlPacketID: avlPacketID,
            imei: imei,
            avlData: frame[8..<(frame.count - 4)]
        )
        var buffer = shard.allocator.buffer(capacity: datagram.count)
        buffer.writeBytes(datagram)
        outbox.hold(buffer)
        transmit()
    }

    /// Sends the datagram in flight (again) and awaits its ACK.
    private func transmit() {
        guard let channel, let bytes = outbox.packet else { return }
        outbox.sending()
        outbox.sent()
        droppedThisSend = false
        state = .awaitingAck
        timers.armResponse(timeout: .milliseconds(Int64(configuration.responseTimeoutMs))) { [self] in responseTimedOut() }
        // A failed write shows as a missing ACK: the timeout sends the datagram again.
        channel.writeAndFlush(bytes, promise: nil)
    }

    // MARK: Events from the socket

    func received(_ datagram: ByteBuffer) {
        guard state != .finished else { return }
        guard let ack = UDPAck(datagram.readableBytesView) else {
            shard.counters.protocolErrors += 1
            return
        }
        guard state == .awaitingAck, ack.packetID == packetID, ack.avlPacketID == avlPacketID else {
            if let previousIDs, previousIDs == (ack.packetID, ack.avlPacketID) {
                shard.counters.staleAcks += 1
            } else {
                shard.counters.protocolErrors += 1
            }
            return
        }
        guard Int(ack.acceptedRecords) == outbox.packetRecords else {
            // The timeout sends the same datagram again; a right ACK for it puts this right.
            shard.counters.wrongAcks += 1
            wrongAckOutstanding = true
            return
        }
        if random.chance(configuration.dropAcksRatio) {
            shard.counters.acksDropped += 1
            droppedThisSend = true
            return
        }
        timers.responseDeadline = nil
        outbox.acked(shard: shard, measured: true)
        wrongAckOutstanding = false
        previousIDs = (packetID, avlPacketID)
        state = .ready
        sendNext()
    }

    func socketError() {
        shard.counters.socketErrors += 1
    }

    private func responseTimedOut() {
        guard state == .awaitingAck else { return }
        if !droppedThisSend { shard.counters.timeouts += 1 }
        guard !stopping else { return finish() }
        shard.counters.resends += 1
        transmit()
    }

    // MARK: The end

    private func finish() {
        guard state != .finished else { return }
        outbox.finish(device: index, shard: shard)
        if wrongAckOutstanding { shard.counters.unrecoveredWrongAcks += 1 }
        timers.stop()
        channel?.close(promise: nil)
        channel = nil
        state = .finished
        shard.deviceFinished()
    }
}

@available(*, unavailable)
extension SimulatedUDPDevice: Sendable {}

/// Hands a UDP device's datagrams and socket errors to it.
final class SimulatorDatagramHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let device: SimulatedUDPDevice

    init(device: SimulatedUDPDevice) { self.device = device }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        device.received(unwrapInboundIn(data).data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        device.socketError()
    }
}

@available(*, unavailable)
extension SimulatorDatagramHandler: Sendable {}
