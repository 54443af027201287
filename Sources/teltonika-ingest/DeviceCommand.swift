/// The `device` subcommand: what the registry knows of one device, for on-call.
import ArgumentParser
import Codec8
import Foundation
import Ingest
import Lifecycle
import RedisWire

/// `teltonika-ingest device IMEI`: the registry entry and the command queue of one device.
struct DeviceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "device",
        abstract: "Show what the device registry knows of a device: online, instance, peer, last seen, last record, commands queued.",
        discussion: """
            Reads REDIS_URL, REDIS_DEVICE_PREFIX, REDIS_COMMAND_PREFIX and DEVICE_SEEN_INTERVAL_MS like the \
            server. `online` is `yes` while the session's instance keeps writing (last seen within 3 intervals), \
            `stale` when it stopped (the instance died: the device reconnects elsewhere), `no` after a logout. \
            Exit 0 when the device is known, 1 when it is not (never logged in, or gone for 7 days).
            """
    )

    @Argument(help: "The device's IMEI (15 digits).")
    var imei: String

    @Option(help: ArgumentHelp(ToolRedis.help))
    var redisURL: String?

    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        guard IMEI(imei) != nil else { throw ValidationError("IMEI must be 15 digits, got '\(imei)'") }
    }

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let defaults = IngestConfiguration()
        let devices = DeviceKeys(prefix: environment["REDIS_DEVICE_PREFIX"] ?? defaults.devicePrefix)
        let commands = CommandKeys(prefix: environment["REDIS_COMMAND_PREFIX"] ?? defaults.commandPrefix)
        let intervalMs = environment["DEVICE_SEEN_INTERVAL_MS"].flatMap { Int($0) } ?? defaults.deviceSeenIntervalMs
        let connection = ToolRedis.connect(option: redisURL, tool: "device")
        var fields: [String: String] = [:]
        if case .array(let values) = try connection.command(["HGETALL", devices.device(imei)], key: devices.device(imei)) {
            var i = 0
            while i + 1 < values.count {
                if case .string(let k) = values[i], case .string(let v) = values[i + 1] { fields[k] = v }
                i += 2
            }
        }
        var queued = 0
        if case .integer(let n) = try connection.command(["LLEN", commands.queue(imei)], key: commands.queue(imei)) { queued = Int(n) }
        let now = Int(Date().timeIntervalSince1970 * 1000)
        let lastSeen = fields["last_seen_ms"].flatMap { Int($0) }
        let online: String
        switch fields["online"] {
        case "1": online = (lastSeen.map { now - $0 <= 3 * intervalMs } ?? false) ? "yes" : "stale"
        case "0": online = "no"
        default: online = "unknown"
        }
        func time(_ key: String) -> String {
            guard let ms = fields[key].flatMap({ Int($0) }) else { return "" }
            let iso = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
            return "\(iso) (\((now - ms) / 1000) s ago)"
        }
        let rows: [(String, String)] = [
            ("imei", imei), ("online", online), ("instance", fields["instance"] ?? ""), ("peer", fields["peer"] ?? ""),
            ("connected_since", time("connected_since_ms")), ("last_seen", time("last_seen_ms")), ("last_record", time("last_record_ms")),
            ("disconnected_at", time("disconnected_at_ms")), ("commands_queued", String(queued)),
        ]
        if json {
            let object = Dictionary(uniqueKeysWithValues: rows.map { ($0.0, $0.1) })
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            for (name, value) in rows where !value.isEmpty { print("\(name): \(value)") }
        }
        if fields.isEmpty { terminate(.failure) }
    }
}
