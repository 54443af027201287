import Codec8
import FixtureSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real binary's TLS port (`TLS_PORT`) against devices on Python's `ssl` (the system OpenSSL), with
/// certificates the test makes with the `openssl` command.
@Suite(.serialized, .blocking, .timeLimit(.minutes(5)))
struct DeviceTLSTests {
    static var certificates: TestCertificates { .shared }

    static let login = IMEI(DeviceServerTests.imei)!.loginFrame.map { String(format: "%02x", $0) }.joined()
    static let packet = TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!

    /// A server with a TLS port on `cert`/`key` (default: the test server certificate, its CA after it in
    /// the file, as a chain) and `environment` on top.
    static func server(cert: String? = nil, key: String? = nil, environment: [String: String] = [:]) throws -> ServerProcess {
        let c = certificates
        var env = ["TLS_PORT": "0", "TLS_CERT_FILE": try cert ?? chainFile(c.serverCert), "TLS_KEY_FILE": key ?? c.serverKey]
        env.merge(environment) { $1 }
        return try ServerProcess(environment: env)
    }

    /// A file holding `cert` followed by the CA: what a server with an intermediate serves.
    static func chainFile(_ cert: String) throws -> String {
        let chain = cert + ".chain.pem"
        let text = try String(contentsOfFile: cert, encoding: .utf8) + String(contentsOfFile: certificates.caFile, encoding: .utf8)
        try text.write(toFile: chain, atomically: true, encoding: .utf8)
        return chain
    }

    /// (1) Every fixture over TLS gets the ACK and stream entries it gets over TCP (the same expectations,
    /// DeviceServerTests.expectEveryFixtureAnswered), sent whole or one byte at a time (a TLS record per byte).
    @Test(arguments: ["whole", "dribble"])
    func testEveryFixtureOverTLSGetsTheTCPAnswersAndEntries(_ style: String) throws {
        let server = try Self.server()
        let relay = try TLSRelay(tlsPort: server.tlsPort, options: ["--ca", Self.certificates.caFile])
        try DeviceServerTests.expectEveryFixtureAnswered(
            by: server,
            style: style,
            redis: RedisClient(url: TestEnvironment.redisURL),
            port: relay.port
        )
        let connections = TestEnvironment.fixtures.filter { $0.expect != "imei" }.count
        let served = try certificateSerial(Self.certificates.serverCert)
        #expect(relay.connections.count == connections)
        #expect(relay.connections.allSatisfy { normalizedSerial($0["serial"] ?? "") == served && $0["version"] == "TLSv1.3" })
        try waitFor(timeout: 10, "every session ended") { try server.scrape().value("teltonika_tls_connections_active") == 0 }
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_tls_handshakes_total{result="ok",version="tls1.3"}"#) == Double(connections))
        #expect(try scrape.value(#"teltonika_tls_handshakes_total{result="failed",version="unknown"}"#) == 0)
        #expect(try scrape.value(#"teltonika_connections_total{result="accepted"}"#) == Double(connections))
        #expect(
            try scrape.value(#"teltonika_disconnects_total{reason="error"}"#) == 0,
            "a device closing without close_notify is a peer close"
        )
        let notAfter = try scrape.value("teltonika_tls_certificate_expiry_timestamp_seconds")
        #expect(abs(notAfter - (Date().timeIntervalSince1970 + 2 * 86_400)) < 600, "the leaf's notAfter (2 days), not the CA's")
    }

    /// (2) TLS 1.1 is refused at the default minimum by the server: the same client (security level 0, so
    /// its own OpenSSL allows 1.1) completes a TLS 1.1 handshake with `openssl s_server`, and gets the
    /// server's protocol_version alert from the TLS port. 1.2 and 1.3 are accepted; TLS_MIN_VERSION=1.3
    /// refuses 1.2.
    @Test func testTLS11IsRefusedAtTheDefaultMinimum() throws {
        let c = Self.certificates
        let old = ["--max-version", "1.1", "--seclevel0"]
        let port = TestEnvironment.freePort()
        let control = Process()
        control.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        control.arguments = [
            "s_server", "-accept", "127.0.0.1:\(port)", "-cert", c.serverCert, "-key", c.serverKey, "-tls1_1",
            "-cipher", "DEFAULT:@SECLEVEL=0", "-quiet",
        ]
        control.standardInput = Pipe()
        control.standardOutput = FileHandle.nullDevice
        control.standardError = FileHandle.nullDevice
        try control.run()
        defer { terminateAndWait(control) }
        var speaks11: TLSDeviceRun? = nil
        try waitFor(timeout: 10, "openssl s_server answers") {
            speaks11 = try TLSDeviceRun(port: port, options: old)
            return speaks11?.status == 0
        }
        #expect(speaks11?.handshake?["version"] == "TLSv1.1", "the client speaks TLS 1.1: \(String(describing: speaks11))")

        let server = try Self.server()
        let refused = try TLSDeviceRun(port: server.tlsPort, options: old)
        #expect(refused.status == 1 && refused.handshake == nil, "\(refused)")
        #expect(refused.errors.contains("handshake failed") && refused.errors.contains("ALERT_PROTOCOL_VERSION"), "\(refused.errors)")
        let failed = try server.waitForLog(event: "tls.handshake_failed", timeout: 5)
        #expect((failed["error"] as? String ?? "").contains("UNSUPPORTED_PROTOCOL"), "\(failed)")
        #expect(!(failed["error"] as? String ?? "").contains(" at /"), "no build paths: \(failed)")
        for (version, label) in [("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")] {
            let run = try TLSDeviceRun(port: server.tlsPort, options: ["--max-version", version], frames: [Self.login])
            #expect(run.status == 0 && run.handshake?["version"] == label && run.answers == ["reply 01"], "\(run)")
        }
        try waitFor(timeout: 5, "the sessions ended") { try server.scrape().value("teltonika_tls_connections_active") == 0 }
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_tls_handshakes_total{result="failed",version="unknown"}"#) == 1)
        #expect(try scrape.value(#"teltonika_tls_handshakes_total{result="ok",version="tls1.2"}"#) == 1)
        #expect(try scrape.value(#"teltonika_tls_handshakes_total{result="ok",version="tls1.3"}"#) == 1)
        #expect(try scrape.value(#"teltonika_disconnects_total{reason="tls_handshake_failed"}"#) == 1)

        let strict = try Self.server(environment: ["TLS_MIN_VERSION": "1.3"])
        let tls12 = try TLSDeviceRun(port: strict.tlsPort, options: ["--max-version", "1.2"])
        #expect(tls12.status == 1 && tls12.errors.contains("ALERT_PROTOCOL_VERSION"), "\(tls12)")
        let tls13 = try TLSDeviceRun(port: strict.tlsPort, options: ["--max-version", "1.3"], frames: [Self.login])
        #expect(tls13.status == 0 && tls13.answers == ["reply 01"], "\(tls13)")
    }

    /// (3) Mutual TLS (TLS_CLIENT_CA_FILE): no client certificate, or one from another CA, is refused (and
    /// logged and counted); one signed by the CA logs in and gets its ACK.
    @Test func testMutualTLSRequiresACertificateFromTheClientCA() throws {
        let c = Self.certificates
        let stranger = try c.makeCertificate(name: "stranger", purpose: .client, byOtherCA: true)
        let server = try Self.server(environment: ["TLS_CLIENT_CA_FILE": c.caFile])
        let listening = try server.waitForLog(event: "server.tls_listening", timeout: 1)
        #expect(listening["client_certificates"] as? String == "required")
        let frames = [Self.login, Self.packet.hex]

        let anonymous = try TLSDeviceRun(port: server.tlsPort, frames: frames)
        #expect(anonymous.status == 1 && anonymous.errors.contains("CERTIFICATE_REQUIRED"), "\(anonymous)")
        #expect(!anonymous.answers.contains { $0.hasPrefix("reply") }, "no login without a certificate: \(anonymous)")
        let foreign = try TLSDeviceRun(port: server.tlsPort, options: ["--cert", stranger.cert, "--key", stranger.key], frames: frames)
        #expect(foreign.status == 1 && foreign.errors.contains("UNKNOWN_CA"), "\(foreign)")
        let device = try TLSDeviceRun(port: server.tlsPort, options: ["--cert", c.clientCert, "--key", c.clientKey], frames: frames)
        #expect(device.status == 0 && device.answers == ["reply 01", "reply 00000001"], "\(device)")

        try waitFor(timeout: 5, "every session ended") { try server.scrape().value("teltonika_tls_connections_active") == 0 }
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_tls_handshakes_total{result="failed",version="unknown"}"#) == 2)
        #expect(try scrape.value(#"teltonika_tls_handshakes_total{result="ok",version="tls1.3"}"#) == 1)
        #expect(try scrape.value("teltonika_acks_total") == 1)
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == 1)
        // Two refusals within 10 s: one line, the next one would carry suppressed=1.
        #expect(server.logCount(event: "tls.handshake_failed") == 1)
    }

    /// (3b) `TLS_CLIENT_CERT_IMEI=on`: a device logs in only with the IMEI its certificate names as subject CN.
    /// Its own certificate logs in and is ACKed; a certificate of another IMEI, or one named otherwise, from the
    /// same CA, is answered `00` and closed (counted and logged as a certificate mismatch, not an unknown
    /// device); the allowlist-free default would have let both in (test (3)).
    @Test func testClientCertificateIMEIBindsTheLogin() throws {
        let c = Self.certificates
        let imei = DeviceServerTests.imei
        let other = "352093081234567"
        let own = try c.makeCertificate(name: imei, purpose: .client)
        let someoneElse = try c.makeCertificate(name: other, purpose: .client)
        let server = try Self.server(environment: ["TLS_CLIENT_CA_FILE": c.caFile, "TLS_CLIENT_CERT_IMEI": "on"])
        let listening = try server.waitForLog(event: "server.tls_listening", timeout: 1)
        #expect(listening["certificate_imei"] as? String == "on")
        let frames = [Self.login, Self.packet.hex]

        let impostor = try TLSDeviceRun(
            port: server.tlsPort,
            options: ["--cert", someoneElse.cert, "--key", someoneElse.key],
            frames: frames
        )
        #expect(impostor.answers.first == "reply 00", "another IMEI's certificate is refused at login: \(impostor)")
        #expect(!impostor.answers.contains { $0.hasPrefix("reply 0000") }, "and its packet never ACKed: \(impostor)")
        let unnamed = try TLSDeviceRun(port: server.tlsPort, options: ["--cert", c.clientCert, "--key", c.clientKey], frames: frames)
        #expect(unnamed.answers.first == "reply 00", "a certificate not named after an IMEI is refused: \(unnamed)")
        let device = try TLSDeviceRun(port: server.tlsPort, options: ["--cert", own.cert, "--key", own.key], frames: frames)
        #expect(device.status == 0 && device.answers == ["reply 01", "reply 00000001"], "\(device)")

        try waitFor(timeout: 5, "every session ended") { try server.scrape().value("teltonika_tls_connections_active") == 0 }
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_handshake_total{result="certificate_mismatch"}"#) == 2)
        #expect(try scrape.value(#"teltonika_handshake_total{result="unknown_device"}"#) == 0)
        #expect(try scrape.value(#"teltonika_handshake_total{result="accepted"}"#) == 1)
        #expect(try scrape.value(#"teltonika_disconnects_total{reason="login_rejected"}"#) == 2)
        #expect(try scrape.value("teltonika_acks_total") == 1)
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == 1)
        // Two refusals within 10 s: one line, naming the first one's IMEI and certificate.
        #expect(server.logCount(event: "device.certificate_mismatch") == 1)
        let line = try server.waitForLog(event: "device.certificate_mismatch", timeout: 1)
        #expect(line["imei"] as? String == imei && line["certificate_name"] as? String == other, "\(line)")
    }

    /// (4) SIGHUP: a new handshake sees the new certificate while a session opened before keeps being
    /// ACKed on the same connection; a bad file then keeps the certificate in force (`tls.reload_failed`).
    @Test func testSighupServesTheNewCertificateToNewHandshakesOnly() throws {
        let c = Self.certificates
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("device-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (certFile, keyFile) = (directory + "/tls.pem", directory + "/tls.key")
        try FileManager.default.copyItem(atPath: c.serverCert, toPath: certFile)
        try FileManager.default.copyItem(atPath: c.serverKey, toPath: keyFile)
        let server = try Self.server(cert: certFile, key: keyFile)
        let first = try certificateSerial(c.serverCert)
        #expect(normalizedSerial(try TLSDeviceRun(port: server.tlsPort).handshake?["serial"] ?? "") == first)

        // A session logged in before the reload.
        let relay = try TLSRelay(tlsPort: server.tlsPort)
        let session = try DeviceClient(port: relay.port)
        #expect(try session.login(DeviceServerTests.imei))
        try session.send(Self.packet.bytes)
        #expect(session.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]))

        // The new certificate (30 days, a serial of its own), its CA after it.
        let next = try c.makeCertificate(name: "rotated-\(UUID().uuidString.prefix(8))", purpose: .server, days: 30)
        try String(contentsOfFile: try Self.chainFile(next.cert), encoding: .utf8).write(
            toFile: certFile,
            atomically: true,
            encoding: .utf8
        )
        try String(contentsOfFile: next.key, encoding: .utf8).write(toFile: keyFile, atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        let reloaded = try server.waitForLog(event: "tls.reloaded", timeout: 5)
        let second = try certificateSerial(next.cert)
        #expect(second != first)
        #expect(normalizedSerial(reloaded["certificate_serial"] as? String ?? "") == second)
        try server.waitForLog(event: "config.reloaded", timeout: 1)  // what SIGHUP did before goes on
        #expect(normalizedSerial(try TLSDeviceRun(port: server.tlsPort).handshake?["serial"] ?? "") == second)
        try session.send(Self.packet.bytes)
        #expect(session.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]), "the session opened before the reload goes on")
        var scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_tls_reloads_total{result="ok"}"#) == 1)
        let notAfter = try scrape.value("teltonika_tls_certificate_expiry_timestamp_seconds")
        #expect(abs(notAfter - (Date().timeIntervalSince1970 + 30 * 86_400)) < 600, "the new leaf's notAfter: \(notAfter)")

        // A bad certificate file: the reload fails, the certificate in force stays.
        try "not a certificate\n".write(toFile: certFile, atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        let failed = try server.waitForLog(event: "tls.reload_failed", timeout: 5)
        #expect((failed["error"] as? String ?? "").hasPrefix("TLS_CERT_FILE: "), "\(failed)")
        #expect(normalizedSerial(failed["certificate_serial"] as? String ?? "") == second)
        #expect(normalizedSerial(try TLSDeviceRun(port: server.tlsPort).handshake?["serial"] ?? "") == second)
        try session.send(Self.packet.bytes)
        #expect(session.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]))
        scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_tls_reloads_total{result="failed"}"#) == 1)
        #expect(try scrape.value("teltonika_tls_certificate_expiry_timestamp_seconds") == notAfter)
        #expect(relay.connections.count == 1, "one TLS connection carried the session throughout")
        #expect(server.process.isRunning)
    }

    /// (5) HANDSHAKE_TIMEOUT_MS bounds the TLS handshake as well as the login: a client that sends nothing,
    /// one that sends half a ClientHello and one that completes TLS but never logs in are each closed then.
    @Test func testAHandshakeThatNeverCompletesIsClosedAtTheHandshakeTimeout() throws {
        let server = try Self.server(environment: ["HANDSHAKE_TIMEOUT_MS": "500"])
        // A TLS record header and the start of a ClientHello (type 1, TLS 1.2, part of the random): half of one.
        let halfHello: [UInt8] = [0x16, 0x03, 0x01, 0x00, 0xC8, 0x01, 0x00, 0x00, 0xC4, 0x03, 0x03] + Array(repeating: 0x5A, count: 20)
        for bytes in [[], halfHello] {
            let client = try DeviceClient(port: server.tlsPort)
            let connected = Date()
            if !bytes.isEmpty { try client.send(bytes) }
            #expect(client.receive(1, timeout: 5) == .closed([]), "\(bytes.count) bytes sent")
            let waited = Date().timeIntervalSince(connected)
            #expect(waited >= 0.45 && waited < 1.5, "closed after \(waited) s with HANDSHAKE_TIMEOUT_MS 500 (\(bytes.count) bytes sent)")
        }
        let started = Date()
        // No frames: the script waits (up to 1 s) for what the server does, which is to close it.
        let silent = try TLSDeviceRun(port: server.tlsPort)
        #expect(silent.status == 0 && silent.handshake != nil && silent.answers == ["closed "], "\(silent)")
        try waitFor(timeout: 5, "the logged-out TLS session is closed") { server.logCount(event: "device.handshake_timeout") == 3 }
        #expect(Date().timeIntervalSince(started) < 3)
        try waitFor(timeout: 5, "every session ended") { try server.scrape().value("teltonika_tls_connections_active") == 0 }
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_handshake_total{result="timeout"}"#) == 3)
        #expect(try scrape.value(#"teltonika_disconnects_total{reason="handshake_timeout"}"#) == 3)
        #expect(try scrape.value(#"teltonika_tls_handshakes_total{result="failed",version="unknown"}"#) == 2)
        #expect(try scrape.value(#"teltonika_tls_handshakes_total{result="ok",version="tls1.3"}"#) == 1)
    }

    /// (6) Each TLS setting that cannot work stops the process at start with exit 2 and a message naming it.
    @Test(arguments: [
        (["TLS_PORT": "0"], "TLS_CERT_FILE", "is required"),
        (["TLS_PORT": "0", "TLS_CERT_FILE": "$CERT"], "TLS_KEY_FILE", "is required"),
        (["TLS_CERT_FILE": "$CERT", "TLS_KEY_FILE": "$KEY"], "TLS_CERT_FILE", "TLS_PORT is not"),
        (["TLS_PORT": "0", "TLS_CERT_FILE": "/nonexistent/cert.pem", "TLS_KEY_FILE": "$KEY"], "TLS_CERT_FILE", "No such file"),
        (["TLS_PORT": "0", "TLS_CERT_FILE": "$KEY", "TLS_KEY_FILE": "$KEY"], "TLS_CERT_FILE", "no PEM certificate"),
        (["TLS_PORT": "0", "TLS_CERT_FILE": "$CERT", "TLS_KEY_FILE": "$CERT"], "TLS_KEY_FILE", "no PEM private key"),
        (["TLS_PORT": "0", "TLS_CERT_FILE": "$CERT", "TLS_KEY_FILE": "$OTHERKEY"], "TLS_KEY_FILE", "does not fit"),
        (
            ["TLS_PORT": "0", "TLS_CERT_FILE": "$CERT", "TLS_KEY_FILE": "$KEY", "TLS_CLIENT_CA_FILE": "$KEY"], "TLS_CLIENT_CA_FILE",
            "no PEM"
        ),
        (["TLS_PORT": "0", "TLS_CERT_FILE": "$CERT", "TLS_KEY_FILE": "$KEY", "TLS_MIN_VERSION": "1.1"], "TLS_MIN_VERSION", "1.2 or 1.3"),
        (
            ["TLS_PORT": "0", "TLS_CERT_FILE": "$CERT", "TLS_KEY_FILE": "$KEY", "TLS_CLIENT_CERT_IMEI": "on"], "TLS_CLIENT_CERT_IMEI",
            "TLS_CLIENT_CA_FILE is not set"
        ),
        (["TLS_CLIENT_CERT_IMEI": "on"], "TLS_CLIENT_CERT_IMEI", "TLS_PORT is not"),
        (["TLS_CLIENT_CERT_IMEI": "yes"], "TLS_CLIENT_CERT_IMEI", "on or off"),
        (["TELTONIKA_PORT": "5999", "TLS_PORT": "5999", "TLS_CERT_FILE": "$CERT", "TLS_KEY_FILE": "$KEY"], "TLS_PORT", "TELTONIKA_PORT"),
    ])
    func testConfigurationErrorsExitTwoNamingTheSetting(_ settings: [String: String], _ key: String, _ reason: String) throws {
        let c = Self.certificates
        let files = ["$CERT": c.serverCert, "$KEY": c.serverKey, "$OTHERKEY": c.clientKey]
        let environment = settings.mapValues { files[$0] ?? $0 }
        let server = try ServerProcess(environment: environment, waitUntilListening: false)
        let exit = try #require(server.waitForExit(timeout: 20), "\(settings) must stop the process")
        #expect(exit.status == 2 && !exit.bySignal, "exit \(exit) for \(settings)")
        let text = server.stderrLines.joined(separator: "\n")
        #expect(text.contains("invalid setting \(key): ") && text.contains(reason), "\(settings): \(text)")
        #expect(server.logCount(event: "server.listening") == 0)
    }
}
