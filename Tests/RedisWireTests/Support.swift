import FixtureSupport
import RedisWire

#if canImport(Glibc)
import Glibc
#endif

/// One set of test certificates for the whole run (made on first use, deleted at exit).
var sharedCertificates: TestCertificates { .shared }

/// A TLS server for `certificates` (the valid server certificate unless told otherwise).
func startServer(
    cert: String = sharedCertificates.serverCert,
    key: String = sharedCertificates.serverKey,
    authClients: Bool = false,
    password: String? = nil,
    plainPort: Bool = false
) throws -> TLSRedisServer {
    try TLSRedisServer(
        certFile: cert,
        keyFile: key,
        caFile: sharedCertificates.caFile,
        authClients: authClients,
        password: password,
        plainPort: plainPort
    )
}

/// A context that trusts the test CA.
func testContext(_ options: RedisTLSOptions = RedisTLSOptions(caFile: sharedCertificates.caFile)) throws -> RedisTLSContext {
    try RedisTLSContext(options: options)
}

/// What connecting did, and how long it took.
func connectFailure(
    _ url: RedisURL,
    timeoutMs: Int = 2000,
    tls: RedisTLSContext?
) -> (failure: RedisConnection.Failure?, elapsed: Duration) {
    let clock = ContinuousClock()
    let start = clock.now
    do {
        _ = try RedisConnection(url: url, timeoutMs: timeoutMs, tls: tls)
        return (nil, clock.now - start)
    } catch {
        return (error, clock.now - start)
    }
}

/// A TCP listener on 127.0.0.1 that never accepts: connects complete (the kernel's backlog) and then nothing
/// is ever said.
final class SilentListener {
    let port: Int
    private let fd: Int32

    init() throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let fd = fd
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 8) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok else { throw TLSRedisServerError(description: "cannot listen: errno \(errno)") }
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    deinit {
        close(fd)
    }
}
