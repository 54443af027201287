/// A `redis-server` with TLS on a free loopback port, for the `rediss://` tests.
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Why the server did not start.
public struct TLSRedisServerError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) {
        self.description = description
    }
}

/// `/usr/bin/redis-server` with TLS on `tlsPort` (and plain TCP on `plainPort` when asked), bound to 127.0.0.1
/// and ::1, no persistence. Ready (accepting) when `init` returns; killed on deinit.
public final class TLSRedisServer {
    public let tlsPort: Int
    /// The plain-TCP port, when `plainPort: true`.
    public let plainPort: Int?
    /// The folder for its log and working files.
    public let directory: String
    private let process: Process

    /// Starts the server with `certFile`/`keyFile` as its identity and `caFile` to check client certificates
    /// (`authClients: true` requires one); `password` sets `requirepass`. With `sentinel` (the lines of a
    /// Sentinel configuration file) it runs as a Sentinel that reaches the nodes it monitors over TLS.
    public init(
        certFile: String,
        keyFile: String,
        caFile: String,
        authClients: Bool = false,
        password: String? = nil,
        plainPort: Bool = false,
        sentinel: String? = nil
    ) throws {
        tlsPort = try freeLoopbackPort()
        self.plainPort = plainPort ? try freeLoopbackPort() : nil
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var arguments = [
            "--port", String(self.plainPort ?? 0), "--tls-port", String(tlsPort), "--bind", "127.0.0.1", "-::1",
            "--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", caFile,
            "--tls-auth-clients", authClients ? "yes" : "no",
            "--save", "", "--appendonly", "no", "--dir", directory, "--logfile", directory + "/redis.log",
        ]
        if let password { arguments += ["--requirepass", password] }
        if let sentinel {
            let config = directory + "/sentinel.conf"
            try sentinel.write(toFile: config, atomically: true, encoding: .utf8)
            arguments = [config, "--sentinel", "--tls-replication", "yes"] + arguments
        }
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        try waitUntilAccepting()
    }

    deinit {
        // SIGKILL, not SIGTERM: a child spawned from a test's worker thread inherits its signal mask, which
        // blocks SIGTERM (seen: redis-server ignored terminate()). Nothing is persisted, so nothing is lost.
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The server's log so far (for a failing test's message).
    /// Stops the server (`SIGSTOP`): it neither reads nor answers until ``resume()``.
    public func suspend() {
        kill(process.processIdentifier, SIGSTOP)
    }

    public func resume() {
        kill(process.processIdentifier, SIGCONT)
    }

    public var log: String {
        (try? String(contentsOfFile: directory + "/redis.log", encoding: .utf8)) ?? ""
    }

    /// Polls a TCP connect to the TLS port every 10 ms, for at most 5 s.
    private func waitUntilAccepting() throws {
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            guard process.isRunning else {
                throw TLSRedisServerError(description: "redis-server exited \(process.terminationStatus): \(log)")
            }
            if let fd = try? connectLoopback(port: tlsPort) {
                close(fd)
                return
            }
            usleep(10_000)
        }
        kill(process.processIdentifier, SIGKILL)
        throw TLSRedisServerError(description: "redis-server did not accept on \(tlsPort) within 5 s: \(log)")
    }
}
