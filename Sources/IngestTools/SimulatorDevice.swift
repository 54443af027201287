/// One simulated tracker: logs in, sends packets one at a time, resends what was not ACKed.
import Codec8
import Histogram
import NIOCore
import NIOPosix

/// One simulated tracker: a small state machine on one event loop, driving one TCP connection at a time.
///
/// ```
///  idle --start--> connecting --connected--> loggingIn --0x01--> ready --packet--> sending --written--> awaitingAck
///                     ^                          |                  ^                                      |
///                     |                          | timeout, 0x00,   +--------------- right ACK ------------+
///                     +------ backingOff <-------+ close, wrong ACK, ACK timeout (same packet resent later)
/// ```
///
/// A packet is encoded once and kept until its right ACK arrives; every resend writes the same bytes
/// (``SimulatorOutbox``). Everything here runs on ``eventLoop``; a connection's callbacks carry the
/// ``generation`` they were made for, and those of an older connection are ignored.
final class SimulatedDevice: SimulatorFleetDevice {
    enum State {
        case idle
        case connecting
        case loggingIn
        case ready
        case sending
        case awaitingAck
        case backingOff
        case finished
    }

    let index: Int
    private let shard: SimulatorShard
    private let configuration: SimulatorConfiguration
    private let eventLoop: any EventLoop
    private let loginFrame: ByteBuffer
    private var outbox: SimulatorOutbox
    private let timers: SimulatorDeviceTimers
    private var random: SimulatorRandom
    private(set) var state = State.idle
    private var channel: (any Channel)?
    private var generation = 0
    /// ACK bytes received so far.
    private var pending: [UInt8] = []

    /// Whether the packet in flight is first sent with a broken CRC (`--corrupt-ratio`), and whether the
    /// send awaiting its answer was that one.
    private var packetCorruptFirst = false
    private var sentCorrupt = false
    private var wrongAckOutstanding = false
    private var failedAttempts = 0
    private var stopping = false

    private var lastWriteAt = NIODeadline.uptimeNanoseconds(0)
    // The keep-alive timer is lazy as the response timer is (see ``SimulatorDeviceTimers``): one pending at
    // most; on firing it looks at `lastWriteAt` and re-arms.
    private var keepaliveTimerPending = false
    private var churnTimer: Scheduled<Void>?
    /// A command's answer due or waiting to be written (written when no packet is on the wire), and
    /// whether one is owed (received, not yet written).
    private var answerDue: ByteBuffer? = nil
    private var answerOwed = false

    init(index: Int, shard: SimulatorShard, track: SimulatorTrack, seed: UInt64) {
        self.index = index
        self.shard = shard
        configuration = shard.configuration
        eventLoop = shard.eventLoop
        loginFrame = ByteBuffer(bytes: shard.configuration.imei(of: index).loginFrame)
        outbox = SimulatorOutbox(track: track, configuration: shard.configuration)
        timers = SimulatorDeviceTimers(eventLoop: shard.eventLoop)
        random = SimulatorRandom(seed: seed)
        pending.reserveCapacity(8)
    }

    // MARK: Driving

    /// Connects after `delay` (the ramp-up).
    func start(after delay: TimeAmount) {
        outbox.startPacing(after: delay, configuration: configuration, random: &random)
        schedule(in: delay) { $0.connect() }
    }

    /// No new packets from now on; a packet on the wire still gets its response timeout.
    func stop() {
        stopping = true
        switch state {
        case .sending, .awaitingAck, .finished: return
        default: finish()
        }
    }

    /// The end, whatever is in flight.
    func hardStop() { finish() }

    private func connect() {
        state = .connecting
        generation &+= 1
        let g = generation
        let device = NIOLoopBound(self, eventLoop: eventLoop)
        ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.milliseconds(Int64(configuration.responseTimeoutMs)))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(SimulatorChannelHandler(device: device.value, generation: g))
                }
            }
            .connect(host: configuration.host, port: configuration.port)
            .assumeIsolated()
            .whenComplete { [self] result in connected(result, generation: g) }
    }

    private func connected(_ result: Result<any Channel, any Error>, generation g: Int) {
        guard g == generation, state == .connecting else {
            if case .success(let stale) = result { stale.close(promise: nil) }
            return
        }
        switch result {
        case .failure:
            shard.counters.connectFailures += 1
            reconnectLater()
        case .success(let channel):
            shard.counters.connections += 1
            // An answer owed on the previous connection is lost with it (the server records `unknown`).
            answerDue = nil
            answerOwed = false
            self.channel = channel
            state = .loggingIn
            pending.removeAll(keepingCapacity: true)
            armResponseTimer()
            write(loginFrame) {}
        }
    }

    private func loggedIn() {
        shard.counters.logins += 1
        state = .ready
        armChurn()
        sendNext()
    }

    // MARK: Downlink commands

    /// A Codec 12/14 frame from the server: answered (or not) as `--command-answer` says, after the delay.
    private func commandReceived(_ frame: [UInt8]) {
        let parsed = frame.withUnsafeBytes { raw in try? TeltonikaFrame.parse(raw, maxDataLength: 4096) }
        guard case .message(let message)? = parsed, message.type == DeviceMessage.typeCommand else {
            shard.counters.protocolErrors += 1
            return fail()
        }
        shard.counters.commandsReceived += 1
        if answerOwed { shard.counters.commandsOverlapping += 1 }
        let imei = configuration.imei(of: index)
        let answer: DeviceMessage
        switch (configuration.commandAnswer, message.codec) {
        case (.never, _), (.nack, .codec12):
            return
        case (.nack, _):
            answer = DeviceMessage(codec: .codec14, type: DeviceMessage.typeNotAcknowledged, imei: imei.description, payload: [])
        case (.answer, .codec14):
            answer = DeviceMessage(
                codec: .codec14,
                type: DeviceMessage.typeResponse,
                imei: imei.description,
                payload: Array("ok: ".utf8) + message.payload
            )
        case (.answer, _):
            answer = DeviceMessage(codec: .codec12, type: DeviceMessage.typeResponse, payload: Array("ok: ".utf8) + message.payload)
        }
        answerOwed = true
        let g = generation
        let bytes = ByteBuffer(bytes: answer.encoded())
        // A timer of its own: `schedule` replaces the one pending (the next packet's pacing).
        eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(configuration.commandAnswerDelayMs))) { [self] in
            guard g == generation, state != .finished else { return }
            answerDue = bytes
            writeAnswerIfIdle()
        }
    }

    /// Writes the due answer unless a packet is on the wire (then it follows the packet's ACK).
    private func writeAnswerIfIdle() {
        guard let bytes = answerDue, state == .ready else { return }
        answerDue = nil
        answerOwed = false
        shard.counters.commandsAnswered += 1
        write(bytes) {}
    }

    /// Resends the pending packet, or builds the next one when its time has come.
    private func sendNext() {
        writeAnswerIfIdle()
        guard !stopping, !outbox.exhausted else { return finish() }
        if outbox.packet != nil {
            shard.counters.resends += 1
            return transmit()
        }
        if let due = outbox.nextPacketDue(configuration: configuration) {
            state = .ready
            schedule(at: due) { $0.sendNext() }
            armKeepalive()
            return
        }
        buildPacket()
        transmit()
    }

    private func buildPacket() {
        outbox.encodeNext(shard: shard)
        var buffer = shard.allocator.buffer(capacity: shard.scratch.count)
        buffer.writeBytes(shard.scratch)
        outbox.hold(buffer)
        packetCorruptFirst = shard.configuration.corruptRatio > 0 && random.chance(configuration.corruptRatio)
    }

    private func transmit() {
        guard var bytes = outbox.packet else { return }
        sentCorrupt = outbox.attempts == 0 && packetCorruptFirst
        outbox.sending()
        if sentCorrupt {
            // The last CRC byte flipped: a copy, the packet itself stays intact for the resend.
            let last = bytes.writerIndex - 1
            bytes.setInteger(bytes.getInteger(at: last, as: UInt8.self)! ^ 0x5A, at: last)
            shard.counters.corruptSends += 1
        }
        state = .sending
        pending.removeAll(keepingCapacity: true)
        write(bytes) { [self] in
            guard state == .sending else { return }
            state = .awaitingAck
            outbox.sent()
            armResponseTimer()
        }
    }

    // MARK: Events from the connection

    func received(_ buffer: ByteBuffer, generation g: Int) {
        guard g == generation else { return }
        var buffer = buffer
        switch state {
        case .loggingIn:
            guard let answer = buffer.readInteger(as: UInt8.self) else { return }
            timers.responseDeadline = nil
            switch answer {
            case 1 where buffer.readableBytes == 0:
                loggedIn()
            case 0:
                shard.counters.loginRefusals += 1
                fail()
            default:
                shard.counters.protocolErrors += 1
                fail()
            }
        case .ready, .sending, .awaitingAck:
            pending.append(contentsOf: buffer.readableBytesView)
            // A command frame starts with four zero bytes (an ACK never does: every packet has records).
            while pending.count >= 4 {
                if pending[0] | pending[1] | pending[2] | pending[3] == 0 {
                    guard pending.count >= 8 else { return }
                    let length = Int(UInt32(pending[4]) << 24 | UInt32(pending[5]) << 16 | UInt32(pending[6]) << 8 | UInt32(pending[7]))
                    guard length <= 4096 else {
                        shard.counters.protocolErrors += 1
                        return fail()
                    }
                    guard pending.count >= 12 + length else { return }
                    let frame = Array(pending[0..<(12 + length)])
                    pending.removeFirst(12 + length)
                    commandReceived(frame)
                    continue
                }
                guard state != .ready else {
                    shard.counters.protocolErrors += 1
                    return fail()
                }
                let value = UInt32(pending[0]) << 24 | UInt32(pending[1]) << 16 | UInt32(pending[2]) << 8 | UInt32(pending[3])
                // What follows the ACK (a command) survives the next packet's send, which resets `pending`.
                let rest = pending.dropFirst(4)
                pending.removeAll(keepingCapacity: true)
                ackReceived(value)
                guard state == .ready || state == .sending || state == .awaitingAck else { return }
                pending.append(contentsOf: rest)
            }
        default:
            shard.counters.protocolErrors += 1
            fail()
        }
    }

    func closed(generation g: Int) {
        guard g == generation else { return }
        switch state {
        case .loggingIn, .ready, .sending, .awaitingAck:
            shard.counters.disconnects += 1
            fail()
        case .idle, .connecting, .backingOff, .finished:
            return
        }
    }

    private func ackReceived(_ value: UInt32) {
        timers.responseDeadline = nil
        if sentCorrupt {
            shard.counters.corruptAcked += 1
            return fail()
        }
        guard value == UInt32(outbox.packetRecords) else {
            shard.counters.wrongAcks += 1
            wrongAckOutstanding = true
            return fail()
        }
        outbox.acked(shard: shard, measured: state == .awaitingAck)
        failedAttempts = 0
        wrongAckOutstanding = false
        state = .ready
        sendNext()
    }

    private func responseTimedOut() {
        switch state {
        case .loggingIn, .sending, .awaitingAck:
            shard.counters.timeouts += 1
            fail()
        default:
            return
        }
    }

    // MARK: Failure and the end

    /// The connection is no good: drop it, then reconnect (or stop, at the end).
    private func fail() {
        dropConnection()
        guard !stopping else { return finish() }
        reconnectLater()
    }

    private func reconnectLater() {
        dropConnection()
        guard !stopping else { return finish() }
        state = .backingOff
        let ceiling = min(configuration.backoffCapMs, configuration.backoffBaseMs << min(failedAttempts, 20))
        failedAttempts += 1
        let delay = ceiling / 2 + Int.random(in: 0...max(0, ceiling - ceiling / 2), using: &random)
        schedule(in: .milliseconds(Int64(delay))) { $0.connect() }
    }

    private func dropConnection() {
        generation &+= 1
        timers.responseDeadline = nil
        churnTimer?.cancel()
        churnTimer = nil
        channel?.close(promise: nil)
        channel = nil
        pending.removeAll(keepingCapacity: true)
    }

    private func finish() {
        guard state != .finished else { return }
        outbox.finish(device: index, shard: shard)
        if wrongAckOutstanding { shard.counters.unrecoveredWrongAcks += 1 }
        dropConnection()
        timers.stop()
        state = .finished
        shard.deviceFinished()
    }

    // MARK: Timers and writes

    private func schedule(in delay: TimeAmount, _ body: @escaping (SimulatedDevice) -> Void) {
        schedule(at: .now() + delay, body)
    }

    private func schedule(at deadline: NIODeadline, _ body: @escaping (SimulatedDevice) -> Void) {
        timers.schedule(at: deadline) { [self] in body(self) }
    }

    private func armResponseTimer() {
        timers.armResponse(timeout: .milliseconds(Int64(configuration.responseTimeoutMs))) { [self] in responseTimedOut() }
    }

    /// Drops the connection after a random time around `--churn` (half to one and a half of it).
    private func armChurn() {
        guard configuration.churnSeconds > 0 else { return }
        let g = generation
        let seconds = configuration.churnSeconds * Double.random(in: 0.5...1.5, using: &random)
        churnTimer = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) { [self] in
            churnTimer = nil
            guard g == generation, state != .finished else { return }
            shard.counters.churnDrops += 1
            dropConnection()
            guard !stopping else { return finish() }
            state = .backingOff
            schedule(in: .milliseconds(Int64.random(in: 0...50, using: &random))) { $0.connect() }
        }
    }

    /// Sends 0xFF once the connection has been idle for `--keepalive-ms` while waiting for the next packet.
    private func armKeepalive() {
        guard configuration.keepaliveMs > 0, !keepaliveTimerPending else { return }
        keepaliveTimerPending = true
        let idle = TimeAmount.milliseconds(Int64(configuration.keepaliveMs))
        eventLoop.assumeIsolated().scheduleTask(deadline: max(lastWriteAt + idle, .now())) { [self] in
            keepaliveTimerPending = false
            guard state == .ready else { return }
            if NIODeadline.now() >= lastWriteAt + idle {
                shard.counters.keepalives += 1
                write(ByteBuffer(integer: TeltonikaFramer.keepAliveByte)) {}
            }
            armKeepalive()
        }
    }

    /// Writes `bytes` (all at once, or dribbled with `--slow-link-bytes-per-second`); `completion` runs
    /// once the last byte is written, unless the connection changed meanwhile.
    private func write(_ bytes: ByteBuffer, completion: @escaping () -> Void) {
        guard let channel else { return }
        let g = generation
        let rate = configuration.slowLinkBytesPerSecond
        var rest = bytes
        let chunk = rate > 0 ? rest.readSlice(length: min(max(1, rate / 20), rest.readableBytes))! : rest
        if rate <= 0 { rest.moveReaderIndex(forwardBy: rest.readableBytes) }
        let delay = TimeAmount.nanoseconds(Int64(chunk.readableBytes) * 1_000_000_000 / Int64(max(rate, 1)))
        lastWriteAt = .now()
        channel.writeAndFlush(chunk).assumeIsolated().whenComplete { [self] result in
            guard g == generation else { return }
            if case .failure = result {
                shard.counters.disconnects += 1
                return fail()
            }
            guard rest.readableBytes > 0 else { return completion() }
            eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
                guard g == generation else { return }
                write(rest, completion: completion)
            }
        }
    }
}

@available(*, unavailable)
extension SimulatedDevice: Sendable {}

/// Hands a connection's bytes and its end to its device.
final class SimulatorChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let device: SimulatedDevice
    private let generation: Int

    init(device: SimulatedDevice, generation: Int) {
        self.device = device
        self.generation = generation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        device.received(unwrapInboundIn(data), generation: generation)
    }

    func channelInactive(context: ChannelHandlerContext) {
        device.closed(generation: generation)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension SimulatorChannelHandler: Sendable {}
