/// Counters and latency histograms shared by a simulated fleet.
import Histogram
import NIOCore

/// Counters of a simulation run (one set per event loop, summed at the end).
public struct SimulatorCounters: Sendable, Equatable {
    /// Distinct packets sent at least once, and their records.
    public var packetsSent = 0
    public var recordsSent = 0
    /// Packets answered with the right ACK, and their records.
    public var packetsAcked = 0
    public var recordsAcked = 0
    /// Sends of a packet already sent before (after a timeout, a wrong ACK, a close or a churn drop).
    public var resends = 0
    /// Sends with a deliberately broken CRC (`--corrupt-ratio`).
    public var corruptSends = 0
    /// TCP connections established, and logins answered 0x01.
    public var connections = 0
    public var logins = 0
    /// Connections dropped on purpose by `--churn`.
    public var churnDrops = 0
    public var keepalives = 0

    // Errors: each one made the device reconnect.
    /// No login answer or no ACK within the response timeout.
    public var timeouts = 0
    /// An ACK with another count than the packet's records.
    public var wrongAcks = 0
    /// An ACK for a packet sent with a broken CRC (the server must never do that).
    public var corruptAcked = 0
    /// The server closed the connection (expected after a corrupt packet, counted all the same).
    public var disconnects = 0
    public var connectFailures = 0
    /// A login answered 0x00.
    public var loginRefusals = 0
    /// Bytes from the server when none were expected, or a login answer other than 0x00/0x01 (UDP: a
    /// datagram that is no ACK, or an ACK for no datagram of the device's).
    public var protocolErrors = 0
    /// UDP: errors the device's socket reported (an ICMP port unreachable: nothing listens there).
    public var socketErrors = 0

    // UDP, not errors.
    /// Right ACKs ignored on purpose (`--drop-acks`): the device sent the same datagram again.
    public var acksDropped = 0
    /// Second ACKs of a datagram already ACKed (the answer to a resend that crossed the first ACK).
    public var staleAcks = 0

    // Downlink commands (TCP).
    /// Codec 12/14 commands received from the server, and those answered (a response or a nACK written).
    public var commandsReceived = 0
    public var commandsAnswered = 0
    /// Commands received while the device still owed the answer to an earlier one (the server must
    /// never have two outstanding).
    public var commandsOverlapping = 0

    // At the end.
    /// Devices whose last wrong ACK was never followed by the right one for the same packet.
    public var unrecoveredWrongAcks = 0
    /// Packets sent at least once and still without their ACK when their device stopped.
    public var unackedAtEnd = 0

    public init() {}

    /// Everything that went wrong on the wire.
    public var errors: Int {
        timeouts + wrongAcks + corruptAcked + disconnects + connectFailures + loginRefusals + protocolErrors + socketErrors
    }

    public static func + (a: SimulatorCounters, b: SimulatorCounters) -> SimulatorCounters {
        var s = a
        s.packetsSent += b.packetsSent
        s.recordsSent += b.recordsSent
        s.packetsAcked += b.packetsAcked
        s.recordsAcked += b.recordsAcked
        s.resends += b.resends
        s.corruptSends += b.corruptSends
        s.connections += b.connections
        s.logins += b.logins
        s.churnDrops += b.churnDrops
        s.keepalives += b.keepalives
        s.timeouts += b.timeouts
        s.wrongAcks += b.wrongAcks
        s.corruptAcked += b.corruptAcked
        s.disconnects += b.disconnects
        s.connectFailures += b.connectFailures
        s.loginRefusals += b.loginRefusals
        s.protocolErrors += b.protocolErrors
        s.socketErrors += b.socketErrors
        s.acksDropped += b.acksDropped
        s.staleAcks += b.staleAcks
        s.commandsReceived += b.commandsReceived
        s.commandsAnswered += b.commandsAnswered
        s.commandsOverlapping += b.commandsOverlapping
        s.unrecoveredWrongAcks += b.unrecoveredWrongAcks
        s.unackedAtEnd += b.unackedAtEnd
        return s
    }
}

/// What one event loop's devices did: counters, ACK latencies (microseconds) and, with an ACK log,
/// the ACKed timestamps per device index.
struct SimulatorShardSnapshot: Sendable {
    var counters: SimulatorCounters
    var latencyMicros: Histogram<UInt64>
    var ackLog: [(device: Int, timestamps: [UInt64])]
}

/// The state shared by the devices of one event loop; touched only on that loop.
final class SimulatorShard {
    let configuration: SimulatorConfiguration
    let eventLoop: any EventLoop
    var counters = SimulatorCounters()
    var latencyMicros = SimulatorShard.makeHistogram()
    var ackLog: [(device: Int, timestamps: [UInt64])] = []
    /// Encoder output, reused for every packet of this loop.
    var scratch: [UInt8] = []
    let allocator = ByteBufferAllocator()
    /// UDP: the server's address, resolved once for the whole fleet.
    let udpServer: SocketAddress?
    /// The devices of this loop, and how many of them have finished.
    var devices: [any SimulatorFleetDevice] = []
    private(set) var finishedDevices = 0
    /// Succeeds once every device of this loop has finished.
    let allFinished: EventLoopPromise<Void>

    init(configuration: SimulatorConfiguration, eventLoop: any EventLoop, udpServer: SocketAddress? = nil) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.udpServer = udpServer
        allFinished = eventLoop.makePromise()
        scratch.reserveCapacity(4096)
    }

    func deviceFinished() {
        finishedDevices += 1
        if finishedDevices == devices.count { allFinished.succeed() }
    }

    /// Up to one hour, three significant digits.
    static func makeHistogram() -> Histogram<UInt64> {
        var h = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
        h.autoResize = true
        return h
    }

    /// Everything at the end of the run.
    func snapshot() -> SimulatorShardSnapshot {
        SimulatorShardSnapshot(counters: counters, latencyMicros: latencyMicros, ackLog: ackLog)
    }
}

@available(*, unavailable)
extension SimulatorShard: Sendable {}

/// A simulated device as its shard drives it, over TCP or UDP; on the shard's event loop.
protocol SimulatorFleetDevice: AnyObject {
    /// Begins after `delay` (the ramp-up).
    func start(after delay: TimeAmount)
    /// No new packets from now on; a packet on the wire still gets its response timeout.
    func stop()
    /// The end, whatever is in flight.
    func hardStop()
}
