import Codec8
import FixtureSupport
import Foundation
import Ingest
import NIOConcurrencyHelpers
import RedisWire
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 15 against the real binary and a real Redis: commands queued with `teltonika-ingest command
/// send`, delivered one at a time to devices over TCP, answered and correlated, with every outcome on
/// the command and on the command-events stream.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct CommandTests {
    /// One test's command keys and events stream, apart from every other test's.
    struct Commands {
        let prefix = "test-cmd:\(UUID().uuidString)"
        var events: String { prefix + ":events" }
        var notices: String { prefix + ":notices" }
        let redis: RedisClient

        init() throws { redis = try RedisClient(url: TestEnvironment.redisURL) }

        /// The server's settings for these keys (no login grace unless `loginGraceMs`).
        func environment(_ extra: [String: String] = [:], loginGraceMs: Int = 0) -> [String: String] {
            [
                "REDIS_COMMAND_PREFIX": prefix, "REDIS_COMMAND_EVENTS_STREAM": events, "REDIS_NOTICES_STREAM": notices,
                "REDIS_DEVICE_PREFIX": prefix + ":devices", "COMMAND_LOGIN_GRACE_MS": String(loginGraceMs),
            ].merging(extra) { $1 }
        }

        /// `command send` with these keys; returns its process (stdout piped) once started.
        func start(_ imei: String, _ text: String, _ flags: [String] = []) throws -> (Process, Pipe) {
            let process = Process()
            let out = Pipe()
            process.executableURL = URL(fileURLWithPath: TestEnvironment.binary)
            process.arguments =
                ["command", "send", imei, text, "--redis-url", TestEnvironment.redisURL, "--prefix", prefix, "--events-stream", events]
                + ["--notices-stream", notices] + flags
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            try process.run()
            return (process, out)
        }

        /// `command send`, waited for; returns the command id it printed.
        func send(_ imei: String, _ text: String, _ flags: [String] = []) throws -> String {
            let (process, out) = try start(imei, text, flags)
            process.waitUntilExit()
            let printed = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            guard process.terminationStatus == 0, let id = printed.split(separator: "\n").first else {
                throw TestFailure("command send exited \(process.terminationStatus): \(printed)")
            }
            return String(id)
        }

        /// The events of command `id`, oldest first.
        func events(of id: String) throws -> [[String: String]] { try redis.entries(events).filter { $0["cmd_id"] == id } }

        /// The statuses of command `id`'s events.
        func statuses(of id: String) throws -> [String] { try events(of: id).map { $0["status"] ?? "" } }

        /// Waits until command `id` has an event with `status`; returns it.
        @discardableResult
        func waitForEvent(_ id: String, _ status: String, timeout: Double = 10) throws -> [String: String] {
            var found: [String: String]? = nil
            try waitFor(timeout: timeout, "\(id) \(status)") {
                found = try events(of: id).first { $0["status"] == status }
                return found != nil
            }
            return found!
        }

        /// A field of command `id`'s hash.
        func field(_ imei: String, _ id: String, _ name: String) throws -> String? {
            if case .string(let value) = try redis.command(["HGET", "\(prefix):{\(imei)}:cmd:\(id)", name]) { return value }
            return nil
        }
    }

    static let imei = "356307042441013"

    /// Reads one Codec 12/14 frame; nil when none came within `timeout`.
    static func readFrame(_ device: DeviceClient, timeout: Double = 10) -> [UInt8]? {
        guard case .bytes(let head) = device.receive(8, timeout: timeout) else { return nil }
        let length = Int(UInt32(head[4]) << 24 | UInt32(head[5]) << 16 | UInt32(head[6]) << 8 | UInt32(head[7]))
        guard case .bytes(let rest) = device.receive(length + 4, timeout: timeout) else { return nil }
        return head + rest
    }

    static func response(_ text: String) -> [UInt8] {
        DeviceMessage(codec: .codec12, type: DeviceMessage.typeResponse, payload: Array(text.utf8)).encoded()
    }

    /// Queued while the device is offline, delivered when it logs in, answered; `command send --wait`
    /// prints the answer; the response entry carries the command id; every state is on the events stream.
    @Test func testAQueuedCommandIsDeliveredAtLoginAndItsAnswerCorrelated() throws {
        let commands = try Commands()
        let server = try ServerProcess(environment: commands.environment(["INSTANCE_ID": "inst-a"], loginGraceMs: 200))
        let (waiting, out) = try commands.start(Self.imei, "getinfo", ["--wait"])
        let device = try DeviceClient(port: server.port)
        // The command is queued (its id printed) before the device logs in.
        try waitFor(timeout: 10) { (try commands.redis.entries(commands.events).first?["status"]) == "queued" }
        #expect(try device.login(Self.imei))
        #expect(Self.readFrame(device) == DeviceMessage.codec12Command("getinfo"))
        try device.send(Self.response("RTC:2026/11/30 10:00 Init:2026/11/30 9:00"))
        waiting.waitUntilExit()
        let printed = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
        #expect(waiting.terminationStatus == 0)
        #expect(printed.count == 2)
        let id = String(printed[0])
        #expect(printed.last?.hasPrefix("answered ") == true)
        #expect(printed.last?.hasSuffix(" ms: RTC:2026/11/30 10:00 Init:2026/11/30 9:00") == true)
        try commands.waitForEvent(id, "answered")
        #expect(try commands.statuses(of: id) == ["queued", "sent", "answered"])
        let answered = try commands.events(of: id).last!
        #expect(answered["instance"] == "inst-a")
        #expect(answered["attempt"] == "1")
        #expect(answered["response"] == "RTC:2026/11/30 10:00 Init:2026/11/30 9:00")
        #expect(Int(answered["latency_ms"] ?? "") != nil)
        #expect(try commands.field(Self.imei, id, "status") == "answered")
        try waitFor(timeout: 10) { try commands.redis.xlen(server.responses) == 1 }
        #expect(try commands.redis.entries(server.responses).first?["cmd_id"] == id)
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_commands_total{outcome="answered"}"#) == 1)
        #expect(try scrape.value(#"teltonika_commands_sent_total{codec="12"}"#) == 1)
        #expect(try scrape.value("teltonika_commands_in_flight") == 0)
        #expect(try scrape.value("teltonika_command_latency_seconds_count") == 1)
        #expect(try scrape.value("teltonika_command_responses_uncorrelated_total") == 0)
    }

    /// Codec 14 carries the device's IMEI; its nACK ends the command `nack`; a response nobody asked
    /// for is counted uncorrelated.
    @Test func testACodec14CommandEndsNackOnANotAcknowledged() throws {
        let commands = try Commands()
        let server = try ServerProcess(environment: commands.environment())
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        try device.send(Self.response("nobody asked"))
        try waitFor(timeout: 10) { try server.scrape().value("teltonika_command_responses_uncorrelated_total") == 1 }
        let id = try commands.send(Self.imei, "getver", ["--codec", "14"])
        #expect(Self.readFrame(device) == DeviceMessage.codec14Command("getver", imei: IMEI(Self.imei)!))
        try device.send(DeviceMessage(codec: .codec14, type: DeviceMessage.typeNotAcknowledged, imei: Self.imei, payload: []).encoded())
        try commands.waitForEvent(id, "nack")
        #expect(try commands.statuses(of: id) == ["queued", "sent", "nack"])
        #expect(try server.scrape().value(#"teltonika_commands_total{outcome="nack"}"#) == 1)
        #expect(try server.scrape().value(#"teltonika_commands_sent_total{codec="14"}"#) == 1)
    }

    /// A command whose TTL passed before the device came is never sent: it ends `expired`, and the next
    /// one is the first the device gets.
    @Test func testACommandPastItsTTLIsNeverSent() throws {
        let commands = try Commands()
        let server = try ServerProcess(environment: commands.environment())
        let stale = try commands.send(Self.imei, "setdigout 1", ["--ttl", "300ms"])
        let queuedAt = Date()
        try waitFor(timeout: 5, "the TTL passed") { Date().timeIntervalSince(queuedAt) > 0.4 }
        let fresh = try commands.send(Self.imei, "getver")
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        #expect(Self.readFrame(device) == DeviceMessage.codec12Command("getver"))
        #expect(try commands.statuses(of: stale) == ["queued", "expired"])
        #expect(try commands.field(Self.imei, stale, "status") == "expired")
        try device.send(Self.response("ver"))
        try commands.waitForEvent(fresh, "answered")
        #expect(try server.scrape().value(#"teltonika_commands_total{outcome="expired"}"#) == 1)
    }

    /// A command stored in a form the server cannot send (a producer wrote codec 13 with the recipe): it ends
    /// `rejected`, is never written, and the next command is.
    @Test func testACommandNotSendableAsStoredIsRejected() throws {
        let commands = try Commands()
        let server = try ServerProcess(environment: commands.environment())
        let keys = CommandKeys(prefix: commands.prefix)
        _ = try commands.redis.command([
            "EVAL", CommandKeys.enqueueScript, "2", keys.queue(Self.imei), keys.command(Self.imei, id: "bad-1"), "bad-1", Self.imei, "13",
            "676574696e666f", "getinfo", "0", "0", "0", "100", "86400000",
        ])
        let good = try commands.send(Self.imei, "getver")
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        #expect(Self.readFrame(device) == DeviceMessage.codec12Command("getver"))
        #expect(try commands.statuses(of: "bad-1") == ["rejected"])
        #expect(try commands.field(Self.imei, "bad-1", "status") == "rejected")
        _ = try server.waitForLog(event: "command.rejected", timeout: 5)
        #expect(try server.scrape().value(#"teltonika_commands_total{outcome="rejected"}"#) == 1)
        try device.send(Self.response("ver"))
        try commands.waitForEvent(good, "answered")
    }

    /// No answer within COMMAND_TIMEOUT_MS: `timeout`, never sent again; after the grace window the next
    /// command goes out.
    @Test func testATimedOutCommandIsNotSentAgain() throws {
        let commands = try Commands()
        let server = try ServerProcess(environment: commands.environment(["COMMAND_TIMEOUT_MS": "300", "COMMAND_LATE_GRACE_MS": "200"]))
        let first = try commands.send(Self.imei, "cpureset")
        let second = try commands.send(Self.imei, "getgps")
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        #expect(Self.readFrame(device) == DeviceMessage.codec12Command("cpureset"))
        // Not answered: the next frame is the second command, not the first again.
        #expect(Self.readFrame(device) == DeviceMessage.codec12Command("getgps"))
        #expect(try commands.statuses(of: first) == ["queued", "sent", "timeout"])
        try device.send(Self.response("gps"))
        try commands.waitForEvent(second, "answered")
        #expect(try server.scrape().value(#"teltonika_commands_total{outcome="timeout"}"#) == 1)
        #expect(server.logCount(event: "command.timeout") == 1)
    }

    /// An answer after the timeout but inside the grace window is attributed (`late`), and nothing else
    /// was sent meanwhile.
    @Test func testAnAnswerAfterTheTimeoutIsLate() throws {
        let commands = try Commands()
        let server = try ServerProcess(environment: commands.environment(["COMMAND_TIMEOUT_MS": "200", "COMMAND_LATE_GRACE_MS": "60000"]))
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        let id = try commands.send(Self.imei, "getinfo")
        let next = try commands.send(Self.imei, "getver")
        #expect(Self.readFrame(device) == DeviceMessage.codec12Command("getinfo"))
        try commands.waitForEvent(id, "timeout")
        try device.send(Self.response("late info"))
        let late = try commands.waitForEvent(id, "late")
        #expect(late["response"] == "late info")
        #expect(try commands.field(Self.imei, id, "status") == "late")
        // Only then the next command.
        #expect(Self.readFrame(device) == DeviceMessage.codec12Command("getver"))
        try commands.waitForEvent(next, "sent")
        #expect(try commands.statuses(of: next) == ["queued", "sent"])
        #expect(try server.scrape().value(#"teltonika_commands_total{outcome="late"}"#) == 1)
    }

    /// Five queued commands arrive in order, each only after the previous one was answered.
    @Test func testFiveCommandsArriveInOrderOneAtATime() throws {
        let commands = try Commands()
        let server = try ServerProcess(environment: commands.environment())
        let ids = try (1...5).map { try commands.send(Self.imei, "setparam 1000\($0):\($0)") }
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        for i in 1...5 {
            #expect(Self.readFrame(device) == DeviceMessage.codec12Command("setparam 1000\(i):\(i)"), "command \(i)")
            // Nothing more while this one is unanswered.
            #expect(device.receive(1, timeout: 0.3) == .timeout([]), "command \(i) is alone in flight")
            try device.send(Self.response("param \(i) ok"))
        }
        for id in ids { try commands.waitForEvent(id, "answered") }
        let sentOrder = try commands.redis.entries(commands.events).filter { $0["status"] == "sent" }.map { $0["cmd_id"] ?? "" }
        #expect(sentOrder == ids)
        #expect(try server.scrape().value(#"teltonika_commands_total{outcome="answered"}"#) == 5)
    }

    /// `kill -9` with a command written and unanswered: the next instance, once the lease has run out,
    /// ends it `unknown` (never sends it again) and delivers the next.
    @Test func testACommandInFlightWhenTheServerDiesEndsUnknown() throws {
        let commands = try Commands()
        let settings = commands.environment(["COMMAND_TIMEOUT_MS": "1000", "COMMAND_LATE_GRACE_MS": "0"])
        let first = try ServerProcess(environment: settings)
        let id = try commands.send(Self.imei, "setdigout 1")
        let next = try commands.send(Self.imei, "getio")
        var device = try DeviceClient(port: first.port)
        #expect(try device.login(Self.imei))
        #expect(Self.readFrame(device) == DeviceMessage.codec12Command("setdigout 1"))
        try commands.waitForEvent(id, "sent")
        first.signal(SIGKILL)
        _ = first.waitForExit(timeout: 10)
        let second = try ServerProcess(environment: settings)
        device = try DeviceClient(port: second.port)
        #expect(try device.login(Self.imei))
        // The lease (timeout + grace + 2 s) runs out; then the next command, never the first again.
        #expect(Self.readFrame(device, timeout: 15) == DeviceMessage.codec12Command("getio"))
        #expect(try commands.statuses(of: id) == ["queued", "sent", "unknown"])
        #expect(try commands.field(Self.imei, id, "status") == "unknown")
        try device.send(Self.response("io"))
        try commands.waitForEvent(next, "answered")
        #expect(try second.scrape().value(#"teltonika_commands_total{outcome="unknown"}"#) == 1)
    }

    /// The connection lost after the write: `unknown` at once (the lease is released).
    @Test func testAConnectionLostWithACommandUnansweredEndsUnknown() throws {
        let commands = try Commands()
        let server = try ServerProcess(environment: commands.environment())
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        let id = try commands.send(Self.imei, "getinfo")
        #expect(Self.readFrame(device) != nil)
        device.reset()
        try commands.waitForEvent(id, "unknown")
        _ = try server.waitForLog(event: "command.unknown", timeout: 5)
        #expect(try commands.redis.command(["EXISTS", "\(commands.prefix):{\(Self.imei)}:lease"]) == .integer(0))
    }

    /// A device that moves from instance A to instance B gets its command from B.
    @Test func testACommandFollowsTheDeviceToAnotherInstance() throws {
        let commands = try Commands()
        let a = try ServerProcess(environment: commands.environment(["INSTANCE_ID": "inst-a"]))
        let b = try ServerProcess(environment: commands.environment(["INSTANCE_ID": "inst-b"]))
        var device = try DeviceClient(port: a.port)
        #expect(try device.login(Self.imei))
        device.reset()
        try waitFor(timeout: 10) { try a.scrape().value("teltonika_devices_online") == 0 }
        device = try DeviceClient(port: b.port)
        #expect(try device.login(Self.imei))
        let id = try commands.send(Self.imei, "getinfo")
        #expect(Self.readFrame(device) == DeviceMessage.codec12Command("getinfo"))
        try device.send(Self.response("from b"))
        let answered = try commands.waitForEvent(id, "answered")
        #expect(answered["instance"] == "inst-b")
        #expect(try a.scrape().value(#"teltonika_commands_sent_total{codec="12"}"#) == 0)
    }

    /// A command queued while half a packet is buffered waits: the packet completes, its ACK goes out,
    /// then the command. It never comes between a packet and its ACK.
    @Test func testACommandWaitsForTheBufferedPacketAndItsACK() throws {
        let commands = try Commands()
        let server = try ServerProcess(environment: commands.environment())
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        let packet = try LifecycleTests.packet(records: 2, at: 1_700_000_000_000)
        try device.send(Array(packet[..<20]))
        let id = try commands.send(Self.imei, "getinfo")
        // Taken (its lease held), not written: the session has bytes of a frame buffered.
        try waitFor(timeout: 10) { try commands.field(Self.imei, id, "status") == "sending" }
        #expect(device.receive(1, timeout: 0.3) == .timeout([]), "nothing written while a frame is half read")
        try device.send(Array(packet[20...]))
        #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 2)), "the ACK first")
        #expect(Self.readFrame(device) == DeviceMessage.codec12Command("getinfo"))
        try commands.waitForEvent(id, "sent")
        #expect(try commands.statuses(of: id) == ["queued", "sent"])
    }

    /// Commands interleaved with steady AVL traffic from 20 simulated devices: every command answered,
    /// none overlapping another, no protocol error, no ACKed record missing.
    @Test func testCommandsInterleavedWithSteadyTrafficNeverDisturbAnACK() throws {
        let commands = try Commands()
        let server = try ServerProcess(environment: commands.environment(loginGraceMs: 100))
        let base: UInt64 = 351_000_000_000_000
        // Queued first: each device gets its two right after login, while its packets flow (8 s leaves room on a
        // loaded machine).
        var ids: [String] = []
        for device in 0..<10 {
            for k in 1...2 { ids.append(try commands.send(String(base + UInt64(device)), "getio \(k)", ["--ttl", "1m"])) }
        }
        let simulator = Process()
        let out = Pipe()
        simulator.executableURL = URL(fileURLWithPath: TestEnvironment.binary)
        simulator.arguments = [
            "simulate", "--devices", "20", "--duration", "8", "--port", String(server.port), "--rate", "20", "--records-per-packet", "2",
            "--imei-base", String(base), "--seed", "7", "--verify", "--redis-url", TestEnvironment.redisURL, "--stream", server.stream,
            "--json",
        ]
        simulator.standardOutput = out
        simulator.standardError = FileHandle.nullDevice
        try simulator.run()
        simulator.waitUntilExit()
        let report = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(simulator.terminationStatus == 0, "\(report)")
        let summary = try JSONSerialization.jsonObject(with: Data(report.utf8)) as? [String: Any] ?? [:]
        if summary["commands_received"] as? Int != 20 {
            // What the server did with commands, to tell a slow machine from a lost opportunity.
            for line in server.stderrLines where line.contains("command") || line.contains("side_failed") { print(line) }
        }
        #expect(summary["commands_received"] as? Int == 20, "\(report)")
        #expect(summary["commands_answered"] as? Int == 20)
        #expect(summary["commands_overlapping"] as? Int == 0)
        #expect(summary["protocol_errors"] as? Int == 0)
        #expect(summary["wrong_acks"] as? Int == 0)
        #expect((summary["verify"] as? [String: Any])?["missing"] as? Int == 0)
        for id in ids { try commands.waitForEvent(id, "answered") }
        #expect(try server.scrape().value(#"teltonika_commands_total{outcome="answered"}"#) == 20)
    }
}
