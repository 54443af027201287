/// Certificates for the TLS tests, made with the `openssl` command in a temporary folder.
import Foundation

/// Why the certificates could not be made: the `openssl` command that failed and what it printed.
public struct TestCertificatesError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) {
        self.description = description
    }
}

/// A test CA and the certificates signed by it (P-256 keys, PEM files), plus a second CA that signed none of
/// them. Every server certificate but `wrongName` names `127.0.0.1`, `::1` and `localhost`.
public struct TestCertificates: Sendable {
    /// The folder holding every file.
    public let directory: String
    /// The CA that signed the server and client certificates.
    public var caFile: String { path("ca.pem") }
    /// Valid for two days: IP SANs 127.0.0.1 and ::1, DNS SAN localhost.
    public var serverCert: String { path("server.pem") }
    public var serverKey: String { path("server.key") }
    /// The same names as `serverCert`, valid only in January 2020.
    public var expiredCert: String { path("expired.pem") }
    public var expiredKey: String { path("expired.key") }
    /// Valid, but only for `wrong.example`.
    public var wrongNameCert: String { path("wrong-name.pem") }
    public var wrongNameKey: String { path("wrong-name.key") }
    /// A CA that signed nothing here.
    public var otherCAFile: String { path("other-ca.pem") }
    /// A client certificate (`CN=redis-client`, clientAuth) signed by the CA.
    public var clientCert: String { path("client.pem") }
    public var clientKey: String { path("client.key") }

    private func path(_ name: String) -> String { directory + "/" + name }

    /// One set for the whole test run, made on first use and deleted at exit: what the TLS suites share.
    public static let shared: TestCertificates = {
        do {
            let certificates = try TestCertificates.make()
            atexit { TestCertificates.shared.remove() }
            return certificates
        } catch {
            fatalError("cannot make the test certificates: \(error)")
        }
    }()

    /// Makes every file in a new temporary folder (about 20 `openssl` runs).
    public static func make() throws -> TestCertificates {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("redis-tls-certificates-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let certificates = TestCertificates(directory: directory)
        try certificates.makeCA(name: "ca", subject: "/CN=RedisWire Test CA")
        try certificates.makeCA(name: "other-ca", subject: "/CN=RedisWire Other CA")
        // `openssl ca` (not `x509 -req`): OpenSSL 3.0's x509 cannot set a start date, and an expired certificate
        // needs one in the past.
        try Data().write(to: URL(fileURLWithPath: certificates.path("index.txt")))
        try Data("01\n".utf8).write(to: URL(fileURLWithPath: certificates.path("serial")))
        try Data(certificates.caConfiguration.utf8).write(to: URL(fileURLWithPath: certificates.path("ca.cnf")))
        let today = ["-days", "2"]
        let january2020 = ["-startdate", "20200101000000Z", "-enddate", "20200201000000Z"]
        try certificates.makeSigned(name: "server", subject: "/CN=localhost", extensions: "server", dates: today)
        try certificates.makeSigned(name: "expired", subject: "/CN=localhost", extensions: "server", dates: january2020)
        try certificates.makeSigned(name: "wrong-name", subject: "/CN=wrong.example", extensions: "wrong_name", dates: today)
        try certificates.makeSigned(name: "client", subject: "/CN=redis-client", extensions: "client", dates: today)
        return certificates
    }

    /// What a further certificate is for: a server (the names of `serverCert`) or a client (clientAuth).
    public enum Purpose: String, Sendable {
        case server
        case client
    }

    /// One more certificate with a key and a serial number of its own (`openssl ca` counts them up), signed by
    /// the CA or, with `byOtherCA`, by the CA that signed nothing else; valid from now for `days` days.
    public func makeCertificate(name: String, purpose: Purpose, days: Int = 2, byOtherCA: Bool = false) throws -> (
        cert: String, key: String
    ) {
        let subject = purpose == .server ? "/CN=localhost" : "/CN=\(name)"
        let ca = byOtherCA ? "other-ca" : "ca"
        try makeSigned(name: name, subject: subject, extensions: purpose.rawValue, dates: ["-days", "\(days)"], ca: ca)
        return (path("\(name).pem"), path("\(name).key"))
    }

    /// Deletes the folder.
    public func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private var caConfiguration: String {
        """
        [ ca ]
        default_ca = test_ca
        [ test_ca ]
        database = \(path("index.txt"))
        new_certs_dir = \(directory)
        serial = \(path("serial"))
        default_md = sha256
        policy = any_name
        unique_subject = no
        [ any_name ]
        commonName = supplied
        [ server ]
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = serverAuth
        subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
        [ wrong_name ]
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = serverAuth
        subjectAltName = DNS:wrong.example
        [ client ]
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = clientAuth

        """
    }

    private func makeCA(name: String, subject: String) throws {
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", path("\(name).key")]
        let extensions = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
        try TestCertificates.openssl(
            ["req", "-x509", "-new"] + key + ["-out", path("\(name).pem"), "-subj", subject, "-days", "2"] + extensions
        )
    }

    private func makeSigned(name: String, subject: String, extensions: String, dates: [String], ca: String = "ca") throws {
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", path("\(name).key")]
        try TestCertificates.openssl(["req", "-new"] + key + ["-out", path("\(name).csr"), "-subj", subject])
        try TestCertificates.openssl(
            ["ca", "-batch", "-notext", "-config", path("ca.cnf"), "-cert", path("\(ca).pem"), "-keyfile", path("\(ca).key")]
                + ["-in", path("\(name).csr"), "-out", path("\(name).pem"), "-extensions", extensions] + dates
        )
    }

    private static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        // openssl prints a few lines at most: the pipe cannot fill before it exits.
        let printed = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestCertificatesError(
                description: "openssl \(arguments.joined(separator: " ")) exited \(process.terminationStatus): "
                    + String(decoding: printed, as: UTF8.self)
            )
        }
    }
}
