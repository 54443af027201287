import Codec8
import FixtureSupport
import Foundation
import RedisWire
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The device registry (issue 12) against two real server instances and a real Redis: a device that
/// logs in on instance B closes its older connection on instance A; `teltonika-ingest device` shows
/// where it is and when it was last seen.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct DeviceRegistryTests {
    static let imei = "356307042441013"

    /// Settings of one test's registry, apart from every other test's.
    static func registry(_ extra: [String: String] = [:]) -> [String: String] {
        let prefix = "test-dev:\(UUID().uuidString)"
        return ["REDIS_DEVICE_PREFIX": prefix, "REDIS_NOTICES_STREAM": prefix + ":notices"].merging(extra) { $1 }
    }

    /// `teltonika-ingest device IMEI --json` with the server's registry settings: its exit status and fields.
    static func device(_ imei: String, _ environment: [String: String]) throws -> (Int32, [String: String]) {
        let run = try runBinary(["device", imei, "--json", "--redis-url", TestEnvironment.redisURL], environment: environment)
        let fields = (try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8))) as? [String: String] ?? [:]
        return (run.status, fields)
    }

    @Test func testALoginOnAnotherInstanceClosesTheOlderConnection() throws {
        let settings = Self.registry()
        let a = try ServerProcess(environment: settings.merging(["INSTANCE_ID": "inst-a"]) { $1 })
        let b = try ServerProcess(environment: settings.merging(["INSTANCE_ID": "inst-b"]) { $1 })
        let old = try DeviceClient(port: a.port)
        #expect(try old.login(Self.imei))
        try waitFor(timeout: 10) { try Self.device(Self.imei, settings).1["instance"] == "inst-a" }
        let moved = try DeviceClient(port: b.port, source: "127.0.0.2")
        #expect(try moved.login(Self.imei))
        #expect(old.receive(1, timeout: 10) == .closed([]), "instance A closed the older connection")
        try waitFor(timeout: 10) { try a.scrape().value(#"teltonika_disconnects_total{reason="replaced"}"#) == 1 }
        #expect(try a.scrape().value("teltonika_connections_replaced_total") == 1)
        #expect(try b.scrape().value("teltonika_connections_replaced_total") == 0)
        _ = try a.waitForLog(event: "device.replaced_elsewhere", timeout: 5)
        // The device goes on over B.
        try moved.send(try LifecycleTests.packet(records: 2, at: 1_700_000_000_000))
        #expect(moved.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 2)))
        let (status, fields) = try Self.device(Self.imei, settings)
        #expect(status == 0)
        #expect(fields["instance"] == "inst-b")
        #expect(fields["online"] == "yes")
        #expect(fields["peer"]?.hasPrefix("127.0.0.2:") == true)
    }

    /// Two instances' registry writes can land in either order: a login written after a newer one of the
    /// same device (here, a session that logged in a minute from now on an instance that is not running)
    /// leaves the newer one in the registry, and its notice names the newer one, so the older connection,
    /// the one just made here, is the one closed. Written in arrival order, it took the newer session's
    /// place and its notice closed the newer connection.
    @Test func testALoginWrittenAfterANewerOneClosesItselfNotTheNewer() throws {
        let settings = Self.registry()
        let server = try ServerProcess(environment: settings)
        let redis = try RedisClient(url: TestEnvironment.redisURL)
        let key = "\(settings["REDIS_DEVICE_PREFIX"]!):{\(Self.imei)}"
        let later = String(UInt64(Date().timeIntervalSince1970 * 1000) + 60_000)
        _ = try redis.command(["HSET", key, "session", "inst-z/1#1", "instance", "inst-z", "online", "1", "connected_since_ms", later])
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        #expect(device.receive(1, timeout: 10) == .closed([]), "the older login's connection is closed")
        let closed = try server.waitForLog(event: "device.replaced_elsewhere", timeout: 5)
        #expect(closed["session"] as? String == "inst-z/1#1")
        #expect(try redis.command(["HGET", key, "session"]) == .string("inst-z/1#1"), "the newer session stays")
        #expect(try redis.command(["HGET", key, "connected_since_ms"]) == .string(later))
    }

    /// A notice closes a connection only when the registry names another session than the connection's: a
    /// notice about an older login (it was read after a newer one) changes nothing; one whose session is
    /// the registry's current one (a newer login elsewhere) closes it.
    @Test func testANoticeClosesAConnectionOnlyWhenTheRegistryNamesAnotherSession() throws {
        let settings = Self.registry()
        let server = try ServerProcess(environment: settings)
        let redis = try RedisClient(url: TestEnvironment.redisURL)
        let key = "\(settings["REDIS_DEVICE_PREFIX"]!):{\(Self.imei)}"
        let notices = settings["REDIS_NOTICES_STREAM"]!
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        try waitFor(timeout: 10) { try redis.command(["HGET", key, "session"]) != .null }
        // A notice of an older login: read, checked against the registry, nothing closed.
        _ = try redis.command(["XADD", notices, "*", "imei", Self.imei, "session", "gone/1#1"])
        try waitFor(timeout: 10) { try server.scrape().value("teltonika_notices_total") == 1 }
        // A newer login elsewhere: the registry names it, and its notice closes this connection.
        _ = try redis.command(["HSET", key, "session", "other/2#1"])
        _ = try redis.command(["XADD", notices, "*", "imei", Self.imei, "session", "other/2#1"])
        #expect(device.receive(1, timeout: 10) == .closed([]))
        let closed = try server.waitForLog(event: "device.replaced_elsewhere", timeout: 5)
        #expect(closed["session"] as? String == "other/2#1", "closed by the newer login's notice, not the older one's")
        #expect(server.logCount(event: "device.replaced_elsewhere") == 1)
    }

    @Test func testTheRegistryShowsLastSeenLastRecordAndTheLogout() throws {
        let settings = Self.registry(["DEVICE_SEEN_INTERVAL_MS": "1000"])
        let server = try ServerProcess(environment: settings)
        #expect(try Self.device(Self.imei, settings).0 == 1, "unknown before its first login")
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(Self.imei))
        // Packets until one is ACKed after the interval: its time is written as the last record.
        var t: UInt64 = 1_700_000_000_000
        try waitFor(timeout: 15, "last_record written") {
            try device.send(try LifecycleTests.packet(records: 1, at: t))
            t += 1000
            guard device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 1)) else { throw TestFailure("no ACK") }
            return try Self.device(Self.imei, settings).1["last_record", default: ""].isEmpty == false
        }
        #expect(try Self.device(Self.imei, settings).1["online"] == "yes")
        device.reset()
        try waitFor(timeout: 10) { try Self.device(Self.imei, settings).1["online"] == "no" }
        let (status, fields) = try Self.device(Self.imei, settings)
        #expect(status == 0)
        #expect(fields["disconnected_at", default: ""].isEmpty == false)
        #expect(fields["last_record", default: ""].isEmpty == false)
    }
}
