/// What `simulate` prints: throughput, latency, resends (the `--verify` oracle is SimulationVerification.swift).
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
                "\"verify\":{" + verify.fields.map { "\"\($0.name)\":\($0.value)" }.joined(separator: ",") + "}"
            )
        }
        return "{" + members.joined(separator: ",") + "}"
    }
}

extension SimulationVerification.Outcome {
    /// The verdict's numbers, in output order (the `verify:` line and the JSON summary's `verify` object).
    public var fields: [(name: String, value: Int)] {
        [
            ("acked_records", ackedRecords), ("missing", missing), ("trimmed", trimmed), ("duplicates", duplicates),
            ("duplicate_records", duplicateRecords), ("order_violations", orderViolations), ("record_id_mismatches", recordIDMismatches),
            ("stream_entries", streamEntries),
        ]
    }
}
