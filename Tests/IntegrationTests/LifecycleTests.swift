import Codec8
import FixtureSupport
import Foundation
import NIOConcurrencyHelpers
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Process life of the real binary: the graceful drain under load, the bounded drain with a hung
/// Redis, the second signal, SIGHUP, and crashes.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct LifecycleTests {
    static let twoRecords = TestEnvironment.fixtures.first { $0.id == "w-c8-3" }!.bytes

    /// Devices send packets in rounds while SIGTERM arrives: the server exits 0, and every record any
    /// device got an ACK for is in the stream (the ACK log checked against Redis).
    @Test func testSigtermDuringTrafficExitsZeroAndLosesNoACKedRecord() throws {
        let devices = 200
        let recordsPerPacket = 4
        let server = try ServerProcess()
        var clients: [DeviceClient?] = []
        for d in 0..<devices {
            let client = try DeviceClient(port: server.port)
            try client.send(IMEI(FleetTests.imei(d))!.loginFrame)
            clients.append(client)
        }
        for (d, client) in clients.enumerated() { #expect(client!.receive(1, timeout: 10) == .bytes([1]), "device \(d) login") }
        let pid = server.process.processIdentifier
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.7) { _ = kill(pid, SIGTERM) }

        var acked: Set<String> = []  // "imei:timestamp" of every record whose packet was ACKed
        var unacked = 0
        var round = 0
        while clients.contains(where: { $0 != nil }) && round < 2000 {
            var sent: [Int: [UInt64]] = [:]
            for d in 0..<devices {
                guard let client = clients[d] else { continue }
                let stamps = (0..<recordsPerPacket).map { 1_700_000_000_000 + UInt64(round * recordsPerPacket + $0) }
                let records = stamps.map { AVLRecord(timestampMs: $0, priority: 1, ioElements: [IOElement(id: 239, value: .u8(1))]) }
                do {
                    try client.send(try AVLPacketEncoder.encode(records, codec: .codec8))
                    sent[d] = stamps
                } catch {
                    clients[d] = nil
                }
            }
            for (d, stamps) in sent {
                switch clients[d]!.receive(4, timeout: 15) {
                case .bytes(let ack):
                    #expect(ack == AVLAck.bytes(count: UInt32(recordsPerPacket)), "device \(d) round \(round)")
                    for ts in stamps { acked.insert("\(FleetTests.imei(d)):\(ts)") }
                case .closed, .timeout:
                    unacked += 1
                    clients[d] = nil
                }
            }
            round += 1
        }
        let exit = try #require(server.waitForExit(timeout: 40), "server still running after the drain")
        #expect(exit.status == 0 && !exit.bySignal, "exit \(exit)")
        #expect(server.logCount(event: "server.draining") == 1)
        #expect(server.logCount(event: "server.stopped") == 1)
        #expect(acked.count > devices * recordsPerPacket, "too little traffic before the signal to prove anything")

        let stored = Set(
            try RedisClient(url: TestEnvironment.redisURL).entries(server.stream).map { entry -> String in
                let payload = try JSONSerialization.jsonObject(with: Data(entry["payload"]!.utf8)) as! [String: Any]
                return "\(entry["device_id"]!):\((payload["timestamp_ms"] as! NSNumber).intValue)"
            }
        )
        let missing = acked.subtracting(stored)
        #expect(missing.isEmpty, "\(missing.count) ACKed records missing from Redis, e.g. \(missing.prefix(5))")
        print("drain under load: \(round) rounds, \(acked.count) records ACKed, \(unacked) packets cut unACKed, all ACKed stored")
    }

    /// Two packets in one write while Redis is paused: the production framing path takes the first (its
    /// records alone are queued: the second waits in the socket buffer, one packet in flight), and once
    /// Redis resumes both are ACKed in order.
    @Test func testPipelinedPacketsAreTakenOneAtATimeAndACKedInOrder() throws {
        let (redis, server, device) = try Self.twoPipelinedPacketsWithRedisPaused()
        defer { redis.resume() }
        #expect(try server.scrape().value("teltonika_records_total{codec=\"8\"}") == 2, "the second packet is not decoded yet")
        redis.resume()
        #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 2)))
        #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 3)))
        #expect(try RedisClient(url: redis.url).xlen(server.stream) == 5)
    }

    /// SIGTERM with a packet in flight (Redis paused) and a second pipelined behind it: the drain ACKs the
    /// first once Redis answers, never reads the second, closes, and exits 0 with nothing in flight.
    @Test func testTheDrainACKsThePacketInFlightAndNothingAfterIt() throws {
        let (redis, server, device) = try Self.twoPipelinedPacketsWithRedisPaused()
        defer { redis.resume() }
        kill(server.process.processIdentifier, SIGTERM)
        let draining = try server.waitForLog(event: "server.draining", timeout: 5)
        #expect(draining["packets_in_flight"] as? Int == 1)
        // The session has been told (before that, an ACK could let it read the second packet: no loss, but
        // not what this test pins).
        let told = try server.waitForLog(event: "device.draining", timeout: 5)
        #expect(told["in_flight"] as? Bool == true)
        redis.resume()
        #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 2)), "the packet in flight is ACKed")
        #expect(device.receive(4, timeout: 10) == .closed([]), "then the connection closes: the second packet is never ACKed")
        let exit = try #require(server.waitForExit(timeout: 20))
        #expect(exit.status == 0 && !exit.bySignal, "exit \(exit)")
        let stopped = try server.waitForLog(event: "server.stopped", timeout: 1)
        #expect(stopped["packets_in_flight"] as? Int == 0)
        #expect(stopped["abandoned_records"] as? Int == 0)
        #expect(stopped["connections_cut"] as? Int == 0)
        #expect(try RedisClient(url: redis.url).xlen(server.stream) == 2, "only the first packet's records")
    }

    /// A logged-in device that sent two packets (2 and 3 records) in one write while Redis is paused,
    /// returned once the first is queued. Redis stays paused.
    static func twoPipelinedPacketsWithRedisPaused() throws -> (OwnRedis, ServerProcess, DeviceClient) {
        let redis = try OwnRedis()
        let server = try ServerProcess(redisURL: redis.url)
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(DeviceServerTests.imei))
        redis.pause()
        try device.send(try packet(records: 2, at: 1_700_000_000_000) + packet(records: 3, at: 1_700_000_001_000))
        try waitFor(timeout: 5, "the first packet queued") { try server.scrape().value("teltonika_publish_queue_depth_records") == 2 }
        return (redis, server, device)
    }

    static func packet(records: Int, at t: UInt64) throws -> [UInt8] {
        let records = (0..<records).map { AVLRecord(timestampMs: t + UInt64($0), ioElements: [IOElement(id: 1, value: .u8(1))]) }
        return try AVLPacketEncoder.encode(records, codec: .codec8)
    }

    /// SIGKILL twice under load from 20 simulated devices, each time restarted on the same port: a crash
    /// loses nothing ACKed (ACKs only follow Redis' confirmation), the devices resend what was cut off,
    /// and the simulator's `--verify` oracle finds every ACKed record in the stream. Each incarnation has
    /// ACKed packets before it is killed (the last one too), so traffic crossed every restart.
    @Test func testKillDashNineUnderLoadLosesNoACKedRecord() throws {
        let port = TestEnvironment.freePort()
        let stream = "test:\(UUID().uuidString)"
        let environment = ["TELTONIKA_PORT": "\(port)", "REDIS_TELEMETRY_STREAM": stream, "LOG_LEVEL": "info"]
        let first = try ServerProcess(environment: environment)
        let (firstPID, firstMetrics) = (first.process.processIdentifier, first.metricsPort)
        /// Per incarnation: whether it ACKed before it was killed (or, for the last, before the end).
        let acked = NIOLockedValueBox<[Bool]>([])
        let restartErrors = NIOLockedValueBox<[String]>([])
        let finished = NIOLockedValueBox(false)
        @Sendable func ackedSomething(metricsPort: Int) -> Bool {
            (try? waitFor(timeout: 20, "an ACK") {
                try Scrape(text: httpGet(port: metricsPort, path: "/metrics").body).value("teltonika_acks_total") > 0
            }) != nil
        }
        let chaos = Thread {
            var server: ServerProcess? = nil
            for _ in 0..<2 {
                acked.withLockedValue { $0.append(ackedSomething(metricsPort: server?.metricsPort ?? firstMetrics)) }
                kill(server?.process.processIdentifier ?? firstPID, SIGKILL)
                server = nil
                // The port is free once the killed process is gone; a start that finds it taken fails fast.
                for _ in 0..<50 {
                    do {
                        server = try ServerProcess(environment: environment)
                        break
                    } catch {
                        restartErrors.withLockedValue { $0.append("\(error)") }
                        usleep(100_000)
                    }
                }
                guard server != nil else { return }
            }
            acked.withLockedValue { $0.append(ackedSomething(metricsPort: server!.metricsPort)) }
            while !finished.withLockedValue({ $0 }) { usleep(50_000) }
        }
        chaos.start()
        defer { finished.withLockedValue { $0 = true } }
        let run = try runSimulate([
            "--devices", "20", "--duration", "6", "--port", "\(port)", "--records-per-packet", "5",
            "--verify", "--redis-url", TestEnvironment.redisURL, "--stream", stream, "--seed", "13",
        ])
        #expect(
            acked.withLockedValue { $0 } == [true, true, true],
            "each incarnation ACKed; restart errors: \(restartErrors.withLockedValue { $0 })"
        )
        #expect(first.waitForExit(timeout: 5)?.bySignal == true)
        let (ackedRecords, verify) = try run.expectEveryACKedRecordStored()
        let resends = try #require(run.line("simulate:")).int("resends")
        #expect(resends > 0, "packets cut off by the kills were sent again")
        print("kill -9 under load: 2 kills, \(ackedRecords) records ACKed, \(resends) resends; \(verify)")
    }

    /// SIGINT as the first signal (Ctrl-C under `make run`) drains like SIGTERM: exit 0.
    @Test func testSigintFirstDrainsAndExitsZero() throws {
        let server = try ServerProcess()
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(DeviceServerTests.imei))
        try device.send(Self.twoRecords)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        server.signal(SIGINT)
        let exit = try #require(server.waitForExit(timeout: 20))
        #expect(exit.status == 0 && !exit.bySignal, "exit \(exit)")
        let requested = try server.waitForLog(event: "process.shutdown_requested", timeout: 1)
        #expect((requested["signal"] as? String)?.contains("SIGINT") == true, "\(requested)")
        #expect(server.logCount(event: "server.draining") == 1)
        #expect(server.logCount(event: "server.stopped") == 1)
        #expect(device.receive(1, timeout: 5) == .closed([]), "the drain closed the idle connection")
        // The connection's life in the log: login, then the close.
        let login = try server.waitForLog(event: "device.login", timeout: 1)
        #expect(login["imei"] as? String == DeviceServerTests.imei)
        #expect(server.logCount(event: "device.disconnected") == 1)
        #expect(server.logCount(event: "server.starting") == 1)
    }

    /// A device port or metrics port already taken: one critical line naming the failure, exit 1.
    @Test(arguments: ["TELTONIKA_PORT", "METRICS_PORT"])
    func testAPortInUseExitsOne(_ setting: String) throws {
        let holder = try ServerProcess()
        let taken = setting == "TELTONIKA_PORT" ? holder.port : holder.metricsPort
        let second = try ServerProcess(environment: [setting: "\(taken)"], waitUntilListening: false)
        let exit = try #require(second.waitForExit(timeout: 20), "a second server on a taken port must exit")
        #expect(exit.status == 1 && !exit.bySignal, "exit \(exit)")
        let event = setting == "TELTONIKA_PORT" ? "server.listen_failed" : "metrics.listen_failed"
        let failed = try second.waitForLog(event: event, timeout: 1)
        #expect((failed["error"] as? String)?.contains("in use") == true, "\(failed)")
        #expect(failed["address"] as? String == "127.0.0.1:\(taken)", "the address is named")
        #expect(holder.process.isRunning)
    }

    /// Redis hangs (SIGSTOP) with a packet in flight: readiness turns 503 at once, the drain gives up at
    /// SHUTDOWN_TIMEOUT_MS, reports what it abandoned and exits 1; the device never gets an ACK.
    @Test func testSigtermWithRedisPausedExitsOneWithinTheTimeout() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(
            redisURL: redis.url,
            environment: ["SHUTDOWN_TIMEOUT_MS": "2000", "REDIS_TIMEOUT_MS": "20000", "PUBLISH_TIMEOUT_MS": "60000"]
        )
        defer { redis.resume() }
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        try waitFor(timeout: 10) { try server.http("/readyz").status == 200 }
        redis.pause()
        try device.send(Self.twoRecords)
        try waitForPacketInFlight(server)
        #expect(device.receive(4, timeout: 0.3) == .timeout([]))
        let signalled = Date()
        server.signal(SIGTERM)
        try waitFor(timeout: 1) { try server.http("/readyz").body.contains("draining") }
        #expect(try server.http("/readyz").status == 503)
        // The listener is closed while the drain still waits for Redis: a new device is refused.
        try waitFor(timeout: 1, "listener closed") { (try? connectLoopback(port: server.port)).map { close($0) } == nil }
        #expect(server.process.isRunning)
        let waiting = Date()
        let exit = try #require(server.waitForExit(timeout: 10))
        // Until the process was gone (its last log lines may take longer to be read on a loaded machine).
        let seconds = waiting.timeIntervalSince(signalled) + exit.seconds
        #expect(exit.status == 1 && !exit.bySignal, "exit \(exit)")
        #expect(seconds >= 1.9 && seconds < 2.0 + 2.5, "exited after \(seconds) s")
        #expect(device.receive(4, timeout: 2) == .closed([]))
        let report = try server.waitForLog(event: "server.drain_timeout", timeout: 1)
        #expect(report["packets_in_flight"] as? Int == 1)
        #expect(report["abandoned_records"] as? Int == 2)
        #expect(server.logCount(event: "server.stopped") == 0)
    }

    /// A second SIGTERM during the drain ends the process at once with exit 1.
    @Test func testSecondSignalForcesExitOne() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(
            redisURL: redis.url,
            environment: ["SHUTDOWN_TIMEOUT_MS": "60000", "REDIS_TIMEOUT_MS": "20000", "PUBLISH_TIMEOUT_MS": "60000"]
        )
        defer { redis.resume() }
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        redis.pause()
        try device.send(Self.twoRecords)
        try waitForPacketInFlight(server)
        server.signal(SIGTERM)
        try server.waitForLog(event: "server.draining", timeout: 5)
        #expect(server.process.isRunning)
        server.signal(SIGINT)
        let exit = try #require(server.waitForExit(timeout: 5), "a second signal must end the drain at once")
        #expect(exit.status == 1 && !exit.bySignal, "exit \(exit)")
        #expect(server.logCount(event: "process.forced_exit") == 1)
        #expect(device.receive(4, timeout: 2) == .closed([]))
    }

    /// SIGHUP re-reads CONFIG_FILE: the log level changes at once, connections stay, a setting that
    /// needs a restart is named, and a bad file changes nothing.
    /// Redis stalled with a packet waiting: the age of the oldest unconfirmed packet grows past a second;
    /// once Redis answers (and the packet is ACKed) it is 0 again.
    @Test func testTheOldestUnconfirmedAgeGrowsWhileRedisStallsAndResets() throws {
        let (redis, server, device) = try Self.twoPipelinedPacketsWithRedisPaused()
        defer { redis.resume() }
        try waitFor(timeout: 10, "the age passes 1 s") { try server.scrape().value("teltonika_publish_oldest_age_seconds") >= 1 }
        redis.resume()
        #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 2)))
        #expect(device.receive(4, timeout: 10) == .bytes(AVLAck.bytes(count: 3)))
        try waitFor(timeout: 10, "the age is 0 again") { try server.scrape().value("teltonika_publish_oldest_age_seconds") == 0 }
    }

    /// At LOG_LEVEL=warning the process' life still shows (start, listeners, reload, drain, stop) and no
    /// other info line does.
    @Test func testLifecycleLinesShowAtWarning() throws {
        let server = try ServerProcess(environment: ["LOG_LEVEL": "warning"])
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(DeviceServerTests.imei))
        server.signal(SIGHUP)
        try server.waitForLog(event: "config.reloaded", timeout: 5)
        server.signal(SIGINT)
        let exit = try #require(server.waitForExit(timeout: 10))
        #expect(exit.status == 0)
        let quiet = server.logs.filter { ["debug", "info", "notice"].contains($0["level"] as? String ?? "") }
        let events = Set(quiet.compactMap { $0["event"] as? String })
        let lifecycle: Set = [
            "server.starting", "server.listening", "metrics.listening", "process.reload_requested", "config.reloaded",
            "process.shutdown_requested", "server.draining", "server.stopped",
        ]
        #expect(events == lifecycle, "below warning: \(events.symmetricDifference(lifecycle))")
    }

    @Test func testSighupReloadsTheLogLevelWithoutDroppingConnections() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("ingest-\(UUID().uuidString).env")
        defer { try? FileManager.default.removeItem(at: file) }
        try "# settings\nLOG_LEVEL=info\n".write(to: file, atomically: true, encoding: .utf8)
        let server = try ServerProcess(environment: ["CONFIG_FILE": file.path, "LOG_LEVEL": ""])
        let device = try DeviceClient(port: server.port)
        #expect(try device.login("356307042441013"))
        try device.send(Self.twoRecords)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))

        try "LOG_LEVEL=debug\nexport MAX_CONNECTIONS=\"5\"\n".write(to: file, atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        _ = try server.waitForLog(event: "process.reload_requested", timeout: 5)
        // Lines come in order: with this later line in, a packet line would have been too.
        #expect(server.logCount(event: "device.packet") == 0, "a debug line, and the level was info")
        let reloaded = try server.waitForLog(event: "config.reloaded", timeout: 5)
        #expect(reloaded["applied"] as? String == "LOG_LEVEL")
        #expect(reloaded["restart_required"] as? String == "MAX_CONNECTIONS")
        #expect(try server.scrape().value(#"teltonika_config_reloads_total{result="failed"}"#) == 0)
        try device.send(Self.twoRecords)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))  // same connection
        try server.waitForLog(event: "device.packet", timeout: 5)

        try "NOPE=1\n".write(to: file, atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        try server.waitForLog(event: "config.reload_failed", timeout: 5)
        try device.send(Self.twoRecords)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        try server.waitForLog(event: "device.packet", timeout: 5, count: 2)  // still debug
        #expect(server.process.isRunning)
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_config_reloads_total{result="ok"}"#) == 1)
        #expect(try scrape.value(#"teltonika_config_reloads_total{result="failed"}"#) == 1)
    }

    /// The test-only crash trigger: one fatal log line, the Swift backtrace, death by the signal.
    /// `trap` is `__builtin_trap` and `fatal` a Swift `fatalError`: SIGILL on x86-64 (ud2), SIGTRAP on arm64.
    @Test(arguments: [("segv", SIGSEGV), ("abort", SIGABRT), ("fatal", SIGILL), ("trap", SIGILL), ("bus", SIGBUS)])
    func testCrashLogsOneFatalLineAndDiesByTheSignal(kind: String, expected: Int32) throws {
        let server = try ServerProcess(environment: ["TELTONIKA_CRASH_TEST": kind], waitUntilListening: false)
        let exit = try #require(server.waitForExit(timeout: 60), "no crash")
        let fatalSignal = expected == SIGILL ? [SIGILL, SIGTRAP] : [expected]  // a trap is SIGTRAP on arm64
        #expect(exit.bySignal && fatalSignal.contains(exit.status), "exit \(exit)")
        #expect(server.logs.first { $0["event"] as? String == "process.crash_test" }?["kind"] as? String == kind)
        let crashed = server.logs.filter { $0["event"] as? String == "process.crashed" }
        #expect(crashed.count == 1, "\(server.stderrLines.suffix(30))")
        #expect(crashed.first?["signal_number"] as? Int == Int(exit.status))
        #expect(crashed.first?["level"] as? String == "critical")
        // The Swift backtracer's report follows the line.
        let text = server.stderrLines.joined(separator: "\n")
        #expect(text.contains("Program crashed") && text.contains("Thread"), "no backtrace in: \(text.suffix(2000))")
    }
}

/// Waits until the server has framed the device's packet (so it is in flight, not unread in the
/// socket buffer) before a test signals it: a signal that arrives first finds nothing to drain.
private func waitForPacketInFlight(_ server: ServerProcess) throws {
    try waitFor(timeout: 10, "packet framed by the server") {
        try server.scrape()["teltonika_frames_total{codec=\"8\",result=\"ok\"}"] == 1
    }
}
