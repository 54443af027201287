import Codec8
import FixtureSupport
import Foundation
import NIOConcurrencyHelpers

@testable import Ingest

#if canImport(Glibc)
import Glibc
#endif

/// Where the real binary and the throwaway Redis of `make test` are.
enum TestEnvironment {
    /// `TELTONIKA_INGEST_BIN`, else the binary beside the test bundle.
    static let binary: String = {
        if let path = ProcessInfo.processInfo.environment["TELTONIKA_INGEST_BIN"] { return path }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<3 {
            let candidate = dir.appendingPathComponent("teltonika-ingest").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return "/nonexistent/teltonika-ingest"
    }()

    /// The Redis `make test` started (`TEST_REDIS_URL`), else one on 127.0.0.1:6379.
    static let redisURL = ProcessInfo.processInfo.environment["TEST_REDIS_URL"] ?? "redis://127.0.0.1:6379"

    static let fixtures = FixtureCorpus.frames
    static var expectedRecords: [String: [[String: Any]]] { FixtureCorpus.expectedRecords }

    /// A port nobody listens on right now.
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// Sends `signal`, then waits up to 10 s (SIGKILL after that). Polls instead of `waitUntilExit`, which can
/// wait forever on a test thread with no run loop.
func terminateAndWait(_ process: Process, signal: Int32 = SIGTERM) {
    guard process.isRunning else { return }
    let pid = process.processIdentifier
    kill(pid, signal)
    let deadline = Date().addingTimeInterval(10)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning {
        kill(pid, SIGKILL)
        while process.isRunning { usleep(10_000) }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A `redis-server` of the test's own (for tests that stop and start Redis).
final class OwnRedis {
    let port: Int
    private var process: Process?
    private let directory: String
    private let extraArguments: [String]
    /// How clients reach it (for checks and for the server).
    let url: String

    init(arguments: [String] = [], url makeURL: ((_ port: Int, _ directory: String) -> String)? = nil) throws {
        let port = TestEnvironment.freePort()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.port = port
        self.directory = directory
        extraArguments = arguments.map { $0.replacingOccurrences(of: "$DIR", with: directory) }
        url = makeURL?(port, directory) ?? "redis://127.0.0.1:\(port)"
        try start()
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the server process.
    func pause() { if let process { kill(process.processIdentifier, SIGSTOP) } }
    func resume() { if let process { kill(process.processIdentifier, SIGCONT) } }

    func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        p.arguments =
            ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory] + extraArguments
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            do {
                _ = try RedisClient(url: url)
                return
            } catch {
                if "\(error)".contains("NOAUTH") { return }  // up, and wants a password
            }
            usleep(20_000)
        }
        throw TestFailure("redis-server on \(port) did not start")
    }

    /// Kills the server (SIGKILL: children of the test runner inherit a blocked SIGTERM, and this Redis
    /// keeps nothing on disk anyway).
    func stop() {
        if let process { terminateAndWait(process, signal: SIGKILL) }
        process = nil
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A synchronous Redis client for checks (the server's own hiredis wrapper).
final class RedisClient {
    private let connection: RedisConnection

    init(url: String) throws {
        connection = try RedisConnection(url: try RedisURL(parsing: url), timeoutMs: 5000)
    }

    func command(_ arguments: [String]) throws -> RedisConnection.Reply { try connection.command(arguments) }

    func xlen(_ stream: String) throws -> Int {
        guard case .integer(let n) = try connection.command(["XLEN", stream]) else { throw TestFailure("XLEN failed") }
        return Int(n)
    }

    /// Every entry of a stream as field → value.
    func entries(_ stream: String) throws -> [[String: String]] {
        guard case .array(let items) = try connection.command(["XRANGE", stream, "-", "+"]) else { throw TestFailure("XRANGE failed") }
        return items.map { item in
            guard case .array(let pair) = item, pair.count == 2, case .array(let fields) = pair[1] else { return [:] }
            var out: [String: String] = [:]
            var i = 0
            while i + 1 < fields.count {
                if case .string(let k) = fields[i], case .string(let v) = fields[i + 1] { out[k] = v }
                i += 2
            }
            return out
        }
    }
}

/// Appends each complete line read from `pipe` to `lines`, as it arrives.
func collectLines(of pipe: Pipe, into lines: NIOLockedValueBox<[String]>) {
    let partial = NIOLockedValueBox(Data())
    pipe.fileHandleForReading.readabilityHandler = { handle in
        let data = handle.availableData
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
    private let lines = NIOLockedValueBox<[String]>([])
    private let stderr = Pipe()

    /// - Parameters:
    ///   - launcher: a command that runs the binary (e.g. `prlimit ... --`), or none.
    ///   - waitUntilListening: wait for both listeners (and learn their ports) before returning.
    init(
        redisURL: String = TestEnvironment.redisURL,
        environment extra: [String: String] = [:],
        launcher: [String] = [],
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
        for (k, v) in extra { env[k] = v.isEmpty ? nil : v }  // "" unsets
        let command = launcher + [TestEnvironment.binary, "serve"]
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.environment = env
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        collectLines(of: stderr, into: lines)
        try process.run()
        guard waitUntilListening else { return }
        let listening = try waitForLog(event: "server.listening", timeout: 10)
        port = Int(listening["port"] as? String ?? "") ?? 0
        guard port > 0 else { throw TestFailure("no port in \(listening)") }
        let metrics = try waitForLog(event: "metrics.listening", timeout: 10)
        metricsPort = Int(metrics["port"] as? String ?? "") ?? 0
        guard metricsPort > 0 else { throw TestFailure("no metrics port in \(metrics)") }
    }

    /// Every line the server wrote to stderr (log lines, and a crash's backtrace).
    var stderrLines: [String] { lines.withLockedValue { $0 } }

    /// Sends a signal to the server.
    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Waits up to `timeout` seconds for the server to exit; nil when it is still running.
    /// Reaps the child itself when Foundation has not (seen with children that died by a signal
    /// under the test runner: they stay zombies and `isRunning` stays true).
    func waitForExit(timeout: Double) -> (status: Int32, bySignal: Bool, seconds: Double)? {
        let start = Date()
        let pid = process.processIdentifier
        while process.isRunning && Date().timeIntervalSince(start) < timeout {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                usleep(100_000)  // let the last stderr lines arrive
                let signalled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
                return (signalled ? status & 0x7f : (status >> 8) & 0xff, signalled, Date().timeIntervalSince(start))
            }
            usleep(5_000)
        }
        guard !process.isRunning else { return nil }
        usleep(100_000)  // let the last stderr lines arrive
        return (process.terminationStatus, process.terminationReason == .uncaughtSignal, Date().timeIntervalSince(start))
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

/// A whole file read with read(2) to its end: Foundation's readers stop after the first page of a
/// /proc file, whose size is reported as 0 (seen with /proc/net/tcp once it held a few dozen sockets).
func readWholeFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        out += buffer[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

/// Resident memory of a process, in KiB (-1 when it is gone).
func rssKiB(pid: Int32) -> Int {
    let status = readWholeFile("/proc/\(pid)/status")
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? -1
}

/// Writes all of `bytes` to the socket (waiting out a send timeout, if the socket has one).
func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
        if n < 0 && (errno == EAGAIN || errno == EINTR) { continue }
        guard n > 0 else { throw TestFailure("send failed: errno \(errno)") }
        offset += n
    }
}

/// A blocking TCP socket connected to 127.0.0.1:`port`; `receiveBuffer` (bytes) is set before the
/// handshake, so it bounds the window the server sees.
func connectLoopback(port: Int, receiveBuffer: Int32? = nil) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        let error = errno
        close(fd)
        throw TestFailure("connect to \(port) failed: errno \(error)")
    }
    return fd
}

/// A device: one blocking TCP socket with receive timeouts.
final class DeviceClient {
    private let fd: Int32

    init(port: Int) throws {
        fd = try connectLoopback(port: port)
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) throws { try sendAll(fd, bytes) }

    /// Closes the sending side (FIN), as a device that gives up does.
    func shutdownWrite() { _ = shutdown(fd, Int32(SHUT_WR)) }

    /// Sends one byte at a time.
    func dribble(_ bytes: [UInt8]) throws {
        for b in bytes { try send([b]) }
    }

    /// What came back within `timeout` seconds: `count` bytes, fewer with `.closed` when the peer
    /// closed, or `.timeout` with what arrived.
    enum Received: Equatable {
        case bytes([UInt8])
        case closed([UInt8])
        case timeout([UInt8])
    }

    func receive(_ count: Int, timeout: Double) -> Received {
        var out: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        while out.count < count {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { return .timeout(out) }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, Int32(left * 1000) + 1)
            if ready <= 0 { continue }
            var buf = [UInt8](repeating: 0, count: count - out.count)
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { return .closed(out) }
            out += buf[0..<n]
        }
        return .bytes(out)
    }

    /// Logs in with `imei`; true when the server answered 0x01.
    func login(_ imei: String) throws -> Bool {
        try send(IMEI(imei)!.loginFrame)
        return receive(1, timeout: 5) == .bytes([1])
    }
}

struct HTTPResult {
    var status: Int
    var body: String
}

/// A one-shot HTTP/1.1 GET on 127.0.0.1 (`Connection: close`, read to EOF).
func httpGet(port: Int, path: String, timeout: Double = 10) throws -> HTTPResult {
    let fd = try connectLoopback(port: port)
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        response += buffer[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let headerEnd = text.range(of: "\r\n\r\n") else { throw TestFailure("no HTTP response from \(path): \(text)") }
    let statusLine = text[..<headerEnd.lowerBound].split(separator: "\r\n").first ?? ""
    let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") ?? 0
    return HTTPResult(status: status, body: String(text[headerEnd.upperBound...]))
}

/// A Prometheus text exposition, as series → value.
struct Scrape {
    let text: String
    let values: [String: Double]

    init(text: String) {
        self.text = text
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " ") else { continue }
            values[String(line[..<space])] = Double(line[line.index(after: space)...])
        }
        self.values = values
    }

    /// The value of one series, written as in the exposition (`name{label="v",...}`); 0 when absent.
    subscript(_ series: String) -> Double { values[series] ?? 0 }

    /// Metric names (without labels, histogram suffixes kept).
    var names: Set<String> {
        Set(values.keys.map { String($0.prefix { $0 != "{" }) })
    }
}
