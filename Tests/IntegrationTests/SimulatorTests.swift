import FixtureSupport
import Foundation
import NIOConcurrencyHelpers
import RedisWire
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `teltonika-ingest simulate` against the real server and against `ack-server`.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct SimulatorTests {
    @Test func testFleetAgainstServerLosesNothing() throws {
        let server = try ServerProcess()
        let run = try runSimulate([
            "--devices", "20", "--duration", "3", "--port", "\(server.port)", "--records-per-packet", "10",
            "--verify", "--redis-url", TestEnvironment.redisURL, "--stream", server.stream, "--seed", "7",
        ])
        #expect(run.status == 0, "\(run)")
        let summary = try #require(run.line("simulate:"), "\(run)")
        let acked = summary.int("records_acked")
        #expect(acked > 0)
        #expect(acked == summary.int("packets_acked") * 10)
        #expect(summary.int("errors") == 0, "\(run)")
        #expect(summary.int("resends") == 0)
        #expect(summary.double("ack_p50_ms") > 0)
        #expect(summary.double("ack_max_ms") >= summary.double("ack_p99_ms"))
        #expect(summary.double("cpu_s") > 0)
        let verify = try #require(run.line("verify:"), "\(run)")
        #expect(verify.int("acked_records") == acked)
        #expect(verify.int("missing") == 0)
        // No fault, no resend: every record sent was ACKed and is stored exactly once.
        #expect(verify.int("duplicates") == 0 && verify.int("trimmed") == 0)
        #expect(summary.int("records_sent") == acked)
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == acked)
    }

    /// Redis drops the server's connection every 150 ms while 20 devices send: packets caught by a kill
    /// are resent or retried, never ACKed unstored. The simulator's `--verify` oracle finds every ACKed
    /// record in the stream, and the server reconnected each time.
    @Test func testRedisConnectionKillsUnderLoadLoseNoACKedRecord() throws {
        let redis = try OwnRedis()
        let server = try ServerProcess(redisURL: redis.url)
        let url = redis.url
        let killing = NIOLockedValueBox(true)
        let kills = NIOLockedValueBox(0)
        let killer = Thread {
            guard let admin = try? RedisClient(url: url) else { return }
            while killing.withLockedValue({ $0 }) {
                usleep(150_000)
                guard case .string(let list)? = try? admin.command(["CLIENT", "LIST"]) else { continue }
                for line in list.split(separator: "\n") where line.contains(" name=teltonika-ingest ") {
                    guard let id = line.split(separator: " ").first?.dropFirst("id=".count) else { continue }
                    if case .integer(1)? = try? admin.command(["CLIENT", "KILL", "ID", String(id)]) {
                        kills.withLockedValue { $0 += 1 }
                    }
                }
            }
        }
        killer.start()
        let run = try runSimulate([
            "--devices", "20", "--duration", "4", "--port", "\(server.port)", "--records-per-packet", "5",
            "--verify", "--redis-url", redis.url, "--stream", server.stream, "--seed", "11",
        ])
        killing.withLockedValue { $0 = false }
        let killed = kills.withLockedValue { $0 }
        #expect(killed >= 5, "only \(killed) kills")
        let (acked, verify) = try run.expectEveryACKedRecordStored()
        // A connection killed after the last batch is found by the next health check, not at once.
        try waitFor(timeout: 30, "a reconnect after each kill") {
            try server.scrape().value("teltonika_redis_reconnects_total") >= Double(killed) - 1
        }
        print("redis kills under load: \(killed) kills, \(acked) records ACKed; \(verify)")
    }

    @Test func testWithheldAckMakesEveryDeviceResendTheSamePacket() throws {
        let ackServer = try AckServerProcess(arguments: ["--withhold-acks", "1", "--log-packets"])
        let devices = 10
        let run = try runSimulate([
            "--devices", "\(devices)", "--duration", "2", "--port", "\(ackServer.port)", "--response-timeout-ms", "300",
            "--imei-base", "351000000000000", "--rate", "20", "--json",
        ])
        #expect(run.status == 0, "\(run)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], "\(run)")
        #expect((json["resends"] as? Int ?? 0) >= devices)
        #expect((json["timeouts"] as? Int ?? 0) >= devices)
        #expect((json["unrecovered_wrong_acks"] as? Int) == 0)
        #expect((json["packets_acked"] as? Int ?? 0) > devices)
        #expect((json["records_acked"] as? Int) == (json["packets_acked"] as? Int ?? -1) * 10)

        // The ack-server logs each packet it saw: the first (withheld) and the second (ACKed) of every
        // device carry the same first timestamp and CRC, the third is a new packet.
        ackServer.stop()
        var packets: [String: [[String: String]]] = [:]
        for line in ackServer.stderrLines where line.hasPrefix("packet ") {
            let fields = SummaryLine(line).fields
            packets[fields["imei"] ?? "", default: []].append(fields)
        }
        #expect(packets.count == devices)
        for (imei, seen) in packets {
            #expect(seen.count >= 3, "\(imei): \(seen)")
            guard seen.count >= 3 else { continue }
            #expect(seen[0]["acked"] == "false" && seen[1]["acked"] == "true", "\(imei): \(seen)")
            #expect(seen[0]["first_ts"] == seen[1]["first_ts"] && seen[0]["crc"] == seen[1]["crc"], "\(imei) resent another packet")
            #expect(seen[2]["first_ts"] != seen[1]["first_ts"], "\(imei) sent the ACKed packet again")
        }
    }

    @Test func testCorruptPacketsAreResentIntactAndNothingIsLost() throws {
        let server = try ServerProcess()
        let run = try runSimulate([
            "--devices", "10", "--duration", "3", "--port", "\(server.port)", "--corrupt-ratio", "0.2",
            "--verify", "--redis-url", TestEnvironment.redisURL, "--stream", server.stream, "--seed", "11",
        ])
        #expect(run.status == 0, "\(run)")
        let summary = try #require(run.line("simulate:"), "\(run)")
        #expect(summary.int("corrupt_sends") > 0)
        #expect(summary.int("errors") > 0)
        #expect(summary.int("corrupt_acked") == 0)
        #expect(summary.int("resends") >= summary.int("corrupt_sends") - 10)  // the last ones may end unresent
        let verify = try #require(run.line("verify:"), "\(run)")
        #expect(verify.int("acked_records") == summary.int("records_acked"))
        #expect(verify.int("missing") == 0)
    }

    @Test func testVerifyFailsWhenAckedRecordsAreNotInTheStream() throws {
        // ack-server ACKs without storing anything: the oracle must see every ACKed record missing.
        let ackServer = try AckServerProcess(arguments: [])
        let run = try runSimulate([
            "--devices", "3", "--duration", "0.5", "--port", "\(ackServer.port)", "--rate", "10",
            "--verify", "--redis-url", TestEnvironment.redisURL, "--stream", "test:empty:\(UUID().uuidString)",
        ])
        #expect(run.status == 1, "\(run)")
        let acked = try #require(run.line("simulate:"), "\(run)").int("records_acked")
        let verify = try #require(run.line("verify:"), "\(run)")
        #expect(acked > 0)
        #expect(verify.int("missing") == acked)
        #expect(run.stderr.contains("ACKed records missing"))
    }

    @Test func testUsageErrorsExitTwo() throws {
        #expect(try runSimulate(["--devices", "0", "--duration", "1"]).status == 2)
        #expect(try runSimulate(["--devices", "1", "--duration", "1", "--codec", "16"]).status == 2)
        #expect(try runSimulate(["--devices", "2", "--duration", "1", "--imei-base", "999999999999999"]).status == 2)
    }
}

/// What one `simulate` run printed.
struct SimulateRun: CustomStringConvertible {
    var status: Int32
    var stdout: String
    var stderr: String

    /// The first stdout line that starts with `prefix`, parsed.
    func line(_ prefix: String) -> SummaryLine? {
        stdout.split(separator: "\n").first { $0.hasPrefix(prefix) }.map { SummaryLine(String($0)) }
    }

    var description: String { "status \(status)\nstdout: \(stdout)\nstderr: \(stderr.suffix(2000))" }

    /// The no-loss oracle of a `--verify` run: exit 0, records were ACKed, and every one of them is in the
    /// stream. Returns the ACKed count and the verify line, for the test's report.
    func expectEveryACKedRecordStored() throws -> (acked: Int, verify: [String: String]) {
        #expect(status == 0, "\(self)")
        let summary = try #require(line("simulate:"), "\(self)")
        #expect(summary.int("records_acked") > 0)
        let verify = try #require(line("verify:"), "\(self)")
        #expect(verify.int("acked_records") == summary.int("records_acked"))
        #expect(verify.int("missing") == 0)
        // Nothing in these tests trims (a trimmed record would hide a loss), and every entry was sent:
        // ACKed ≤ distinct records stored ≤ distinct records sent (duplicates come from device resends and
        // from the publisher writing again what a broken connection left unconfirmed).
        #expect(verify.int("trimmed") == 0)
        let (acked, sent) = (summary.int("records_acked"), summary.int("records_sent"))
        let distinct = verify.int("stream_entries") - verify.int("duplicates")
        #expect(acked <= distinct && distinct <= sent, "acked \(acked), stored \(distinct) distinct, sent \(sent)")
        return (summary.int("records_acked"), verify.fields)
    }
}

/// `name=value` fields of a summary or log line.
struct SummaryLine {
    let fields: [String: String]

    init(_ line: String) {
        var fields: [String: String] = [:]
        for word in line.split(separator: " ") {
            guard let eq = word.firstIndex(of: "=") else { continue }
            fields[String(word[..<eq])] = String(word[word.index(after: eq)...])
        }
        self.fields = fields
    }

    func int(_ name: String) -> Int { Int(fields[name] ?? "") ?? -1 }
    func double(_ name: String) -> Double { Double(fields[name] ?? "") ?? -1 }
}

/// Runs `teltonika-ingest simulate ARGS` to the end.
func runSimulate(_ arguments: [String]) throws -> SimulateRun {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: TestEnvironment.binary)
    p.arguments = ["simulate"] + arguments
    let out = Pipe()
    let errFile = FileManager.default.temporaryDirectory.appendingPathComponent("simulate-\(UUID().uuidString).err")
    FileManager.default.createFile(atPath: errFile.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: errFile) }
    p.standardOutput = out
    p.standardError = try FileHandle(forWritingTo: errFile)
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    while p.isRunning { usleep(5_000) }
    let err = (try? String(contentsOf: errFile, encoding: .utf8)) ?? ""
    return SimulateRun(status: p.terminationStatus, stdout: String(decoding: data, as: UTF8.self), stderr: err)
}

/// `teltonika-ingest ack-server` on a free port, its stderr collected.
final class AckServerProcess {
    let process = Process()
    private(set) var port = 0
    private let lines = NIOLockedValueBox<[String]>([])
    private let stderr = Pipe()

    init(arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: TestEnvironment.binary)
        process.arguments = ["ack-server", "--port", "0"] + arguments
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        collectLines(of: stderr, into: lines)
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, port == 0 {
            if let line = stderrLines.first(where: { $0.hasPrefix("ack-server: listening on ") }) {
                port = Int(line.split(separator: ":").last ?? "") ?? 0
            }
            usleep(10_000)
        }
        guard port > 0 else { throw TestFailure("ack-server did not start: \(stderrLines)") }
    }

    var stderrLines: [String] { lines.withLockedValue { $0 } }

    /// Kills it (SIGKILL: it keeps nothing) and waits for the last lines.
    func stop() {
        guard process.isRunning else { return }
        terminateAndWait(process, signal: SIGKILL)
        usleep(100_000)
        stderr.fileHandleForReading.readabilityHandler = nil
    }

    deinit { stop() }
}
