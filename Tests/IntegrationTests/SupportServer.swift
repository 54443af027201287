/// Test support: the real `teltonika-ingest serve` as a child process, with its logs and ports.
import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// Appends each complete line read from `pipe` to `lines`, as it arrives; sets `ended` at end of file
/// (every writer gone: the last line is in).
func collectLines(of pipe: Pipe, into lines: NIOLockedValueBox<[String]>, ended: NIOLockedValueBox<Bool>? = nil) {
    let partial = NIOLockedValueBox(Data())
    pipe.fileHandleForReading.readabilityHandler = { handle in
        let data = handle.availableData
        if data.isEmpty {
            handle.readabilityHandler = nil
            ended?.withLockedValue { $0 = true }
            return
        }
        partial.withLockedValue { partial in
            partial.append(data)
            while let nl = partial.firstIndex(of: 0x0A) {
                let line = String(decoding: partial[partial.startIndex..<nl], as: UTF8.self)
                partial = Data(partial[(nl + 1)...])
                lines.withLockedValue { $0.append(line) }
            }
        }
    }
}

/// The real `teltonika-ingest serve`, on a free port, logging JSON to a buffer.
final class ServerProcess {
    let process = Process()
    let stream: String
    let responses: String
    private(set) var port = 0
    /// The metrics and health port (`/metrics`, `/healthz`, `/readyz`).
    private(set) var metricsPort = 0
    /// The UDP port, when the environment sets `UDP_PORT` (0 in tests: the port the server logged).
    private(set) var udpPort = 0
    /// The TLS port, when the environment sets `TLS_PORT` (0 in tests: the port the server logged).
    private(set) var tlsPort = 0
    private let lines = NIOLockedValueBox<[String]>([])
    private let stderrEnded = NIOLockedValueBox(false)
    private let stderr = Pipe()

    /// - Parameters:
    ///   - launcher: a command that runs the binary (e.g. `prlimit ... --`), or none.
    ///   - arguments: flags after `serve`.
    ///   - waitUntilListening: wait for both listeners (and learn their ports) before returning.
    init(
        redisURL: String = TestEnvironment.redisURL,
        environment extra: [String: String] = [:],
        launcher: [String] = [],
        arguments: [String] = [],
        waitUntilListening: Bool = true
    ) throws {
        stream = "test:\(UUID().uuidString)"
        responses = stream + ":responses"
        var env = ProcessInfo.processInfo.environment
        env["TELTONIKA_HOST"] = "127.0.0.1"
        env["TELTONIKA_PORT"] = "0"
        env["REDIS_URL"] = redisURL
        env["REDIS_TELEMETRY_STREAM"] = stream
        env["REDIS_RESPONSES_STREAM"] = responses
        env["LOG_FORMAT"] = "json"
        env["LOG_LEVEL"] = "debug"
        env["METRICS_HOST"] = "127.0.0.1"
        env["METRICS_PORT"] = "0"
        env["SWIFT_BACKTRACE"] = "interactive=no"
        // Each server its own registry, notices and command keys: tests share one Redis and many reuse an
        // IMEI, and servers sharing these keys act as one deployment (a login on one closes the other's
        // connection). Tests of several instances pass the same values in `extra`.
        env["REDIS_DEVICE_PREFIX"] = stream + ":devices"
        env["REDIS_NOTICES_STREAM"] = stream + ":notices"
        env["REDIS_COMMAND_PREFIX"] = stream + ":commands"
        env["REDIS_COMMAND_EVENTS_STREAM"] = stream + ":command-events"
        for (k, v) in extra { env[k] = v.isEmpty ? nil : v }  // "" unsets
        let command = launcher + [TestEnvironment.binary, "serve"] + arguments
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.environment = env
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        collectLines(of: stderr, into: lines, ended: stderrEnded)
        try process.run()
        guard waitUntilListening else { return }
        let listening = try waitForLog(event: "server.listening", timeout: 10)
        port = listening["port"] as? Int ?? 0
        guard port > 0 else { throw TestFailure("no port in \(listening)") }
        let metrics = try waitForLog(event: "metrics.listening", timeout: 10)
        metricsPort = metrics["port"] as? Int ?? 0
        guard metricsPort > 0 else { throw TestFailure("no metrics port in \(metrics)") }
        if let udp = extra["UDP_PORT"], !udp.isEmpty { udpPort = try loggedPort(event: "server.udp_listening") }
        if let tls = extra["TLS_PORT"], !tls.isEmpty { tlsPort = try loggedPort(event: "server.tls_listening") }
    }

    /// The port a listener's start line names.
    private func loggedPort(event: String) throws -> Int {
        let listening = try waitForLog(event: event, timeout: 10)
        guard let port = listening["port"] as? Int, port > 0 else { throw TestFailure("no port in \(listening)") }
        return port
    }

    /// Every line the server wrote to stderr (log lines, and a crash's backtrace).
    var stderrLines: [String] { lines.withLockedValue { $0 } }

    /// Sends a signal to the server.
    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Waits up to `timeout` seconds for the server to exit; nil when it is still running.
    /// Reaps the child itself when Foundation has not (seen with children that died by a signal
    /// under the test runner: they stay zombies and `isRunning` stays true).
    /// The exit status, and `seconds` from the call until the process was seen gone (not counting the wait
    /// for its last log lines, which a loaded machine can stretch by seconds).
    func waitForExit(timeout: Double) -> (status: Int32, bySignal: Bool, seconds: Double)? {
        let start = Date()
        let pid = process.processIdentifier
        while process.isRunning && Date().timeIntervalSince(start) < timeout {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let seconds = Date().timeIntervalSince(start)
                waitForLastLogLine()
                let signalled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
                return (signalled ? status & 0x7f : (status >> 8) & 0xff, signalled, seconds)
            }
            usleep(5_000)
        }
        guard !process.isRunning else { return nil }
        let seconds = Date().timeIntervalSince(start)
        waitForLastLogLine()
        return (process.terminationStatus, process.terminationReason == .uncaughtSignal, seconds)
    }

    /// After the process is gone: until its stderr reaches end of file (bounded: 5 s).
    private func waitForLastLogLine() {
        let deadline = Date().addingTimeInterval(5)
        while !stderrEnded.withLockedValue({ $0 }) && Date() < deadline { usleep(2_000) }
    }

    /// GET on the metrics port.
    func http(_ path: String) throws -> HTTPResult { try httpGet(port: metricsPort, path: path) }

    /// `/metrics`, parsed.
    func scrape() throws -> Scrape {
        let result = try http("/metrics")
        guard result.status == 200 else { throw TestFailure("/metrics answered \(result.status)") }
        return Scrape(text: result.body)
    }

    /// Log objects so far.
    var logs: [[String: Any]] {
        lines.withLockedValue { $0 }.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    func logCount(event: String) -> Int { logs.filter { $0["event"] as? String == event }.count }

    @discardableResult
    func waitForLog(event: String, timeout: Double, count: Int = 1) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let matching = logs.filter { $0["event"] as? String == event }
            if matching.count >= count { return matching[count - 1] }
            if !process.isRunning { break }
            usleep(10_000)
        }
        throw TestFailure("no \(event) log within \(timeout) s; logs: \(lines.withLockedValue { $0.suffix(20) })")
    }

    /// Resident memory of the server, in KiB.
    var rssKiB: Int { IntegrationTests.rssKiB(pid: process.processIdentifier) }

    func stop() {
        terminateAndWait(process)
        stderr.fileHandleForReading.readabilityHandler = nil
    }

    deinit { stop() }
}
