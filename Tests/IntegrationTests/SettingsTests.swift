import Codec8
import FixtureSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Settings reach the running server: each one's effect, and the precedence flag > environment >
/// settings file > default, with the real binary.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct SettingsTests {
    /// A settings file, the environment and `--flag=value` together: the flag beats the environment and
    /// the file, the environment beats the file, and what only the file sets applies.
    @Test func testPrecedenceAndEffectOfFileEnvironmentAndFlags() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("ingest-\(UUID().uuidString).env")
        defer { try? FileManager.default.removeItem(at: file) }
        try """
        INSTANCE_ID=from-file
        REDIS_STREAM_MAXLEN=1000000
        MAX_CONNECTIONS=2

        """.write(to: file, atomically: true, encoding: .utf8)
        let server = try ServerProcess(
            environment: ["CONFIG_FILE": file.path, "INSTANCE_ID": "from-env", "REDIS_STREAM_MAXLEN": "50"],
            arguments: ["--instance-id=from-flag"]
        )
        let listening = try server.waitForLog(event: "server.listening", timeout: 1)
        #expect(listening["instance_id"] as? String == "from-flag", "the flag beats the environment and the file")

        // REDIS_STREAM_MAXLEN from the environment (50, not the file's 1,000,000): 1,000 records are trimmed.
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(DeviceServerTests.imei))
        for p in 0..<10 {
            try device.send(try LifecycleTests.packet(records: 100, at: 1_700_000_000_000 + UInt64(p * 100)))
            #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 100)))
        }
        let length = try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream)
        #expect(length >= 50 && length <= 200, "XLEN \(length) with MAXLEN ~ 50 (whole nodes of 100 are trimmed)")

        // MAX_CONNECTIONS only in the file: a third connection is refused; closing one frees its slot.
        var second: DeviceClient? = try DeviceClient(port: server.port)
        #expect(try second!.login("356307042441014"))
        let third = try DeviceClient(port: server.port)
        #expect(third.receive(1, timeout: 5) == .closed([]), "over MAX_CONNECTIONS=2")
        second = nil
        try waitFor(timeout: 5, "the slot is freed") { try server.scrape().value("teltonika_connections_active") == 1 }
        let fourth = try DeviceClient(port: server.port)
        #expect(try fourth.login("356307042441015"), "a closed connection's slot is free again")
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_connections_total{result="refused"}"#) == 1)
        #expect(try scrape.value(#"teltonika_connections_total{result="accepted"}"#) == 3)
    }

    /// TELTONIKA_HOST and METRICS_HOST bind where they say: another loopback address answers, 127.0.0.1
    /// does not.
    @Test func testListenersBindTheConfiguredAddresses() throws {
        let server = try ServerProcess(environment: ["TELTONIKA_HOST": "127.0.0.2", "METRICS_HOST": "127.0.0.3"])
        #expect(throws: LoopbackConnectError.self) { try DeviceClient(port: server.port) }
        let device = try DeviceClient(port: server.port, host: "127.0.0.2")
        #expect(try device.login(DeviceServerTests.imei))
        #expect(throws: LoopbackConnectError.self) { try connectLoopback(port: server.metricsPort) }
        let fd = try connectLoopback(port: server.metricsPort, host: "127.0.0.3")
        close(fd)
    }

    /// EVENT_LOOP_THREADS: the device connections are served by that many event-loop threads (NIO names
    /// them `NIO-ELT-<group>-#<n>`; the metrics port's group has one), it is logged, and devices get their
    /// ACKs. 5 is not this machine's core count, the default.
    @Test func testEventLoopThreads() throws {
        let server = try ServerProcess(environment: ["EVENT_LOOP_THREADS": "5"])
        #expect(try server.waitForLog(event: "server.starting", timeout: 1)["event_loops"] as? Int == 5)
        let task = "/proc/\(server.process.processIdentifier)/task"
        var groups: [Substring: Int] = [:]
        for thread in try FileManager.default.contentsOfDirectory(atPath: task) {
            let name = (try? String(contentsOfFile: "\(task)/\(thread)/comm", encoding: .utf8)) ?? ""
            if name.hasPrefix("NIO-ELT-"), let group = name.dropFirst("NIO-ELT-".count).split(separator: "-").first {
                groups[group, default: 0] += 1
            }
        }
        #expect(groups.values.sorted() == [1, 5], "event-loop groups \(groups)")
        var devices: [DeviceClient] = []
        for d in 0..<10 {
            let device = try DeviceClient(port: server.port)
            #expect(try device.login("35630704244\(1000 + d)"))
            try device.send(try LifecycleTests.packet(records: 3, at: 1_700_000_000_000 + UInt64(d)))
            devices.append(device)
        }
        for device in devices { #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 3))) }
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == 30)
    }

    /// LOG_FORMAT=text: lines for people (no JSON), with the event and the instance.
    @Test func testTextLogs() throws {
        let port = TestEnvironment.freePort()
        let server = try ServerProcess(
            environment: ["LOG_FORMAT": "text", "TELTONIKA_PORT": "\(port)", "INSTANCE_ID": "text-1"],
            waitUntilListening: false
        )
        try waitFor(timeout: 10, "the listening line") { server.stderrLines.contains { $0.contains("listening for devices") } }
        let line = try #require(server.stderrLines.first { $0.contains("listening for devices") })
        #expect(!line.hasPrefix("{"), "not JSON: \(line)")
        #expect(line.contains("server.listening") && line.contains("text-1"), "\(line)")
        let device = try DeviceClient(port: port)
        #expect(try device.login(DeviceServerTests.imei))
    }
}
