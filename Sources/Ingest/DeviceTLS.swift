/// TLS for device connections: the settings, the credentials read from PEM files, and the context every new
/// handshake takes (replaced whole on SIGHUP; a bad file keeps the one in force).
import COpenSSL
import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// The TLS listener's settings (`TLS_*`): where it listens and what it serves and requires.
public struct DeviceTLSOptions: Sendable, Equatable {
    /// The oldest protocol version accepted (`TLS_MIN_VERSION`).
    public enum Version: String, Sendable {
        case tls12 = "1.2"
        case tls13 = "1.3"
    }

    /// nil: no TLS listener; 0: any free port (logged in `server.tls_listening`).
    public var port: Int? = nil
    /// PEM certificate served to devices, followed by its intermediate CAs if any.
    public var certFile: String? = nil
    /// PEM private key of `certFile` (not encrypted).
    public var keyFile: String? = nil
    /// PEM CA certificates: set, a device must present a certificate signed by one of them (mutual TLS).
    public var clientCAFile: String? = nil
    /// On: a device logs in only with the IMEI its client certificate names in its subject's one common name
    /// (`TLS_CLIENT_CERT_IMEI`). Needs `clientCAFile`.
    public var clientCertIMEI = false
    public var minimumVersion = Version.tls12

    public init() {}

    /// The TLS files without a listener would be silently unused (an operator who thinks devices use TLS when
    /// they do not); a listener without a certificate or key cannot start; one port cannot be both.
    func validate(tcpPort: Int) throws(ConfigurationError) {
        guard let port else {
            let given = [("TLS_CERT_FILE", certFile), ("TLS_KEY_FILE", keyFile), ("TLS_CLIENT_CA_FILE", clientCAFile)]
            if let (key, _) = given.first(where: { $0.1 != nil }) {
                throw ConfigurationError(key: key, message: "is set, but TLS_PORT is not: no TLS listener would use it")
            }
            if clientCertIMEI {
                throw ConfigurationError(key: "TLS_CLIENT_CERT_IMEI", message: "is on, but TLS_PORT is not: no TLS listener would use it")
            }
            return
        }
        if clientCertIMEI, clientCAFile == nil {
            throw ConfigurationError(
                key: "TLS_CLIENT_CERT_IMEI",
                message: "is on, but TLS_CLIENT_CA_FILE is not set: without client certificates there is no name to match"
            )
        }
        if certFile == nil { throw ConfigurationError(key: "TLS_CERT_FILE", message: "is required with TLS_PORT") }
        if keyFile == nil { throw ConfigurationError(key: "TLS_KEY_FILE", message: "is required with TLS_PORT") }
        if port != 0, port == tcpPort {
            throw ConfigurationError(key: "TLS_PORT", message: "\(port) is TELTONIKA_PORT too: TCP and TLS need ports of their own")
        }
    }
}

/// What the TLS port serves now: the context for new handshakes, and the served certificate's facts.
struct DeviceTLSCredentials: Sendable {
    let context: NIOSSLContext
    /// The leaf certificate's notAfter, UNIX seconds.
    let notAfter: Int64
    /// The leaf certificate's serial number, in hex.
    let serial: String
}

/// The TLS context of the device port. Every new connection takes the context in force when it is
/// accepted; ``reload()`` (SIGHUP) reads the files again and swaps the whole context, so handshakes after it
/// see the new certificate while open sessions keep theirs. A file that cannot be used changes nothing.
public final class DeviceTLSContext: Sendable {
    public let options: DeviceTLSOptions
    private let loaded: NIOLockedValueBox<DeviceTLSCredentials>

    /// Reads and checks every file; the error names the setting at fault (exit 2 at start).
    public init(options: DeviceTLSOptions) throws(ConfigurationError) {
        self.options = options
        loaded = NIOLockedValueBox(try Self.load(options))
    }

    /// The credentials in force.
    var current: DeviceTLSCredentials { loaded.withLockedValue { $0 } }

    /// Reads the files again: the new credentials serve every later handshake, or, when a file cannot be
    /// used, the old ones stay (the error names the setting).
    func reload() -> Result<DeviceTLSCredentials, ConfigurationError> {
        do throws(ConfigurationError) {
            let next = try Self.load(options)
            loaded.withLockedValue { $0 = next }
            return .success(next)
        } catch {
            return .failure(error)
        }
    }

    /// How long a closing TLS session waits for the device's close_notify. The session reads nothing once it
    /// closes, so the answer could only end the wait early: keep the slot's hold short.
    static let shutdownTimeout = TimeAmount.seconds(1)

    private static func load(_ options: DeviceTLSOptions) throws(ConfigurationError) -> DeviceTLSCredentials {
        guard let certFile = options.certFile, let keyFile = options.keyFile else {
            preconditionFailure("DeviceTLSOptions.validate lets no TLS listener start without a certificate and key")
        }
        let chain = try certificates(in: certFile, key: "TLS_CERT_FILE")
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(bytes: try pemBytes(keyFile, key: "TLS_KEY_FILE"), format: .pem)
        } catch let error as ConfigurationError {
            throw error
        } catch {
            throw ConfigurationError(
                key: "TLS_KEY_FILE",
                message: "'\(keyFile)' holds no PEM private key (encrypted keys are not supported): \(error)"
            )
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(key)
        )
        configuration.minimumTLSVersion = options.minimumVersion == .tls13 ? .tlsv13 : .tlsv12
        configuration.shutdownTimeout = shutdownTimeout
        if let caFile = options.clientCAFile {
            configuration.trustRoots = .certificates(try certificates(in: caFile, key: "TLS_CLIENT_CA_FILE"))
            configuration.certificateVerification = .noHostnameVerification
            // The CA names go in the CertificateRequest, so a client holding several certificates picks the right one.
            configuration.sendCANameList = true
        }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            // The files parsed, so what is left to refuse is the pair: a key of another certificate.
            throw ConfigurationError(key: "TLS_KEY_FILE", message: "'\(keyFile)' does not fit '\(certFile)': \(error)")
        }
        let leaf = chain[0]
        return DeviceTLSCredentials(
            context: context,
            notAfter: Int64(leaf.notValidAfter),
            serial: leaf.serialNumber.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        )
    }

    /// Every certificate of a PEM file (at least one), the first being the one that counts.
    private static func certificates(in path: String, key: String) throws(ConfigurationError) -> [NIOSSLCertificate] {
        let bytes = try pemBytes(path, key: key)
        guard let certificates = try? NIOSSLCertificate.fromPEMBytes(bytes), !certificates.isEmpty else {
            throw ConfigurationError(key: key, message: "'\(path)' holds no PEM certificate")
        }
        return certificates
    }

    /// A PEM file's bytes; a file that cannot be read is an error with the system's reason. At most 1 MiB: a
    /// certificate chain or key is a few KiB, so anything larger is not one.
    private static func pemBytes(_ path: String, key: String) throws(ConfigurationError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw ConfigurationError(key: key, message: "cannot read '\(path)': \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        let limit = 1 << 20
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while bytes.count <= limit {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else {
                throw ConfigurationError(key: key, message: "cannot read '\(path)': \(String(cString: strerror(errno)))")
            }
            if n == 0 { return bytes }
            bytes += chunk[0..<n]
        }
        throw ConfigurationError(key: key, message: "'\(path)' is larger than 1 MiB: not a PEM certificate or key")
    }
}

extension IngestConfiguration {
    /// The device TLS context (nil without `TLS_PORT`), built once at start: an unreadable or invalid
    /// certificate, key or client CA is an error naming its setting (exit 2).
    public func makeDeviceTLSContext() throws(ConfigurationError) -> DeviceTLSContext? {
        guard deviceTLS.port != nil else { return nil }
        return try DeviceTLSContext(options: deviceTLS)
    }
}

/// The one common name in the subject of `certificate`, as text; nil when it has none, several (which one
/// names the device would be a guess), or one that is not plain printable ASCII. Parsed from its DER by the
/// system OpenSSL (NIOSSL keeps its own reading of the name internal).
func certificateCommonName(_ certificate: NIOSSLCertificate) -> String? {
    guard let der = try? certificate.toDERBytes() else { return nil }
    return der.withUnsafeBufferPointer { bytes -> String? in
        var cursor: UnsafePointer<UInt8>? = bytes.baseAddress
        guard let x509 = d2i_X509(nil, &cursor, bytes.count) else { return nil }
        defer { X509_free(x509) }
        guard let subject = X509_get_subject_name(x509) else { return nil }
        let index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)
        guard index >= 0, X509_NAME_get_index_by_NID(subject, NID_commonName, index) < 0,
            let entry = X509_NAME_get_entry(subject, index), let data = X509_NAME_ENTRY_get_data(entry),
            let start = ASN1_STRING_get0_data(data)
        else { return nil }
        let text = UnsafeBufferPointer(start: start, count: Int(ASN1_STRING_length(data)))
        guard text.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { return nil }
        return String(decoding: text, as: UTF8.self)
    }
}
