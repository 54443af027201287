/// Test support: Redis processes of the test's own, and a synchronous client for checks.
import Foundation
import RedisWire

#if canImport(Glibc)
import Glibc
#endif

/// A `redis-server` of the test's own (for tests that stop and start Redis).
final class OwnRedis {
    let port: Int
    private var process: Process?
    private let directory: String
    private let extraArguments: [String]
    /// A configuration file of its own, given first (a Sentinel's, which Sentinel rewrites).
    private let configFile: String?
    /// How clients reach it (for checks and for the server).
    let url: String

    /// - Parameter sentinel: run as a Sentinel with `config` (its `sentinel monitor` lines).
    init(
        arguments: [String] = [],
        sentinel config: String? = nil,
        url makeURL: ((_ port: Int, _ directory: String) -> String)? = nil
    ) throws {
        let port = TestEnvironment.freePort()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.port = port
        self.directory = directory
        if let config {
            configFile = directory + "/sentinel.conf"
            try config.write(toFile: directory + "/sentinel.conf", atomically: true, encoding: .utf8)
        } else {
            configFile = nil
        }
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
            (configFile.map { [$0, "--sentinel"] } ?? [])
            + ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory] + extraArguments
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

    /// The process id, while it runs.
    var pid: Int32? { process?.processIdentifier }

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

    init(url: String, tls: RedisTLSContext? = nil) throws {
        connection = try RedisConnection(url: try RedisURL(parsing: url), timeoutMs: 5000, tls: tls)
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
