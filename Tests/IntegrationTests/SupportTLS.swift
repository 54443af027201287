/// Test support: devices over TLS on Python's `ssl` (the system OpenSSL, not the server's BoringSSL), through
/// Tests/Fixtures/tls-device.py, and the certificates' facts read with the `openssl` command.
import FixtureSupport
import Foundation
import NIOConcurrencyHelpers

/// One TLS connection made by tls-device.py: its handshake, then each frame's answer.
struct TLSDeviceRun {
    static let script = FixtureCorpus.repositoryRoot + "/Tests/Fixtures/tls-device.py"

    var status: Int32
    /// stdout: `handshake version=... cipher=... serial=...`, then one `reply|closed|timeout <hex>` per frame.
    var lines: [String]
    /// stderr: why the handshake failed, when it did.
    var errors: String

    /// Connects to `port` with the script's `options` (`--cert`, `--max-version`, ...) and sends `frames` (hex).
    init(port: Int, options: [String] = [], frames: [String] = []) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-W", "ignore::DeprecationWarning", Self.script, "--port", "\(port)"] + options + frames
        let (out, err) = (Pipe(), Pipe())
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Both pipes are read to their end together, so neither can fill while the other is read.
        let errData = NIOLockedValueBox(Data())
        let reader = Thread { errData.withLockedValue { $0 = err.fileHandleForReading.readDataToEndOfFile() } }
        reader.start()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        while process.isRunning || !reader.isFinished { usleep(5_000) }
        status = process.terminationStatus
        lines = String(decoding: outData, as: UTF8.self).split(separator: "\n").map(String.init)
        errors = errData.withLockedValue { String(decoding: $0, as: UTF8.self) }
    }

    /// The `key=value` fields of the handshake line (nil when there was no handshake).
    var handshake: [String: String]? {
        guard let line = lines.first(where: { $0.hasPrefix("handshake ") }) else { return nil }
        return fields(line)
    }

    /// Each frame's answer: `reply 01`, `closed `, `timeout `.
    var answers: [String] { lines.filter { !$0.hasPrefix("handshake ") } }
}

/// `key=value` pairs of a line such as `handshake version=TLSv1.3 serial=05`.
func fields(_ line: String) -> [String: String] {
    var out: [String: String] = [:]
    for word in line.split(separator: " ") {
        guard let eq = word.firstIndex(of: "=") else { continue }
        out[String(word[..<eq])] = String(word[word.index(after: eq)...])
    }
    return out
}

/// A hex serial number without leading zeros, lower case: serials compare equal whoever printed them.
func normalizedSerial(_ hex: String) -> String {
    let trimmed = hex.lowercased().drop { $0 == "0" }
    return trimmed.isEmpty ? "0" : String(trimmed)
}

/// A certificate's serial number, as `openssl x509 -serial` prints it.
func certificateSerial(_ path: String) throws -> String {
    let result = try run(["/usr/bin/openssl", "x509", "-noout", "-serial", "-in", path])
    guard result.status == 0, let eq = result.output.firstIndex(of: "=") else { throw TestFailure("openssl x509: \(result.output)") }
    return normalizedSerial(result.output[result.output.index(after: eq)...].trimmingCharacters(in: .whitespacesAndNewlines))
}

/// tls-device.py --relay: every plain TCP connection to ``port`` is carried over a TLS connection of its own to
/// the server, so a ``DeviceClient`` plays a device over TLS. Stops when dropped.
final class TLSRelay {
    private(set) var port = 0
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private let lines = NIOLockedValueBox<[String]>([])

    init(tlsPort: Int, options: [String] = []) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", TLSDeviceRun.script, "--port", "\(tlsPort)", "--relay"] + options
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        collectLines(of: output, into: lines)
        try process.run()
        try waitFor(timeout: 10, "the relay's port") { lines.withLockedValue { $0.contains { $0.hasPrefix("relay ") } } }
        port = Int(lines.withLockedValue { $0.first { $0.hasPrefix("relay ") }! }.dropFirst(6)) ?? 0
    }

    /// One `key=value` table per TLS connection the relay opened (version, cipher, serial).
    var connections: [[String: String]] { lines.withLockedValue { $0 }.filter { $0.hasPrefix("connection ") }.map(fields) }

    deinit {
        try? input.fileHandleForWriting.close()
        terminateAndWait(process)
        output.fileHandleForReading.readabilityHandler = nil
    }
}
