/// What a simulated device sends and when, whatever the transport: the packet in flight, the pace, the
/// ACK bookkeeping and the device's timers.
import Codec8
import Histogram
import NIOCore

/// The packets of one simulated device: the next one's records (its track), the one in flight (encoded
/// once, sent again byte for byte until its ACK is accepted), the pace of new ones (`--rate`), how
/// many may still be built (`--packets-per-device`) and, for `--verify`, the timestamps ACKed so far.
/// The TCP and the UDP device differ only in how the bytes travel.
struct SimulatorOutbox {
    private var track: SimulatorTrack
    /// The packet waiting for its ACK; nil once ACKed.
    private(set) var packet: ByteBuffer?
    private(set) var packetRecords = 0
    /// How many times the packet in flight was sent.
    private(set) var attempts = 0
    /// When the packet in flight was last sent, for the ACK latency.
    private var sentAt = NIODeadline.uptimeNanoseconds(0)
    private var nextPacketAt = NIODeadline.uptimeNanoseconds(0)
    /// New packets this device may still build (`Int.max`: no limit).
    private var packetsLeft: Int
    private var ackLog: [UInt64] = []

    init(track: SimulatorTrack, configuration: SimulatorConfiguration) {
        self.track = track
        packetsLeft = configuration.packetsPerDevice > 0 ? configuration.packetsPerDevice : .max
    }

    /// Every packet this device may send was ACKed (`--packets-per-device`): it is done.
    var exhausted: Bool { packetsLeft == 0 && packet == nil }

    /// With `--rate`: the first packet at a random point of the first interval after `delay`, so a
    /// fleet that starts together does not send in step.
    mutating func startPacing(after delay: TimeAmount, configuration: SimulatorConfiguration, random: inout SimulatorRandom) {
        guard configuration.packetsPerSecond > 0 else { return }
        let interval = 1_000_000_000 / configuration.packetsPerSecond
        nextPacketAt = .now() + delay + .nanoseconds(Int64(Double.random(in: 0..<interval, using: &random)))
    }

    /// When a new packet may be built: nil for now (the pace moves on by one interval, never behind
    /// now), else the time to wait for.
    mutating func nextPacketDue(configuration: SimulatorConfiguration) -> NIODeadline? {
        guard configuration.packetsPerSecond > 0 else { return nil }
        let now = NIODeadline.now()
        if now < nextPacketAt { return nextPacketAt }
        nextPacketAt = nextPacketAt + .nanoseconds(Int64(1_000_000_000 / configuration.packetsPerSecond))
        if nextPacketAt < now { nextPacketAt = now }
        return nil
    }

    /// The next packet's records, encoded as a TCP AVL frame into the shard's scratch buffer and counted
    /// as sent; the caller hands the bytes it sends to ``hold(_:)``.
    mutating func encodeNext(shard: SimulatorShard) {
        track.advance()
        shard.scratch.removeAll(keepingCapacity: true)
        // The track's records always encode: their count (1-255) and IO elements are the simulator's own.
        try! AVLPacketEncoder.encode(track.records, codec: track.codec, into: &shard.scratch)
        packetRecords = track.records.count
        if packetsLeft != .max { packetsLeft -= 1 }
        shard.counters.packetsSent += 1
        shard.counters.recordsSent += packetRecords
    }

    /// Keeps `bytes` as the packet in flight, not sent yet.
    mutating func hold(_ bytes: ByteBuffer) {
        packet = bytes
        attempts = 0
    }

    /// One more send of the packet in flight.
    mutating func sending() { attempts += 1 }

    /// The last send is on the wire: the ACK latency counts from now.
    mutating func sent() { sentAt = .now() }

    /// The right ACK was accepted: its latency (`measured`: from the last send; else 1 µs, for an ACK
    /// that came before the write completed), the counters, the ACK log; the packet is done.
    mutating func acked(shard: SimulatorShard, measured: Bool) {
        let micros = measured ? max(1, (NIODeadline.now() - sentAt).nanoseconds / 1000) : 1
        _ = shard.latencyMicros.record(UInt64(micros))
        shard.counters.packetsAcked += 1
        shard.counters.recordsAcked += packetRecords
        if shard.configuration.keepAckLog {
            for record in track.records { ackLog.append(record.timestampMs) }
        }
        packet = nil
    }

    /// The device stops: a packet sent and never ACKed is counted; the ACK log goes to the shard.
    mutating func finish(device index: Int, shard: SimulatorShard) {
        if packet != nil, attempts > 0 { shard.counters.unackedAtEnd += 1 }
        if shard.configuration.keepAckLog {
            shard.ackLog.append((index, ackLog))
            ackLog = []
        }
    }
}

/// The timers of one simulated device, on its event loop: one task at a time for the start, the pace or
/// a backoff, and a response deadline.
///
/// Cancelling a NIO scheduled task searches the loop's whole timer heap (thousands of entries with a
/// big fleet), so the response timer is never cancelled: it is lazy (one check pending at most; on
/// firing it looks at ``responseDeadline`` and re-arms), and a task that fires forgets itself before it
/// runs. After ``stop()`` nothing runs: a cancel does not stop a task already due in the same loop tick
/// (seen under CPU starvation: a reconnect ran after the device finished, and it finished twice).
final class SimulatorDeviceTimers {
    private let eventLoop: any EventLoop
    private var task: Scheduled<Void>?
    /// When the answer awaited is overdue; nil when none is awaited.
    var responseDeadline: NIODeadline?
    private var responseCheckPending = false
    private var stopped = false

    init(eventLoop: any EventLoop) { self.eventLoop = eventLoop }

    /// Runs `body` at `deadline`, replacing the task pending.
    func schedule(at deadline: NIODeadline, _ body: @escaping () -> Void) {
        task?.cancel()
        task = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            task = nil
            guard !stopped else { return }
            body()
        }
    }

    /// Awaits an answer for `timeout` from now; `expired` runs once the deadline has passed unless it
    /// was cleared (set to nil) or moved meanwhile.
    func armResponse(timeout: TimeAmount, expired: @escaping () -> Void) {
        responseDeadline = .now() + timeout
        checkResponse(expired)
    }

    private func checkResponse(_ expired: @escaping () -> Void) {
        guard !responseCheckPending, let deadline = responseDeadline else { return }
        responseCheckPending = true
        eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            responseCheckPending = false
            guard !stopped, let deadline = responseDeadline else { return }
            if NIODeadline.now() >= deadline {
                responseDeadline = nil
                expired()
            } else {
                checkResponse(expired)
            }
        }
    }

    /// The device finished: the pending task is cancelled and nothing scheduled runs any more.
    func stop() {
        stopped = true
        responseDeadline = nil
        task?.cancel()
        task = nil
    }
}

@available(*, unavailable)
extension SimulatorDeviceTimers: Sendable {}
