/// The `simulate` subcommand.
import ArgumentParser
import Codec8
import Ingest
import IngestTools
import Lifecycle
import RedisWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension SimulatorConfiguration.CodecChoice: ExpressibleByArgument {}
extension SimulatorConfiguration.Transport: ExpressibleByArgument {}

/// `teltonika-ingest simulate`: a fleet of devices against a server, for speed and the no-loss promise.
struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run a fleet of simulated Teltonika devices against a server and measure it.",
        discussion: """
            Each device logs in with its own IMEI (--imei-base + index), sends packets of realistic \
            FMB-style records (unique increasing timestamps, GPS along a route, IO elements of every \
            width, NX elements in Codec 8E), one packet in flight, and waits for the ACK. A wrong ACK, \
            no ACK within --response-timeout-ms, or a closed connection makes it reconnect (capped \
            exponential backoff with jitter), log in and resend the same packet. After --duration (or \
            --packets-per-device packets) no new packets are sent and the ACKs in flight are awaited.
            --transport udp: each device sends from a UDP socket of its own to --port (the server's \
            UDP_PORT), each packet one datagram with the device's IMEI, its own channel packet ID and AVL \
            packet ID (one more per new packet), one in flight. The ACK must echo both IDs and accept \
            every record; without it within --response-timeout-ms the same datagram (same IDs, same bytes) \
            is sent again. --drop-acks makes devices ignore that share of right ACKs, as if lost, so that \
            they resend and the server must answer without storing twice. The TCP faults (--churn, \
            --corrupt-ratio, --slow-link-bytes-per-second, --keepalive-ms) do not apply.
            Prints one summary line on standard output (--json: one JSON object): records sent and \
            ACKed, ACKed records per second, resends, errors, ACK latency percentiles (last byte written \
            to ACK read) and the simulator's own CPU seconds; UDP adds acks_dropped, stale_acks (second ACKs \
            of a packet already ACKed) and socket_errors. Progress once per second on a terminal.
            --verify then reads the whole --stream from --redis-url (with --stream-shards N, every key \
            <stream>:{0}..{N-1}, as REDIS_STREAM_SHARDS names them; against a Redis Cluster any node will \
            do: MOVED and ASK replies are followed to the node of each key) and checks that every ACKed \
            record (device_id, timestamp_ms) is there, and that the first stored copies of each device's \
            ACKed records are in the order it sent them; duplicates (TCP resends) are counted, not \
            failures, and labelled by record_id (duplicate_records: (device_id, record_id) stored more \
            than once; copies of a record that carry a record_id must carry the same one); records MAXLEN trimmed away \
            before the check are counted as trimmed, not missing. Over UDP a record stored twice fails the \
            check (the server dedupes resends).
            Devices answer the Codec 12/14 commands they receive (--command-answer, after \
            --command-answer-delay-ms) and count commands_received, commands_answered and \
            commands_overlapping (a command while an answer was still owed: the server must never do that).
            Exit status: 0 when all is well; 1 when no packet was ACKed, a wrong ACK was never put \
            right, a corrupt packet was ACKed, a command overlapped another, or (--verify) an ACKed record is missing or \
            out of order, copies of a record carry different record_ids, or (UDP) a record is stored twice; 2 on usage errors.
            """
    )

    @Option(help: "Devices, each with its own connection (UDP: its own socket).")
    var devices: Int

    @Option(help: "Seconds during which new packets are sent.")
    var duration: Double

    @Option(help: "tcp or udp: how the devices reach the server (udp: --port is the server's UDP_PORT).")
    var transport = SimulatorConfiguration.Transport.tcp

    @Option(help: "Packets each device sends, then it stops (0: as many as --duration allows).")
    var packetsPerDevice = 0

    @OptionGroup var server: ServerAddress

    @Option(help: "AVL records per packet (1-255).")
    var recordsPerPacket = 10

    @Option(help: "Codec: 8, 8E or mixed (each device picks one).")
    var codec = SimulatorConfiguration.CodecChoice.mixed

    @Option(help: "Packets per second per device (0: the next one as soon as the ACK is in).")
    var rate: Double = 0

    @Option(help: "Milliseconds to wait for the login answer and for each ACK.")
    var responseTimeoutMs = 5000

    @Option(help: "Bytes per second of each device's link, written in small chunks (0: no limit).")
    var slowLinkBytesPerSecond = 0

    @Option(help: "Mean seconds a connection lives before the device drops it and reconnects (0: never).")
    var churn: Double = 0

    @Option(help: "Share (0-1) of packets first sent with a broken CRC; the device then resends them intact.")
    var corruptRatio: Double = 0

    @Option(help: "Send the keep-alive byte 0xFF after this many idle milliseconds (0: never).")
    var keepaliveMs = 0

    @Option(help: "How devices answer Codec 12/14 commands: answer ('ok: <command>'), never, or nack (Codec 14 nACK).")
    var commandAnswer = "answer"

    @Option(help: "Milliseconds between a command received and its answer.")
    var commandAnswerDelayMs = 50

    @Option(help: "UDP: share (0-1) of right ACKs each device ignores, as if lost; it then sends the same datagram again.")
    var dropAcks: Double = 0

    @Flag(help: "After the run, check every ACKed record is in the Redis stream.")
    var verify = false

    @Option(name: .customLong("redis-url"), help: "Redis to verify against (a Redis Cluster: any of its nodes).")
    var redisURL = "redis://127.0.0.1:6379"

    @Option(help: "Stream to verify.")
    var stream = "telemetry:teltonika"

    @Option(help: "Keys the stream is split into (the server's REDIS_STREAM_SHARDS): --verify reads every one.")
    var streamShards = 1

    @Option(help: "IMEI of device 0 (15 digits); device i uses this plus i.")
    var imeiBase = "350000000000000"

    @Option(help: "Seed of the fleet's randomness (default: from the clock; printed in the summary).")
    var seed: UInt64?

    @Option(help: "Event-loop threads (0: one per core).")
    var threads = 0

    @Flag(help: "Print the summary as one JSON object.")
    var json = false

    func validate() throws {
        guard devices >= 1 else { throw ValidationError("--devices must be at least 1") }
        guard duration > 0, duration.isFinite else { throw ValidationError("--duration must be above 0") }
        guard (1...255).contains(recordsPerPacket) else { throw ValidationError("--records-per-packet must be 1-255") }
        guard rate >= 0, rate.isFinite else { throw ValidationError("--rate must be 0 or more") }
        guard responseTimeoutMs >= 1 else { throw ValidationError("--response-timeout-ms must be at least 1") }
        guard slowLinkBytesPerSecond >= 0 else { throw ValidationError("--slow-link-bytes-per-second must be 0 or more") }
        guard churn >= 0, churn.isFinite else { throw ValidationError("--churn must be 0 or more") }
        guard (0...1).contains(corruptRatio) else { throw ValidationError("--corrupt-ratio must be 0-1") }
        guard keepaliveMs >= 0 else { throw ValidationError("--keepalive-ms must be 0 or more") }
        guard SimulatorConfiguration.CommandAnswer(rawValue: commandAnswer) != nil else {
            throw ValidationError("--command-answer must be answer, never or nack")
        }
        guard commandAnswerDelayMs >= 0 else { throw ValidationError("--command-answer-delay-ms must be 0 or more") }
        guard threads >= 0 else { throw ValidationError("--threads must be 0 or more") }
        guard packetsPerDevice >= 0 else { throw ValidationError("--packets-per-device must be 0 or more") }
        guard (1...1024).contains(streamShards) else { throw ValidationError("--stream-shards must be 1-1024") }
        guard (0...1).contains(dropAcks) else { throw ValidationError("--drop-acks must be 0-1") }
        switch transport {
        case .tcp:
            guard dropAcks == 0 else { throw ValidationError("--drop-acks needs --transport udp") }
        case .udp:
            let tcpOnly =
                [("--churn", churn > 0), ("--corrupt-ratio", corruptRatio > 0), ("--keepalive-ms", keepaliveMs > 0)]
                + [("--slow-link-bytes-per-second", slowLinkBytesPerSecond > 0)]
            if let (flag, _) = tcpOnly.first(where: { $0.1 }) { throw ValidationError("\(flag) is for --transport tcp only") }
        }
        guard imeiBase.utf8.count == 15, let base = UInt64(imeiBase) else {
            throw ValidationError("--imei-base must be 15 digits, got '\(imeiBase)'")
        }
        guard base + UInt64(devices - 1) <= SimulatorConfiguration.maxIMEI else {
            throw ValidationError("--imei-base \(imeiBase) leaves no room for \(devices) 15-digit IMEIs")
        }
        if verify {
            do {
                _ = try RedisURL(parsing: redisURL)
            } catch {
                throw ValidationError("--redis-url: \(error)")
            }
        }
    }

    func run() async throws {
        var configuration = SimulatorConfiguration(devices: devices, durationSeconds: duration)
        configuration.transport = transport
        configuration.packetsPerDevice = packetsPerDevice
        configuration.dropAcksRatio = dropAcks
        configuration.host = server.host
        configuration.port = server.port
        configuration.recordsPerPacket = recordsPerPacket
        configuration.codec = codec
        configuration.packetsPerSecond = rate
        configuration.responseTimeoutMs = responseTimeoutMs
        configuration.slowLinkBytesPerSecond = slowLinkBytesPerSecond
        configuration.churnSeconds = churn
        configuration.corruptRatio = corruptRatio
        configuration.keepaliveMs = keepaliveMs
        configuration.commandAnswer = SimulatorConfiguration.CommandAnswer(rawValue: commandAnswer)!
        configuration.commandAnswerDelayMs = commandAnswerDelayMs
        configuration.imeiBase = UInt64(imeiBase)!
        configuration.seed = seed ?? UInt64(truncatingIfNeeded: time(nil)) &* 2_654_435_761
        configuration.threads = threads
        configuration.keepAckLog = verify

        var progress: (@Sendable (String) -> Void)?
        if isatty(STDERR_FILENO) == 1 { progress = { StandardIO.writeStderr($0) } }
        let result: SimulationResult
        do {
            result = try await Simulator.run(configuration, progress: progress)
        } catch {
            StandardIO.writeStderr("teltonika-ingest simulate: \(error)\n")
            terminate(.failure)
        }

        var outcome: SimulationVerification.Outcome?
        var verifyFailed = false
        if verify {
            do {
                outcome = try readStream(result)
            } catch {
                StandardIO.writeStderr("teltonika-ingest simulate: cannot verify against \(redisURL) \(stream): \(error)\n")
                verifyFailed = true
            }
        }
        if json {
            StandardIO.writeStdout(Array((result.summaryJSON(verify: outcome) + "\n").utf8))
        } else {
            var text = result.summaryLine + "\n"
            if let outcome { text += "verify: " + outcome.fields.map { "\($0.name)=\($0.value)" }.joined(separator: " ") + "\n" }
            StandardIO.writeStdout(Array(text.utf8))
        }
        if let outcome, outcome.missing > 0 {
            StandardIO.writeStderr(
                "teltonika-ingest simulate: \(outcome.missing) ACKed records missing from \(stream), e.g. "
                    + outcome.firstMissing.joined(separator: " ") + "\n"
            )
        }
        if let outcome, outcome.trimmed > 0 {
            StandardIO.writeStderr(
                "teltonika-ingest simulate: \(outcome.trimmed) ACKed records were trimmed from \(stream) by MAXLEN before the check "
                    + "(not counted as missing; raise REDIS_STREAM_MAXLEN or shorten the run to check them)\n"
            )
        }
        if let outcome, let violation = outcome.firstOrderViolation {
            StandardIO.writeStderr(
                "teltonika-ingest simulate: \(outcome.orderViolations) ACKed records stored out of their device's order in \(stream), "
                    + "first: \(violation)\n"
            )
        }
        if let outcome, outcome.recordIDMismatches > 0 {
            StandardIO.writeStderr(
                "teltonika-ingest simulate: \(outcome.recordIDMismatches) entries in \(stream) carry another record_id than the "
                    + "first copy of the same record: consumers could not dedupe them\n"
            )
        }
        if let outcome, !outcome.duplicatesFail, outcome.duplicateRecords > 0 {
            StandardIO.writeStderr(
                "teltonika-ingest simulate: \(outcome.duplicateRecords) records stored more than once in \(stream) (resends after a lost "
                    + "ACK; consumers dedupe on (device_id, record_id)), e.g. " + outcome.firstDuplicates.joined(separator: " ") + "\n"
            )
        }
        if let outcome, outcome.duplicatesFail, outcome.duplicates > 0 {
            StandardIO.writeStderr(
                "teltonika-ingest simulate: \(outcome.duplicates) records stored more than once in \(stream): over UDP the server "
                    + "must answer a resend without storing it again\n"
            )
        }
        if let outcome, outcome.unreadable > 0 {
            StandardIO.writeStderr("teltonika-ingest simulate: \(outcome.unreadable) stream entries without a readable timestamp_ms\n")
        }
        if !result.isClean || verifyFailed || outcome?.failed == true { terminate(.failure) }
    }

    /// Reads every shard of the stream in pages of 10,000 (XRANGE with an exclusive start).
    private func readStream(_ result: SimulationResult) throws -> SimulationVerification.Outcome {
        let connection = try RedirectFollowingConnection(url: try RedisURL(parsing: redisURL), timeoutMs: 30_000)
        var verification = SimulationVerification(result: result)
        verification.shards = streamShards
        for (shard, key) in StreamShards.keys(stream, count: streamShards).enumerated() {
            if try isTrimmed(key, connection) { verification.trimmedShards.insert(shard) }
            try read(key, connection, into: &verification)
        }
        return verification.outcome()
    }

    /// Whether MAXLEN trimming removed entries from `key` (XINFO STREAM: `entries-added` above `length`), so
    /// that the oldest records' absence is told apart from losses.
    private func isTrimmed(_ key: String, _ connection: RedirectFollowingConnection) throws -> Bool {
        guard case .array(let info) = try connection.command(["XINFO", "STREAM", key], key: key) else { return false }
        var numbers: [String: Int64] = [:]
        var i = 0
        while i + 1 < info.count {
            if case .string(let name) = info[i], case .integer(let n) = info[i + 1] { numbers[name] = n }
            i += 2
        }
        guard let added = numbers["entries-added"], let length = numbers["length"] else { return false }
        return added > length
    }

    /// Adds every entry of `key` to the verification.
    private func read(_ key: String, _ connection: RedirectFollowingConnection, into verification: inout SimulationVerification) throws {
        var start = "-"
        let page = 10_000
        while true {
            let reply = try connection.command(["XRANGE", key, start, "+", "COUNT", String(page)], key: key)
            if case .error(let message) = reply { throw VerifyError(message: message) }
            guard case .array(let entries) = reply else { throw VerifyError(message: "XRANGE answered \(reply)") }
            var lastID: String?
            for entry in entries {
                guard case .array(let pair) = entry, pair.count == 2, case .string(let id) = pair[0], case .array(let fields) = pair[1]
                else { throw VerifyError(message: "unexpected XRANGE entry \(entry)") }
                lastID = id
                var deviceID: String?
                var payload: String?
                var recordID: String?
                var i = 0
                while i + 1 < fields.count {
                    if case .string(let name) = fields[i], case .string(let value) = fields[i + 1] {
                        switch name {
                        case "device_id": deviceID = value
                        case "payload": payload = value
                        case "record_id": recordID = value
                        default: break
                        }
                    }
                    i += 2
                }
                if let deviceID, let payload { verification.add(deviceID: deviceID, payload: payload, recordID: recordID) }
            }
            guard entries.count == page, let lastID else { break }
            start = "(" + lastID
        }
    }
}

private struct VerifyError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
