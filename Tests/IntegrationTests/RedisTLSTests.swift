import Codec8
import FixtureSupport
import Foundation
import RedisWire
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real binary to a TLS `redis-server` (`rediss://`), with a CA made by the test's own `openssl`.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct RedisTLSTests {
    static var certificates: TestCertificates { .shared }

    static func redis(cert: String? = nil, key: String? = nil, authClients: Bool = false) throws -> TLSRedisServer {
        try TLSRedisServer(
            certFile: cert ?? certificates.serverCert,
            keyFile: key ?? certificates.serverKey,
            caFile: certificates.caFile,
            authClients: authClients
        )
    }

    /// A client for checks that trusts the test CA.
    static func client(_ redis: TLSRedisServer, withCertificate: Bool = false) throws -> RedisClient {
        let c = certificates
        let options =
            withCertificate
            ? RedisTLSOptions(caFile: c.caFile, certFile: c.clientCert, keyFile: c.clientKey) : RedisTLSOptions(caFile: c.caFile)
        return try RedisClient(url: "rediss://127.0.0.1:\(redis.tlsPort)", tls: RedisTLSContext(options: options))
    }

    /// The whole telemetry path over TLS: every fixture's answer, every record and device message stored.
    @Test func testEveryFixtureOverRediss() throws {
        let redis = try Self.redis()
        let server = try ServerProcess(
            redisURL: "rediss://127.0.0.1:\(redis.tlsPort)",
            environment: ["REDIS_TLS_CA_FILE": Self.certificates.caFile]
        )
        try DeviceServerTests.expectEveryFixtureAnswered(by: server, style: "whole", redis: Self.client(redis))
        #expect(try server.scrape().value(#"teltonika_redis_errors_total{kind="tls"}"#) == 0)
    }

    /// Each certificate problem refuses the connection with OpenSSL's reason in `redis.connect_failed`,
    /// counts `kind="tls"`, and no packet is ACKed (the device is closed at PUBLISH_TIMEOUT_MS).
    @Test(arguments: [
        ("wrong CA", "certificate verification: self-signed certificate in certificate chain"),
        ("expired", "certificate verification: certificate has expired"),
        ("wrong host", "certificate verification: IP address mismatch"),
        ("wrong server name", "certificate verification: hostname mismatch"),
    ])
    func testABadCertificateIsRefusedWithItsReason(_ problem: String, _ reason: String) throws {
        let c = Self.certificates
        let redis =
            switch problem {
            case "expired": try Self.redis(cert: c.expiredCert, key: c.expiredKey)
            case "wrong host": try Self.redis(cert: c.wrongNameCert, key: c.wrongNameKey)
            default: try Self.redis()
            }
        var environment = ["REDIS_TLS_CA_FILE": problem == "wrong CA" ? c.otherCAFile : c.caFile, "PUBLISH_TIMEOUT_MS": "1000"]
        if problem == "wrong server name" { environment["REDIS_TLS_SERVER_NAME"] = "wrong.example" }
        let server = try ServerProcess(redisURL: "rediss://127.0.0.1:\(redis.tlsPort)", environment: environment)
        let failed = try server.waitForLog(event: "redis.connect_failed", timeout: 10)
        let error = failed["error"] as? String ?? ""
        #expect(error.hasPrefix("tls: ") && error.contains(reason), "\(problem): \(error)")
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(DeviceServerTests.imei))
        try device.send(TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes)
        #expect(device.receive(4, timeout: 10) == .closed([]), "\(problem): never ACKed")
        let scrape = try server.scrape()
        #expect(try scrape.value(#"teltonika_redis_errors_total{kind="tls"}"#) >= 1)
        #expect(try scrape.value("teltonika_redis_up") == 0)
        #expect(try scrape.value("teltonika_acks_total") == 0)
        #expect(try server.http("/readyz").status == 503)
    }

    /// Sentinel over TLS: the Sentinel is given as `rediss://` and names a TLS-only primary; the server
    /// asks it, connects to the primary over TLS, and the packet is ACKed.
    @Test func testASentinelOverTLSNamesATLSPrimary() throws {
        let c = Self.certificates
        let primary = try Self.redis()
        let sentinel = try TLSRedisServer(
            certFile: c.serverCert,
            keyFile: c.serverKey,
            caFile: c.caFile,
            sentinel: "sentinel monitor tlsmaster 127.0.0.1 \(primary.tlsPort) 1\n"
        )
        let server = try ServerProcess(
            redisURL: "rediss://127.0.0.1:1",  // TLS and credentials for the primary; its address is Sentinel's
            environment: [
                "REDIS_SENTINELS": "rediss://127.0.0.1:\(sentinel.tlsPort)", "REDIS_MASTER_NAME": "tlsmaster",
                "REDIS_TLS_CA_FILE": c.caFile,
            ]
        )
        let device = try DeviceClient(port: server.port)
        #expect(try device.login(DeviceServerTests.imei))
        try device.send(TestEnvironment.fixtures.first { $0.id == "w-c8-3" }!.bytes)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 2]))
        let connected = try server.waitForLog(event: "redis.connected", timeout: 1)
        #expect(connected["endpoint"] as? String == "127.0.0.1:\(primary.tlsPort)")
        #expect(try Self.client(primary).xlen(server.stream) == 2)
    }

    /// `tls-auth-clients yes`: with REDIS_TLS_CERT_FILE/KEY_FILE the packet is ACKed; without, Redis
    /// refuses the session and nothing is.
    @Test func testClientCertificateAuthentication() throws {
        let c = Self.certificates
        let redis = try Self.redis(authClients: true)
        let url = "rediss://127.0.0.1:\(redis.tlsPort)"
        let frame = TestEnvironment.fixtures.first { $0.id == "w-c8-1" }!.bytes

        let withCertificate = try ServerProcess(
            redisURL: url,
            environment: ["REDIS_TLS_CA_FILE": c.caFile, "REDIS_TLS_CERT_FILE": c.clientCert, "REDIS_TLS_KEY_FILE": c.clientKey]
        )
        let device = try DeviceClient(port: withCertificate.port)
        #expect(try device.login(DeviceServerTests.imei))
        try device.send(frame)
        #expect(device.receive(4, timeout: 10) == .bytes([0, 0, 0, 1]))

        let without = try ServerProcess(redisURL: url, environment: ["REDIS_TLS_CA_FILE": c.caFile, "PUBLISH_TIMEOUT_MS": "1000"])
        let failed = try without.waitForLog(event: "redis.connect_failed", timeout: 10)
        #expect((failed["error"] as? String ?? "").hasPrefix("tls: "), "\(failed)")
        let refused = try DeviceClient(port: without.port)
        #expect(try refused.login("356307042441014"))
        try refused.send(frame)
        #expect(refused.receive(4, timeout: 10) == .closed([]))
        let check = try Self.client(redis, withCertificate: true)
        #expect(try check.xlen(withCertificate.stream) == 1)
        #expect(try check.xlen(without.stream) == 0)
    }
}
