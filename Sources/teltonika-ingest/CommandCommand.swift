/// The `command` subcommand: queue a downlink command for a device in Redis, and wait for its answer.
import ArgumentParser
import Codec8
import Foundation
import Ingest
import Lifecycle
import RedisWire

/// `teltonika-ingest command`: downlink commands from a shell.
struct CommandCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "command",
        abstract: "Downlink commands (Codec 12/14) queued in Redis for a device.",
        subcommands: [Send.self]
    )

    /// `teltonika-ingest command send IMEI TEXT`.
    struct Send: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Queue a command for a device; with --wait, print its outcome and response.",
            discussion: """
                Writes the command as OPERATIONS.md's recipe does (the enqueue script, a `queued` event, a \
                wake-up notice). Prints the command id. With --wait, waits for the outcome and prints \
                `<outcome> <latency_ms> ms: <response>`; exits 0 when answered, 1 for any other outcome \
                (nack, timeout, late, expired, unknown, rejected) or when --wait-timeout passes first.
                """
        )

        @Argument(help: "The device's IMEI (15 digits).")
        var imei: String

        @Argument(help: "The command text (at most 160 characters), or hex bytes with --hex.")
        var text: String

        @Option(help: "12 (Codec 12) or 14 (Codec 14: only the device with this IMEI runs it).")
        var codec = 12

        @Flag(help: "TEXT is hex bytes (a binary payload).")
        var hex = false

        @Option(help: "Time to live before it is sent (e.g. 30s, 10m, 2h); past it, the command expires unsent.")
        var ttl = "10m"

        @Option(help: "Resends allowed after a timeout (0: never re-sent; commands act on vehicles).")
        var retryOnTimeout = 0

        @Flag(help: "Wait for the outcome and print it.")
        var wait = false

        @Option(help: "How long --wait waits at most (default: the TTL plus 2 minutes).")
        var waitTimeout: String?

        @Option(help: "The command id (default: time and random; unique per device).")
        var id: String?

        @Option(help: "Most commands queued per device; over it the command is refused.")
        var queueCap = 100

        @Option(help: ArgumentHelp(ToolRedis.help))
        var redisURL: String?

        @Option(help: "Command key prefix (default: $REDIS_COMMAND_PREFIX, else the server's default).")
        var prefix: String?

        @Option(help: "Command-events stream (default: $REDIS_COMMAND_EVENTS_STREAM, else the server's default).")
        var eventsStream: String?

        @Option(help: "Notices stream for the wake-up notice (default: $REDIS_NOTICES_STREAM, else the server's default).")
        var noticesStream: String?

        func validate() throws {
            guard IMEI(imei) != nil else { throw ValidationError("IMEI must be 15 digits, got '\(imei)'") }
            guard codec == 12 || codec == 14 else { throw ValidationError("--codec must be 12 or 14") }
            guard let payload = hex ? Hex.decode(text) : Array(text.utf8) else { throw ValidationError("TEXT is not hex") }
            guard !payload.isEmpty, payload.count <= CommandKeys.maxPayloadBytes else {
                throw ValidationError("the command must be 1 to \(CommandKeys.maxPayloadBytes) bytes, got \(payload.count)")
            }
            guard Duration.parse(ttl) != nil else { throw ValidationError("--ttl: expected e.g. 500ms, 30s, 10m, 2h") }
            guard waitTimeout.map({ Duration.parse($0) != nil }) ?? true else { throw ValidationError("--wait-timeout: expected e.g. 30s") }
            guard retryOnTimeout >= 0, queueCap >= 1 else { throw ValidationError("--retry-on-timeout ≥ 0 and --queue-cap ≥ 1") }
        }

        func run() async throws {
            let environment = ProcessInfo.processInfo.environment
            let defaults = IngestConfiguration()
            let keys = CommandKeys(prefix: prefix ?? environment["REDIS_COMMAND_PREFIX"] ?? defaults.commandPrefix)
            let events = eventsStream ?? environment["REDIS_COMMAND_EVENTS_STREAM"] ?? defaults.commandEventsStream
            let connection = ToolRedis.connect(option: redisURL, tool: "command")
            let payload = hex ? Hex.decode(text)! : Array(text.utf8)
            let now = Self.nowMs()
            let ttlMs = Int(Duration.parse(ttl)!.milliseconds)
            let commandID = id ?? "\(now)-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
            let reply = try connection.command(
                [
                    "EVAL", CommandKeys.enqueueScript, "2", keys.queue(imei), keys.command(imei, id: commandID), commandID, imei,
                    String(codec),
                    Hex.encode(payload), hex ? "" : text, String(now + ttlMs), String(retryOnTimeout), String(now), String(queueCap),
                    String(ttlMs + 86_400_000),
                ],
                key: keys.queue(imei)
            )
            if case .error(let message) = reply {
                StandardIO.writeStderr("teltonika-ingest command: not queued: \(message)\n")
                terminate(.failure)
            }
            _ = try connection.command(
                [
                    "XADD", events, "MAXLEN", "~", "100000", "*", "cmd_id", commandID, "imei", imei, "status", "queued", "attempt", "0",
                    "instance", "producer", "latency_ms", "", "response", "",
                ],
                key: events
            )
            let notices = noticesStream ?? environment["REDIS_NOTICES_STREAM"] ?? defaults.noticesStream
            _ = try connection.command(["XADD", notices, "MAXLEN", "~", "10000", "*", "imei", imei], key: notices)
            print(commandID)
            guard wait else { return }
            let waitMs = waitTimeout.map { Int(Duration.parse($0)!.milliseconds) } ?? ttlMs + 120_000
            let key = keys.command(imei, id: commandID)
            let until = now + waitMs
            while Self.nowMs() < until {
                let fields = try connection.command(
                    ["HMGET", key, "status", "latency_ms", "response", "response_hex", "expires_at_ms"],
                    key: key
                )
                guard case .array(let values) = fields, values.count == 5 else { break }
                func string(_ i: Int) -> String { if case .string(let s) = values[i] { s } else { "" } }
                let status = string(0)
                if CommandKeys.finalStatuses.contains(status) {
                    let response = string(2).isEmpty ? string(3) : string(2)
                    print("\(status) \(string(1).isEmpty ? "-" : string(1)) ms: \(response)")
                    if status != "answered" { terminate(.failure) }
                    return
                }
                if status == "queued", let expires = Int(string(4)), expires > 0, expires <= Self.nowMs() {
                    // The device never came for it: it ends `expired` here (the server would, at the next take).
                    let expired = try connection.command(
                        [
                            "EVAL", CommandKeys.expireScript, "2", keys.queue(imei), key, commandID, String(Self.nowMs()), "86400000",
                        ],
                        key: key
                    )
                    if expired == .integer(1) {
                        _ = try connection.command(
                            [
                                "XADD", events, "MAXLEN", "~", "100000", "*", "cmd_id", commandID, "imei", imei, "status", "expired",
                                "attempt",
                                "0",
                                "instance", "producer", "latency_ms", "", "response", "",
                            ],
                            key: events
                        )
                    }
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            StandardIO.writeStderr("teltonika-ingest command: no outcome within the wait timeout (still \(commandID))\n")
            terminate(.failure)
        }

        static func nowMs() -> Int { Int(Date().timeIntervalSince1970 * 1000) }
    }
}

extension Duration {
    /// `500ms`, `30s`, `10m`, `2h` (a whole number and a unit).
    static func parse(_ text: String) -> Duration? {
        for (suffix, scale) in [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)] where text.hasSuffix(suffix) {
            guard let n = Int(text.dropLast(suffix.count)), n >= 0 else { return nil }
            return .milliseconds(n * scale)
        }
        return nil
    }

    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
