/// What `simulate` prints (throughput, latency, resends) and the no-loss oracle behind `--verify`.
import Codec8
import Histogram

extension SimulationResult {
    /// The summary fields, in output order (numbers already formatted).
    public var summaryFields: [(name: String, value: String)] {
        let c = counters
        func ms(_ percentile: Double) -> String {
            latencyMicros.totalCount == 0 ? "0" : Simulator.fixed(Double(latencyMicros.valueAtPercentile(percentile)) / 1000, 3)
        }
        let seconds = max(elapsedSeconds, 1e-9)
        // UDP only: what the TCP summary has always been stays as it was.
        let udp: [(String, String)] =
            configuration.transport == .udp
            ? [("acks_dropped", "\(c.acksDropped)"), ("stale_acks", "\(c.staleAcks)"), ("socket_errors", "\(c.socketErrors)")] : []
        let fields: [(name: String, value: String)] = [
            ("devices", "\(configuration.devices)"),
            ("duration_s", Simulator.fixed(elapsedSeconds, 2)),
            ("records_sent", "\(c.recordsSent)"),
            ("records_acked", "\(c.recordsAcked)"),
            ("sent_per_s", Simulator.fixed(Double(c.recordsSent) / seconds, 0)),
            ("acked_per_s", Simulator.fixed(Double(c.recordsAcked) / seconds, 0)),
            ("resent_per_s", Simulator.fixed(Double(c.resends) / seconds, 1)),
            ("packets_sent", "\(c.packetsSent)"),
            ("packets_acked", "\(c.packetsAcked)"),
            ("resends", "\(c.resends)"),
            ("errors", "\(c.errors)"),
            ("timeouts", "\(c.timeouts)"),
            ("wrong_acks", "\(c.wrongAcks)"),
            ("unrecovered_wrong_acks", "\(c.unrecoveredWrongAcks)"),
            ("disconnects", "\(c.disconnects)"),
            ("connect_failures", "\(c.connectFailures)"),
            ("login_refusals", "\(c.loginRefusals)"),
            ("protocol_errors", "\(c.protocolErrors)"),
            ("corrupt_sends", "\(c.corruptSends)"),
            ("corrupt_acked", "\(c.corruptAcked)"),
            ("connections", "\(c.connections)"),
            ("churn_drops", "\(c.churnDrops)"),
            ("keepalives", "\(c.keepalives)"),
            ("unacked_at_end", "\(c.unackedAtEnd)"),
            ("commands_received", "\(c.commandsReceived)"),
            ("commands_answered", "\(c.commandsAnswered)"),
            ("commands_overlapping", "\(c.commandsOverlapping)"),
        ]
        return fields + udp + [
            ("ack_p50_ms", ms(50)),
            ("ack_p99_ms", ms(99)),
            ("ack_p999_ms", ms(99.9)),
            ("ack_max_ms", latencyMicros.totalCount == 0 ? "0" : Simulator.fixed(Double(latencyMicros.max) / 1000, 3)),
            ("cpu_user_s", Simulator.fixed(cpuUserSeconds, 2)),
            ("cpu_sys_s", Simulator.fixed(cpuSystemSeconds, 2)),
            ("cpu_s", Simulator.fixed(cpuUserSeconds + cpuSystemSeconds, 2)),
            ("seed", "\(configuration.seed)"),
        ]
    }

    /// `simulate: devices=... duration_s=... ...`
    public var summaryLine: String {
        "simulate: " + summaryFields.map { "\($0.name)=\($0.value)" }.joined(separator: " ")
    }

    /// The summary as one JSON object; `verify` adds its fields under `verify`.
    public func summaryJSON(verify: SimulationVerification.Outcome?) -> String {
        var members = summaryFields.map { "\"\($0.name)\":\($0.value)" }
        if let verify {
            members.append(
                "\"verify\":{\"acked_records\":\(verify.ackedRecords),\"missing\":\(verify.missing),\"trimmed\":\(verify.trimmed),"
                    + "\"duplicates\":\(verify.duplicates),\"stream_entries\":\(verify.streamEntries)}"
            )
        }
        return "{" + members.joined(separator: ",") + "}"
    }
}

/// The no-loss oracle: every ACKed (device, timestamp) must be in the stream.
///
/// Feed it every entry of the stream (``add(deviceID:payload:)``); entries of other devices (IMEIs
/// outside the fleet's range) are ignored. Duplicates (a key stored more than once, as a resend after a
/// lost ACK makes over TCP) are counted; over UDP they fail the check (``Outcome/failed``).
public struct SimulationVerification {
    public struct Outcome: Sendable, Equatable {
        public var ackedRecords = 0
        /// ACKed keys absent from the stream (and not explained by trimming).
        public var missing = 0
        /// ACKed keys absent from a trimmed stream that come, for their device, before its oldest key still
        /// in the stream: `MAXLEN` trimming removed them (the server publishes a device's packets in ACK order).
        public var trimmed = 0
        /// Extra copies of keys of the fleet in the stream.
        public var duplicates = 0
        /// Whether a duplicate fails the check: over UDP the server answers a resend without storing it
        /// again, so none may be there; over TCP a resend after a lost ACK is stored again, by design.
        public var duplicatesFail = false
        /// Stream entries of the fleet's devices.
        public var streamEntries = 0
        /// Entries whose payload had no readable `timestamp_ms`.
        public var unreadable = 0
        /// Up to 10 missing keys, for the error message.
        public var firstMissing: [String] = []

        /// The oracle's verdict: an ACKed record is missing, or (UDP) a record was stored twice.
        public var failed: Bool { missing > 0 || (duplicatesFail && duplicates > 0) }
    }

    private let configuration: SimulatorConfiguration
    private let ackLog: [[UInt64]]
    private var seen: [[UInt64]]
    private var unreadable = 0
    /// Whether entries were removed from the stream (XINFO STREAM: `entries-added` above `length`); with
    /// shards, from any shard (prefer ``trimmedShards``).
    public var streamTrimmed = false
    /// Keys the stream is split into (`REDIS_STREAM_SHARDS`), and which of them were trimmed: a device's
    /// records are in its shard only, so only that shard's trimming explains them missing.
    public var shards = 1
    public var trimmedShards: Set<Int> = []

    public init(result: SimulationResult) {
        configuration = result.configuration
        ackLog = result.ackLog
        seen = Array(repeating: [], count: result.configuration.devices)
    }

    /// One stream entry: its `device_id` field and its `payload` JSON.
    public mutating func add(deviceID: String, payload: String) {
        guard let imei = UInt64(deviceID), imei >= configuration.imeiBase else { return }
        let index = imei - configuration.imeiBase
        guard index < UInt64(seen.count) else { return }
        guard let ts = Self.timestampMs(in: payload) else {
            unreadable += 1
            return
        }
        seen[Int(index)].append(ts)
    }

    /// Reads `"timestamp_ms":N` from a compact payload (docs/record-schema.md).
    static func timestampMs(in payload: String) -> UInt64? {
        let key = Array("\"timestamp_ms\":".utf8)
        let bytes = Array(payload.utf8)
        guard bytes.count > key.count else { return nil }
        var i = 0
        while i + key.count <= bytes.count {
            if bytes[i] == key[0], bytes[i..<(i + key.count)].elementsEqual(key) {
                var j = i + key.count
                var value: UInt64 = 0
                var digits = 0
                while j < bytes.count, bytes[j] >= 0x30, bytes[j] <= 0x39 {
                    let (m, o1) = value.multipliedReportingOverflow(by: 10)
                    let (a, o2) = m.addingReportingOverflow(UInt64(bytes[j] - 0x30))
                    if o1 || o2 { return nil }
                    value = a
                    digits += 1
                    j += 1
                }
                return digits > 0 ? value : nil
            }
            i += 1
        }
        return nil
    }

    public func outcome() -> Outcome {
        var outcome = Outcome()
        outcome.unreadable = unreadable
        outcome.duplicatesFail = configuration.transport == .udp
        for device in seen.indices {
            var stored = seen[device]
            outcome.streamEntries += stored.count
            stored.sort()
            var unique = 0
            for k in stored.indices where k == 0 || stored[k] != stored[k - 1] { unique += 1 }
            outcome.duplicates += stored.count - unique
            guard device < ackLog.count else { continue }
            let trimmed =
                streamTrimmed || trimmedShards.contains(StreamShards.shard(of: configuration.imei(of: device), count: shards))
            var anyStored = false
            for ts in ackLog[device] {
                outcome.ackedRecords += 1
                if Self.contains(stored, ts) {
                    anyStored = true
                } else if trimmed && !anyStored {
                    outcome.trimmed += 1
                } else {
                    outcome.missing += 1
                    if outcome.firstMissing.count < 10 {
                        outcome.firstMissing.append("\(configuration.imei(of: device)):\(ts)")
                    }
                }
            }
        }
        return outcome
    }

    private static func contains(_ sorted: [UInt64], _ value: UInt64) -> Bool {
        var low = 0
        var high = sorted.count
        while low < high {
            let mid = (low + high) / 2
            if sorted[mid] < value { low = mid + 1 } else { high = mid }
        }
        return low < sorted.count && sorted[low] == value
    }
}
