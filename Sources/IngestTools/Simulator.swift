/// `simulate`: a fleet of simulated trackers driving a server, with an ACK log for the no-loss oracle.
import Codec8
import Histogram
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a simulation run measured.
public struct SimulationResult: Sendable {
    public var configuration: SimulatorConfiguration
    /// From the first device's start to the last device's stop.
    public var elapsedSeconds: Double
    public var counters: SimulatorCounters
    /// ACK latency (last byte of the packet written to ACK read), in microseconds.
    public var latencyMicros: Histogram<UInt64>
    /// Per device index, the timestamps of its ACKed records in ACK order (empty without ``SimulatorConfiguration/keepAckLog``).
    public var ackLog: [[UInt64]]
    /// CPU time the simulator itself used during the run.
    public var cpuUserSeconds: Double
    public var cpuSystemSeconds: Double

    /// Whether the run itself went right: something was ACKed, every wrong ACK was recovered, and no
    /// corrupt packet was ACKed.
    public var isClean: Bool {
        counters.packetsAcked > 0 && counters.unrecoveredWrongAcks == 0 && counters.corruptAcked == 0 && counters.commandsOverlapping == 0
    }
}

/// Runs a fleet of ``SimulatedDevice``s against a server: `teltonika-ingest simulate`.
///
/// One `MultiThreadedEventLoopGroup` (a thread per core by default); device `i` lives on loop
/// `i % threads` with the other devices of that loop, which share one ``SimulatorShard`` (counters,
/// latency histogram, encoder buffer), so nothing is locked while the fleet runs. Devices start over a
/// short ramp (0.1 ms apart, at most 1 s in all), send new packets until the duration is over, then
/// wait for the ACKs in flight up to the response timeout.
public enum Simulator {
    public static func run(
        _ configuration: SimulatorConfiguration,
        progress: (@Sendable (String) -> Void)? = nil
    ) async throws -> SimulationResult {
        let threads = configuration.threads > 0 ? configuration.threads : System.coreCount
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let loops = Array(group.makeIterator())
        let cpuStart = cpuTimes()
        let start = NIODeadline.now()
        let stopAt = start + .nanoseconds(Int64(configuration.durationSeconds * 1e9))
        let hardStopAt = stopAt + .milliseconds(Int64(configuration.responseTimeoutMs) + 1000)
        let ramp = min(1_000_000_000, Int64(configuration.devices) * 100_000)
        // Records start 60 days back, as a tracker emptying its memory would send them.
        let firstRecordMs = UInt64(wallClockMs()) - 60 * 86_400_000
        // UDP devices send to an address, resolved once here rather than by each device on its loop.
        let udpServer =
            configuration.transport == .udp
            ? try SocketAddress.makeAddressResolvingHost(configuration.host, port: configuration.port) : nil

        var shards: [NIOLoopBound<SimulatorShard>] = []
        var finished: [EventLoopFuture<Void>] = []
        for (l, loop) in loops.enumerated() {
            let shard = try await loop.submit { () -> NIOLoopBound<SimulatorShard> in
                let shard = SimulatorShard(configuration: configuration, eventLoop: loop, udpServer: udpServer)
                for i in stride(from: l, to: configuration.devices, by: loops.count) {
                    let seed = configuration.seed &* 0x100_0000_01B3 &+ UInt64(i)
                    let codec: AVLCodec
                    switch configuration.codec {
                    case .codec8: codec = .codec8
                    case .codec8Extended: codec = .codec8Extended
                    case .mixed:
                        var pick = SimulatorRandom(seed: seed ^ 0xC0DE)
                        codec = pick.next() & 1 == 0 ? .codec8 : .codec8Extended
                    }
                    let track = SimulatorTrack(
                        codec: codec,
                        recordsPerPacket: configuration.recordsPerPacket,
                        seed: seed,
                        startMs: firstRecordMs + UInt64(i % 1000)
                    )
                    let device: any SimulatorFleetDevice =
                        switch configuration.transport {
                        case .tcp: SimulatedDevice(index: i, shard: shard, track: track, seed: ~seed)
                        case .udp: SimulatedUDPDevice(index: i, shard: shard, track: track, seed: ~seed)
                        }
                    shard.devices.append(device)
                    device.start(after: .nanoseconds(ramp * Int64(i) / Int64(configuration.devices)))
                }
                if shard.devices.isEmpty { shard.allFinished.succeed() }
                loop.assumeIsolated().scheduleTask(deadline: stopAt) { for d in shard.devices { d.stop() } }
                loop.assumeIsolated().scheduleTask(deadline: hardStopAt) { for d in shard.devices { d.hardStop() } }
                return NIOLoopBound(shard, eventLoop: loop)
            }.get()
            shards.append(shard)
            finished.append(shard.eventLoop.flatSubmit { shard.value.allFinished.futureResult })
        }

        let everyone = EventLoopFuture.andAllSucceed(finished, on: loops[0])
        if let progress {
            let shards = shards
            let reporter = Task {
                var last = SimulatorCounters()
                var lastTime = start
                while !Task.isCancelled {
                    try await Task.sleep(for: .seconds(1))
                    var now = SimulatorCounters()
                    for shard in shards { now = now + (try await shard.eventLoop.submit { shard.value.counters }.get()) }
                    let t = NIODeadline.now()
                    let rate = Double(now.recordsAcked - last.recordsAcked) / (Double((t - lastTime).nanoseconds) / 1e9)
                    progress(
                        "simulate: t=\(Simulator.fixed(Double((t - start).nanoseconds) / 1e9, 1))s records_acked=\(now.recordsAcked) "
                            + "acked_per_s=\(Simulator.fixed(rate, 0)) packets_acked=\(now.packetsAcked) resends=\(now.resends) errors=\(now.errors)\n"
                    )
                    last = now
                    lastTime = t
                }
            }
            try await everyone.get()
            reporter.cancel()
        } else {
            try await everyone.get()
        }
        let elapsed = Double((NIODeadline.now() - start).nanoseconds) / 1e9
        let cpuEnd = cpuTimes()

        var counters = SimulatorCounters()
        var latency = SimulatorShard.makeHistogram()
        var ackLog = [[UInt64]](repeating: [], count: configuration.keepAckLog ? configuration.devices : 0)
        for shard in shards {
            let snapshot = try await shard.eventLoop.submit { shard.value.snapshot() }.get()
            counters = counters + snapshot.counters
            latency.add(snapshot.latencyMicros)
            for (device, timestamps) in snapshot.ackLog { ackLog[device] += timestamps }
        }
        try await group.shutdownGracefully()
        return SimulationResult(
            configuration: configuration,
            elapsedSeconds: elapsed,
            counters: counters,
            latencyMicros: latency,
            ackLog: ackLog,
            cpuUserSeconds: cpuEnd.user - cpuStart.user,
            cpuSystemSeconds: cpuEnd.system - cpuStart.system
        )
    }

    /// CPU seconds this process has used (getrusage).
    static func cpuTimes() -> (user: Double, system: Double) {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return (
            Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6,
            Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
        )
    }

    static func wallClockMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// `x` with `digits` decimals (no Foundation).
    static func fixed(_ x: Double, _ digits: Int) -> String {
        guard x.isFinite else { return "0" }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let n = Int64((abs(x) * scale).rounded())
        let whole = n / Int64(scale)
        let sign = x < 0 && n != 0 ? "-" : ""
        guard digits > 0 else { return "\(sign)\(whole)" }
        let fraction = String(n % Int64(scale))
        return "\(sign)\(whole)." + String(repeating: "0", count: digits - fraction.count) + fraction
    }
}
