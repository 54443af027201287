/// Test support: where the binary and Redis are, process control, small file and failure helpers.
import FixtureSupport
import Foundation

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
    static func freePort() -> Int { (try? freeLoopbackPort()) ?? 0 }
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

/// The peak virtual memory of a process, in KiB (-1 when it is gone): it moves with any reservation,
/// touched or not.
func vmPeakKiB(pid: Int32) -> Int {
    let status = readWholeFile("/proc/\(pid)/status")
    return statusKiB(status, "VmPeak:")
}

/// Resident memory of a process, in KiB (-1 when it is gone).
func rssKiB(pid: Int32) -> Int {
    let status = readWholeFile("/proc/\(pid)/status")
    return statusKiB(status, "VmRSS:")
}

/// The number of a `/proc/<pid>/status` line such as `VmPeak:\t  312432 kB` (-1 when absent). The
/// separator is a tab and padding spaces, and a wide number (ThreadSanitizer's reservations) leaves no
/// space at all: split on both.
private func statusKiB(_ status: String, _ key: String) -> Int {
    let line = status.split(separator: "\n").first { $0.hasPrefix(key) } ?? ""
    return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? -1
}

/// Polls `condition` every `interval` seconds (20 ms) until it holds or `timeout` seconds pass (then throws).
func waitFor(timeout: Double, _ what: String = #function, every interval: Double = 0.02, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if (try? condition()) == true { return }
        usleep(useconds_t(interval * 1_000_000))
    }
    throw TestFailure("condition not met within \(timeout) s (\(what))")
}
