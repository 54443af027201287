import FixtureSupport
import Foundation
import Testing

/// The benchmarks' independent device fleet (tools/fleet/fleet.c) against the real server and Redis: what it
/// reports is what the stream holds, and what it sends is what PROTOCOL.md says (the server takes every packet).
@Suite(.serialized, .blocking, .timeLimit(.minutes(2)))
struct BenchFleetTests {
    /// Builds the fleet with the system's C compiler into a temporary directory.
    static func build() throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "fleet-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let binary = directory.appendingPathComponent("fleet").path
        // The system's cc, else the clang that comes with the Swift toolchain.
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
        let candidates = ["cc", "clang", "gcc"].flatMap { name in path.map { "\($0)/\(name)" } }
        guard let compiler = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw TestFailure("no C compiler (cc, clang or gcc) on PATH")
        }
        let built = try run([compiler, "-O2", "-Wall", "-Werror", "-o", binary, FixtureCorpus.repositoryRoot + "/tools/fleet/fleet.c"])
        guard built.status == 0 else { throw TestFailure("fleet did not build: \(built.output)") }
        return binary
    }

    static func report(_ output: String) throws -> [String: Any] {
        guard let line = output.split(separator: "\n").last,
            let report = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        else { throw TestFailure("no JSON report in \(output)") }
        return report
    }

    @Test func testEveryRecordTheFleetCountsAsACKedIsInTheStreamAsItSentIt() throws {
        let fleet = try BenchFleetTests.build()
        let server = try ServerProcess()
        let devices = 6
        let recordsPerPacket = 7
        let result = try run([
            fleet, "--port", "\(server.port)", "--devices", "\(devices)", "--duration", "1.5", "--records-per-packet",
            "\(recordsPerPacket)",
        ])
        #expect(result.status == 0)
        let report = try BenchFleetTests.report(result.output)
        let acked = (report["records_acked"] as? NSNumber)?.intValue ?? -1
        #expect(acked > 0)
        #expect(acked % recordsPerPacket == 0)
        #expect((report["packets_acked"] as? NSNumber)?.intValue == acked / recordsPerPacket)
        for field in ["errors", "resends", "wrong_acks", "timeouts", "login_refusals"] {
            #expect((report[field] as? NSNumber)?.intValue == 0, "\(field)")
        }
        #expect((report["connections"] as? NSNumber)?.intValue == devices)

        // The stream: exactly the ACKed records (nothing was resent), each device's timestamps one second
        // apart from the first, its codec by parity, the fleet's fifteen IO elements in every record.
        let entries = try RedisClient(url: TestEnvironment.redisURL).entries(server.stream)
        #expect(entries.count == acked)
        var next: [String: Int] = [:]
        var wrong: [String] = []
        for entry in entries where wrong.count < 5 {
            let device = entry["device_id"] ?? ""
            let payload = try JSONSerialization.jsonObject(with: Data((entry["payload"] ?? "").utf8)) as? [String: Any] ?? [:]
            guard let index = Int(device.dropFirst(8)), device.hasPrefix("35209300"), index < devices else {
                wrong.append("device \(device)")
                continue
            }
            if entry["codec"] != (index % 2 == 0 ? "8" : "8E") { wrong.append("codec \(entry["codec"] ?? "") of \(device)") }
            let timestamp = (payload["timestamp_ms"] as? NSNumber)?.intValue ?? 0
            if timestamp != next[device, default: 1_764_547_201_000] { wrong.append("timestamp \(timestamp) of \(device)") }
            next[device] = timestamp + 1000
            let attributes = payload["attributes"] as? [String: Any] ?? [:]
            let ids: Set<String> = ["239", "240", "21", "69", "200", "66", "67", "24", "181", "182", "16", "199", "241", "11", "14"]
            if Set(attributes.keys) != ids { wrong.append("attributes \(attributes.keys.sorted()) of \(device)") }
            if (attributes["241"] as? NSNumber)?.intValue != 24_702
                || (attributes["11"] as? [String: String])?["__bigint"] != "\(8_937_000_000_000_000_000 as UInt64 + UInt64(index))"
            {
                wrong.append("values \(attributes) of \(device)")
            }
        }
        #expect(wrong.isEmpty, "first records not as sent: \(wrong)")
        if wrong.isEmpty { #expect(next.count == devices) }
    }

    @Test func testAPacedFleetSendsNoFasterThanItsRate() throws {
        let fleet = try BenchFleetTests.build()
        let server = try ServerProcess()
        let result = try run([
            fleet, "--port", "\(server.port)", "--devices", "4", "--duration", "1", "--rate", "10", "--records-per-packet", "2",
        ])
        #expect(result.status == 0)
        let report = try BenchFleetTests.report(result.output)
        let packets = (report["packets_acked"] as? NSNumber)?.intValue ?? -1
        // 4 devices at 10 packets/s for 1 s: at most 10 each (the first at a random point of the first
        // 100 ms, one per 100 ms after it, none sent after the second).
        #expect(packets > 0)
        #expect(packets <= 40, "\(packets) packets")
        #expect(try RedisClient(url: TestEnvironment.redisURL).entries(server.stream).count == packets * 2)
    }
}
