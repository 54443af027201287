import FixtureSupport
import Foundation
import Lifecycle
import Testing

/// Runs the real `teltonika-ingest` binary.
enum Binary {
    /// `TELTONIKA_INGEST_BIN`, else the binary beside the test bundle in the build folder.
    static let url: URL = {
        if let path = ProcessInfo.processInfo.environment["TELTONIKA_INGEST_BIN"] { return URL(fileURLWithPath: path) }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<3 {
            let candidate = dir.appendingPathComponent("teltonika-ingest")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: "/nonexistent/teltonika-ingest")
    }()

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func run(_ arguments: [String], stdin: String? = nil, environment: [String: String] = [:]) throws -> Result {
        let process = Process()
        process.executableURL = url
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        let err = Pipe()
        let input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
        try input.fileHandleForWriting.close()
        // Reading to EOF returns once the process has closed its ends (exited); the wait after it is
        // bounded all the same, so a wedged child fails the test instead of hanging the run.
        let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
        let stderrData = err.fileHandleForReading.readDataToEndOfFile()
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            process.terminate()
            throw CLIRunError(description: "\(arguments) still running after 30 s")
        }
        return Result(
            status: process.terminationStatus,
            stdout: String(decoding: stdoutData, as: UTF8.self),
            stderr: String(decoding: stderrData, as: UTF8.self)
        )
    }
}

enum CLIFixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    static let rows = FixtureCorpus.frames

    static func writeTemporary(_ lines: [String]) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("decode-\(UUID().uuidString).hex").path
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func objects(_ stdout: String) throws -> [[String: Any]] {
        try stdout.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    }

    /// The outcome of one output object in frames.tsv spelling.
    static func outcome(_ o: [String: Any]) -> String {
        switch o["kind"] as? String {
        case "avl": "avl:\((o["records"] as? [Any])?.count ?? -1)"
        case "message": "message:\(o["codec"] as? String ?? "?")"
        case "imei": "imei"
        case "ping": "ping"
        case "error": "error:\(o["error"] as? String ?? "?")"
        default: "unknown"
        }
    }
}

@Suite(.serialized, .blocking)
struct DecodeCommandTests {
    @Test func testEveryFixtureLineGivesItsOutcomeAndErrorsExitOne() throws {
        let path = try CLIFixtures.writeTemporary(CLIFixtures.rows.map(\.hex))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try Binary.run(["decode", path])
        #expect(result.status == ExitStatus.failure.rawValue)
        let objects = try CLIFixtures.objects(result.stdout)
        try #require(objects.count == CLIFixtures.rows.count)
        for (i, (object, row)) in zip(objects, CLIFixtures.rows).enumerated() {
            #expect((object["line"] as? Int) == i + 1)
            #expect(CLIFixtures.outcome(object) == row.expect, "\(row.id)")
            if row.expect.hasPrefix("error") { #expect((object["message"] as? String)?.isEmpty == false) }
        }
    }

    @Test func testValidLinesExitZeroAndLoginLinesFillDeviceID() throws {
        let valid = CLIFixtures.rows.filter { !$0.expect.hasPrefix("error") && $0.expect != "imei" }
        let input = ["# a capture", "", "000F333536333037303432343431303133  # login"] + valid.map(\.hex) + ["FF"]
        let result = try Binary.run(["decode"], stdin: input.joined(separator: "\n"))
        #expect(result.status == ExitStatus.success.rawValue, "\(result.stderr)")
        let objects = try CLIFixtures.objects(result.stdout)
        #expect(objects.count == valid.count + 2)
        #expect(objects.first?["imei"] as? String == "356307042441013")
        #expect(objects.first?["line"] as? Int == 3)
        #expect(objects.last?["kind"] as? String == "ping")
        for object in objects where object["kind"] as? String == "avl" {
            for record in object["records"] as! [[String: Any]] {
                #expect(record["device_id"] as? String == "356307042441013")
            }
        }
    }

    @Test func testIMEIFlagFillsDeviceID() throws {
        let row = try #require(CLIFixtures.rows.first { $0.id == "w-c8-3" })
        let result = try Binary.run(["decode", "--imei", "352093081452251", "-"], stdin: row.hex)
        #expect(result.status == 0)
        let records = try CLIFixtures.objects(result.stdout).first?["records"] as? [[String: Any]]
        #expect(records?.count == 2)
        #expect(records?.allSatisfy { $0["device_id"] as? String == "352093081452251" } == true)
    }

    @Test func testNonHexLineIsAnErrorLine() throws {
        let result = try Binary.run(["decode"], stdin: "00zz\n")
        #expect(result.status == ExitStatus.failure.rawValue)
        #expect(try CLIFixtures.objects(result.stdout).first?["error"] as? String == "bad_hex")
    }

    @Test(arguments: [
        ["decode", "--imei", "123"], ["decode", "--no-such-flag"], ["decode", "/nonexistent/frames.hex"],
        ["decode", "--max-frame-bytes", "0"],
        ["replay", "--port", "0", CLIFixtures.directory.appendingPathComponent("sample-session.hex").path],
        ["simulate", "--devices", "1", "--duration", "1", "--port", "70000"],
    ])
    func testUsageErrorsExitTwo(_ arguments: [String]) throws {
        let result = try Binary.run(arguments, stdin: "")
        #expect(result.status == ExitStatus.usage.rawValue, "\(arguments): \(result.stderr)")
        #expect(!result.stderr.isEmpty)
    }

    @Test func testHelpExplainsTheOutput() throws {
        let result = try Binary.run(["decode", "--help"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("crc_mismatch"))
        #expect(result.stdout.contains("Exit status"))
    }

    @Test func testMaxFrameBytesApplies() throws {
        let row = try #require(CLIFixtures.rows.first { $0.id == "t025" })  // 1037-byte frame
        let result = try Binary.run(["decode", "--max-frame-bytes", "512"], stdin: row.hex)
        #expect(try CLIFixtures.objects(result.stdout).first?["error"] as? String == "too_large")
    }
}

@Suite(.serialized, .blocking)
struct ServeConfigurationTests {
    @Test(
        arguments: [
            (["serve", "--port", "abc"], [:], "TELTONIKA_PORT"),
            (["serve", "--no-such-setting", "1"], [:], "--no-such-setting"),
            (["--max-frame-bytes", "1"], [:], "MAX_FRAME_BYTES"),
            (["serve"], ["TELTONIKA_PORT": "70000"], "TELTONIKA_PORT"),
            (["serve"], ["REDIS_URL": "http://localhost"], "REDIS_URL"),
            (["serve"], ["LOG_FORMAT": "xml"], "LOG_FORMAT"),
            (["serve"], ["CONFIG_FILE": "/nonexistent/ingest.env"], "CONFIG_FILE"),
            (["serve"], ["REDIS_MIN_REPLICAS": "1", "REDIS_REPLICA_TIMEOUT_MS": "9000"], "REDIS_REPLICA_TIMEOUT_MS"),
            (["serve"], ["REDIS_SENTINELS": "a:1,b:0"], "REDIS_SENTINELS"),
            (["serve"], ["REDIS_URL": "rediss://127.0.0.1:1", "REDIS_TLS_CA_FILE": "/nonexistent/ca.pem"], "REDIS_TLS_CA_FILE"),
            (["serve"], ["REDIS_URL": "rediss://127.0.0.1:1", "REDIS_TLS_KEY_FILE": "/etc/hostname"], "REDIS_TLS_CERT_FILE"),
            (["serve"], ["REDIS_URL": "rediss://127.0.0.1:1", "REDIS_TLS_CERT_FILE": "/etc/hostname"], "REDIS_TLS_KEY_FILE"),
            (["serve"], ["REDIS_TLS_CA_FILE": "/etc/ssl/certs/ca-certificates.crt"], "REDIS_TLS_CA_FILE"),
        ] as [([String], [String: String], String)]
    )
    func testInvalidSettingsExitTwoNamingTheSetting(_ arguments: [String], _ environment: [String: String], _ name: String) throws {
        let result = try Binary.run(arguments, stdin: "", environment: environment)
        #expect(result.status == ExitStatus.usage.rawValue, "\(arguments) \(environment): \(result.stderr)")
        #expect(result.stderr.contains(name), "the message names \(name): \(result.stderr)")
    }

    @Test func testServeHelpListsEverySetting() throws {
        let result = try Binary.run(["serve", "--help"])
        #expect(result.status == 0)
        for env in ["TELTONIKA_PORT", "MAX_FRAME_BYTES", "REDIS_URL", "PUBLISH_QUEUE_CAPACITY", "LOG_FORMAT"] {
            #expect(result.stdout.contains(env), "\(env)")
        }
        // Each setting with its default, on the line after its flag.
        for shown in [
            "  --port VALUE\n      TELTONIKA_PORT, default: 5027\n",
            "  --redis-url VALUE\n      REDIS_URL, default: redis://127.0.0.1:6379\n",
            "  --redis-sentinels VALUE\n      REDIS_SENTINELS, default: none\n",
            "  --redis-device-allowlist-key VALUE\n      REDIS_DEVICE_ALLOWLIST_KEY, default: teltonika:allowlist\n",
        ] {
            #expect(result.stdout.contains(shown), "\(shown)")
        }
        // No line wraps (the parser wraps at 80 columns when not on a terminal, continuing at column 0): from
        // the first setting to the signals, every line is indented, and every flag has its default line.
        let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let first = try #require(lines.firstIndex { $0.hasPrefix("  --") })
        let last = try #require(lines.firstIndex { $0.hasPrefix("Signals:") })
        for line in lines[first..<last] where !line.isEmpty {
            #expect(line.hasPrefix("  ") && line.count < 80, "a wrapped line: \(line)")
        }
        let flags = lines.indices.filter { lines[$0].hasPrefix("  --") }
        #expect(flags.count >= 50)
        for i in flags { #expect(lines[i + 1].contains(", default: "), "\(lines[i]) then \(lines[i + 1])") }
    }
}

struct CLIRunError: Error, CustomStringConvertible {
    var description: String
}
