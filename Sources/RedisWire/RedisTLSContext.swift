/// The TLS settings for `rediss://`, and the one OpenSSL context built from them at startup.
import COpenSSL

/// Where the TLS trust and the client identity come from. Every field is optional: the defaults trust the
/// system's certificate store, send no client certificate and check the URL's host name.
public struct RedisTLSOptions: Sendable, Equatable {
    /// PEM file of the certificate authorities to trust; nil trusts the system store.
    public var caFile: String?
    /// PEM client certificate (chain), for a server with `tls-auth-clients yes`; needs `keyFile`.
    public var certFile: String?
    /// PEM private key of `certFile`.
    public var keyFile: String?
    /// The name to send (SNI) and to find in the server's certificate; nil uses the URL's host.
    public var serverName: String?

    public init(caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil, serverName: String? = nil) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
        self.serverName = serverName
    }
}

/// One OpenSSL `SSL_CTX` (TLS 1.2 at least, the server's certificate always verified), built once at startup
/// and shared by every connection. OpenSSL allows concurrent `SSL_new` on one context; nothing here changes it
/// after `init`.
public final class RedisTLSContext: @unchecked Sendable {
    /// Why the context could not be built, naming the input at fault.
    public struct SetupError: Error, Sendable, Equatable, CustomStringConvertible {
        /// The option at fault (`context` when OpenSSL itself failed).
        public enum Input: String, Sendable {
            case caFile
            case certFile
            case keyFile
            case context
        }

        public var input: Input
        /// The path and OpenSSL's reason.
        public var message: String

        public init(input: Input, message: String) {
            self.input = input
            self.message = message
        }
        public var description: String { "\(input.rawValue): \(message)" }
    }

    public let options: RedisTLSOptions
    /// The `SSL_CTX`; owned, freed in deinit.
    let context: OpaquePointer

    /// Loads the trust store and the client identity; throws on an unreadable or non-PEM file, a key that does
    /// not match its certificate, or a certificate without a key (and the reverse).
    public init(options: RedisTLSOptions) throws(SetupError) {
        ERR_clear_error()
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw SetupError(input: .context, message: "SSL_CTX_new failed: \(openSSLErrors())")
        }
        // From here a throw runs deinit, which frees the context.
        self.context = context
        self.options = options
        guard copenssl_ctx_set_min_proto_version(context, TLS1_2_VERSION) == 1 else {
            throw SetupError(input: .context, message: "cannot require TLS 1.2: \(openSSLErrors())")
        }
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        if let caFile = options.caFile {
            guard SSL_CTX_load_verify_locations(context, caFile, nil) == 1 else {
                throw SetupError(input: .caFile, message: "cannot load CA certificates from '\(caFile)': \(openSSLErrors())")
            }
        } else if SSL_CTX_set_default_verify_paths(context) != 1 {
            throw SetupError(input: .context, message: "cannot load the system trust store: \(openSSLErrors())")
        }
        switch (options.certFile, options.keyFile) {
        case (nil, nil):
            break
        case (let certFile?, nil):
            throw SetupError(input: .keyFile, message: "client certificate '\(certFile)' is set but no key file")
        case (nil, let keyFile?):
            throw SetupError(input: .certFile, message: "client key '\(keyFile)' is set but no certificate file")
        case (let certFile?, let keyFile?):
            guard SSL_CTX_use_certificate_chain_file(context, certFile) == 1 else {
                throw SetupError(input: .certFile, message: "cannot load client certificate '\(certFile)': \(openSSLErrors())")
            }
            guard SSL_CTX_use_PrivateKey_file(context, keyFile, SSL_FILETYPE_PEM) == 1 else {
                throw SetupError(input: .keyFile, message: "cannot load client key '\(keyFile)' (for '\(certFile)'): \(openSSLErrors())")
            }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw SetupError(input: .keyFile, message: "client key '\(keyFile)' does not match '\(certFile)': \(openSSLErrors())")
            }
        }
    }

    deinit {
        SSL_CTX_free(context)
    }

    /// The context `rediss://` uses when none is given: the system trust store, no client certificate. Built on
    /// first use.
    static let systemDefault = Result { () throws(SetupError) -> RedisTLSContext in try RedisTLSContext(options: RedisTLSOptions()) }
}

/// Empties this thread's OpenSSL error queue into one line (oldest first), as `ERR_error_string_n` writes each.
func openSSLErrors() -> String {
    var reasons: [String] = []
    while case let code = ERR_get_error(), code != 0 {
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    return reasons.isEmpty ? "no reason given by OpenSSL" : reasons.joined(separator: "; ")
}
