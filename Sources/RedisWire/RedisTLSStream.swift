/// `rediss://` on the wire: our own TCP socket, OpenSSL over memory BIOs, and hiredis' reply reader.
import CHiredis
import COpenSSL

#if canImport(Glibc)
import Glibc
#endif

/// One blocking TLS connection to Redis, behind ``RedisConnection``: `append` buffers commands and the next
/// `reply` sends them, as hiredis does. Owned by one thread.
///
/// OpenSSL reads and writes two memory BIOs and this class moves the ciphertext between them and the socket.
/// So every socket call is ours: a write to a closed peer uses `MSG_NOSIGNAL` (no `SIGPIPE`), a receive that
/// runs into `SO_RCVTIMEO` is a timeout, a zero-byte receive is the peer closing.
final class RedisTLSStream {
    typealias Failure = RedisConnection.Failure

    /// 16 KiB is one TLS record's plaintext; the ciphertext buffer takes a few records per system call.
    private static let plaintextCapacity = 16 * 1024
    private static let ciphertextCapacity = 64 * 1024

    /// The TCP socket (its `SO_RCVTIMEO` bounds every read).
    let fd: Int32
    private let ssl: OpaquePointer
    /// Ciphertext from the socket, for OpenSSL to read (owned by `ssl`).
    private let incoming: OpaquePointer
    /// Ciphertext OpenSSL wrote, for the socket (owned by `ssl`).
    private let outgoing: OpaquePointer
    /// hiredis' reply parser over the decrypted bytes.
    let reader: UnsafeMutablePointer<redisReader>
    private let plaintext: UnsafeMutableRawBufferPointer
    private let ciphertext: UnsafeMutableRawBufferPointer
    /// Commands appended since the last `reply`.
    private var pending: [UInt8] = []
    /// The first failure: every later call throws it again (the connection is unusable), and deinit skips the
    /// close_notify.
    private var failed: Failure?
    private var handshakeDone = false
    /// Whether any plaintext has come from the server yet.
    private var receivedData = false
    /// `host:port`, for messages.
    private let peer: String

    /// Connects (TCP within `timeoutMs`), then runs the TLS handshake with `SO_RCVTIMEO`/`SO_SNDTIMEO` set to
    /// `timeoutMs`, verifying the certificate against `options.serverName ?? host`. `timeoutMs` <= 0 waits
    /// without limit.
    init(host: String, port: Int, timeoutMs: Int, context: RedisTLSContext) throws(Failure) {
        peer = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let fd = try RedisTLSStream.connectTCP(host: host, port: port, timeoutMs: timeoutMs)
        ERR_clear_error()
        guard let ssl = SSL_new(context.context) else {
            close(fd)
            throw Failure(kind: .tls, message: "SSL_new failed: \(openSSLErrors())")
        }
        guard let incoming = BIO_new(BIO_s_mem()), let outgoing = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            close(fd)
            throw Failure(kind: .tls, message: "BIO_new failed: \(openSSLErrors())")
        }
        SSL_set_bio(ssl, incoming, outgoing)
        guard let reader = redisReaderCreate() else {
            SSL_free(ssl)
            close(fd)
            throw Failure(kind: .connect, message: "out of memory")
        }
        self.fd = fd
        self.ssl = ssl
        self.incoming = incoming
        self.outgoing = outgoing
        self.reader = reader
        plaintext = .allocate(byteCount: RedisTLSStream.plaintextCapacity, alignment: 1)
        ciphertext = .allocate(byteCount: RedisTLSStream.ciphertextCapacity, alignment: 1)
        // From here a throw runs deinit, which frees all of the above.
        try handshake(name: context.options.serverName ?? host)
    }

    deinit {
        if failed == nil && handshakeDone {
            // Best effort close_notify: never wait for the peer's.
            ERR_clear_error()
            _ = SSL_shutdown(ssl)
            sendBestEffort()
        }
        SSL_free(ssl)
        close(fd)
        redisReaderFree(reader)
        plaintext.deallocate()
        ciphertext.deallocate()
    }

    /// Queues RESP bytes; they are encrypted and sent by the next `reply()`.
    func append(_ resp: UnsafeRawBufferPointer) throws(Failure) {
        if let failed { throw failed }
        pending.append(contentsOf: resp)
    }

    /// Encrypts and sends what is queued now, without waiting for a reply.
    func sendQueued() throws(Failure) {
        if let failed { throw failed }
        do throws(Failure) {
            try flush()
        } catch {
            failed = error
            throw error
        }
    }

    /// The next reply (free it with `teltonika_free_reply`), made by ``reader``'s object functions: one
    /// already parsed if there is one, else flushes what is queued and reads until a whole reply has arrived.
    func reply() throws(Failure) -> UnsafeMutableRawPointer {
        if let failed { throw failed }
        do throws(Failure) {
            if let reply = try parsedReply() { return reply }
            try flush()
            while true {
                let count = try drive { SSL_read(ssl, plaintext.baseAddress, Int32(plaintext.count)) }
                receivedData = true
                if redisReaderFeed(reader, plaintext.baseAddress?.assumingMemoryBound(to: CChar.self), Int(count)) != REDIS_OK {
                    throw Failure(kind: .protocol, message: readerError())
                }
                if let reply = try parsedReply() { return reply }
            }
        } catch {
            failed = error
            throw error
        }
    }

    // MARK: - TLS

    private func handshake(name: String) throws(Failure) {
        let isAddress = RedisTLSStream.isIPAddress(name)
        // SNI carries a DNS name only (RFC 6066); an address literal is checked against the IP SANs.
        if !isAddress && copenssl_set_tlsext_host_name(ssl, name) != 1 {
            throw fail(Failure(kind: .tls, message: "cannot set the server name '\(name)': \(openSSLErrors())"))
        }
        let checked = isAddress ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) : SSL_set1_host(ssl, name)
        guard checked == 1 else {
            throw fail(Failure(kind: .tls, message: "cannot check the server name '\(name)': \(openSSLErrors())"))
        }
        do throws(Failure) {
            _ = try drive { SSL_connect(ssl) }
        } catch {
            throw fail(error)
        }
        handshakeDone = true
    }

    /// Runs an OpenSSL call until it succeeds, sending what it wrote and receiving what it wants to read.
    private func drive(_ operation: () -> Int32) throws(Failure) -> Int32 {
        while true {
            ERR_clear_error()
            let result = operation()
            let error = result > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, result)
            switch error {
            case SSL_ERROR_NONE:
                try sendCiphertext()
                return result
            case SSL_ERROR_WANT_READ:
                try sendCiphertext()
                try receiveCiphertext()
            case SSL_ERROR_WANT_WRITE:
                // Memory BIOs never refuse a write; flush and retry anyway.
                try sendCiphertext()
            case SSL_ERROR_ZERO_RETURN:
                throw Failure(kind: .eof, message: "Server closed the connection (TLS close_notify)")
            case SSL_ERROR_SSL:
                let failure = sslFailure()
                // The alert OpenSSL queued tells the server why; it may be gone already.
                sendBestEffort()
                throw failure
            default:
                throw Failure(kind: .io, message: "TLS error \(error) from \(peer): \(openSSLErrors())")
            }
        }
    }

    /// A fatal OpenSSL error: a handshake or certificate failure, or an alert from the server, is `.tls`;
    /// anything else after the handshake (a bad record) is `.io`.
    private func sslFailure() -> Failure {
        if !handshakeDone {
            let verify = SSL_get_verify_result(ssl)
            if verify != X509_V_OK {
                let reason = String(cString: X509_verify_cert_error_string(verify))
                ERR_clear_error()
                return Failure(kind: .tls, message: "TLS handshake with \(peer) failed: certificate verification: \(reason)")
            }
            return Failure(kind: .tls, message: "TLS handshake with \(peer) failed: \(openSSLErrors())")
        }
        let code = ERR_peek_error()
        // OpenSSL reports an alert received from the peer as reason SSL_AD_REASON_OFFSET + the alert number
        // (for example a server with tls-auth-clients refusing a client without a certificate, TLS 1.3).
        let alert = ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) >= SSL_AD_REASON_OFFSET
        return Failure(kind: alert ? .tls : .io, message: "TLS error from \(peer): \(openSSLErrors())")
    }

    /// The next parsed reply, or nil when the reader needs more bytes.
    private func parsedReply() throws(Failure) -> UnsafeMutableRawPointer? {
        var raw: UnsafeMutableRawPointer? = nil
        guard redisReaderGetReply(reader, &raw) == REDIS_OK else { throw Failure(kind: .protocol, message: readerError()) }
        return raw
    }

    private func readerError() -> String {
        withUnsafeBytes(of: reader.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// Encrypts and sends the queued commands, a few records per step so the ciphertext stays small.
    private func flush() throws(Failure) {
        var offset = 0
        while offset < pending.count {
            let count = min(pending.count - offset, RedisTLSStream.ciphertextCapacity)
            let start = offset
            let written = try drive {
                pending.withUnsafeBytes { SSL_write(ssl, $0.baseAddress! + start, Int32(count)) }
            }
            offset += Int(written)
        }
        pending.removeAll(keepingCapacity: true)
    }

    // MARK: - Socket

    /// Sends everything OpenSSL has written to the outgoing BIO.
    private func sendCiphertext() throws(Failure) {
        while BIO_ctrl_pending(outgoing) > 0 {
            let count = BIO_read(outgoing, ciphertext.baseAddress, Int32(ciphertext.count))
            guard count > 0 else { return }
            var sent = 0
            while sent < Int(count) {
                let n = send(fd, ciphertext.baseAddress! + sent, Int(count) - sent, Int32(MSG_NOSIGNAL))
                if n >= 0 {
                    sent += n
                } else if errno != EINTR {
                    throw socketFailure(errno)
                }
            }
        }
    }

    /// Sends what OpenSSL wrote without waiting (an alert, a close_notify), ignoring errors.
    private func sendBestEffort() {
        while BIO_ctrl_pending(outgoing) > 0 {
            let count = BIO_read(outgoing, ciphertext.baseAddress, Int32(ciphertext.count))
            guard count > 0, send(fd, ciphertext.baseAddress, Int(count), Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) == Int(count) else { return }
        }
    }

    /// Waits (at most `SO_RCVTIMEO`) for ciphertext and hands it to OpenSSL.
    private func receiveCiphertext() throws(Failure) {
        while true {
            let n = recv(fd, ciphertext.baseAddress, ciphertext.count, 0)
            if n > 0 {
                guard BIO_write(incoming, ciphertext.baseAddress, Int32(n)) == Int32(n) else {
                    throw Failure(kind: .io, message: "cannot buffer TLS input: \(openSSLErrors())")
                }
                return
            }
            if n == 0 { throw closed(Failure(kind: .eof, message: "Server closed the connection")) }
            if errno != EINTR { throw socketFailure(errno) }
        }
    }

    private func socketFailure(_ code: Int32) -> Failure {
        let message = String(cString: strerror(code))
        // As hiredis: a receive or send that ran into its timeout fails with EAGAIN.
        if code == EAGAIN || code == EWOULDBLOCK { return Failure(kind: .timeout, message: message) }
        if code == ECONNRESET || code == EPIPE { return closed(Failure(kind: .io, message: message)) }
        return Failure(kind: .io, message: message)
    }

    /// The server closed or reset the connection: `failure`, unless nothing came from it yet. Then it refused
    /// the TLS session (`.tls`): during the handshake, or just after it in TLS 1.3, where the client finishes
    /// first and a server with `tls-auth-clients yes` drops a client without a certificate (its alert is lost
    /// to the reset our first command causes).
    private func closed(_ failure: Failure) -> Failure {
        if !handshakeDone {
            return Failure(kind: .tls, message: "TLS handshake with \(peer) failed: \(failure.message)")
        }
        if !receivedData {
            return Failure(
                kind: .tls,
                message: "TLS session with \(peer) ended before the first reply (\(failure.message)): "
                    + "the server refused it, for example for want of a client certificate"
            )
        }
        return failure
    }

    private func fail(_ failure: Failure) -> Failure {
        failed = failure
        return failure
    }

    private static func isIPAddress(_ name: String) -> Bool {
        var address = in6_addr()
        return inet_pton(AF_INET, name, &address) == 1 || inet_pton(AF_INET6, name, &address) == 1
    }

    /// A blocking TCP socket to the first of `host`'s addresses that accepts within `timeoutMs`, with
    /// `TCP_NODELAY`, keep-alive as `redisEnableKeepAlive` sets it, and `SO_RCVTIMEO`/`SO_SNDTIMEO` as
    /// `redisSetTimeout` sets them.
    private static func connectTCP(host: String, port: Int, timeoutMs: Int) throws(Failure) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var addresses: UnsafeMutablePointer<addrinfo>? = nil
        let resolved = getaddrinfo(host, String(port), &hints, &addresses)
        guard resolved == 0, let addresses else {
            throw Failure(kind: .connect, message: "cannot resolve '\(host)': \(String(cString: gai_strerror(resolved)))")
        }
        defer { freeaddrinfo(addresses) }
        var lastError = "no address for '\(host)'"
        var next: UnsafeMutablePointer<addrinfo>? = addresses
        while let address = next?.pointee {
            next = address.ai_next
            let fd = socket(address.ai_family, address.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), address.ai_protocol)
            guard fd >= 0 else {
                lastError = String(cString: strerror(errno))
                continue
            }
            if let error = connect(fd, address.ai_addr, address.ai_addrlen, timeoutMs: timeoutMs) {
                close(fd)
                lastError = error
                continue
            }
            var on: Int32 = 1
            var idle: Int32 = 15
            var interval: Int32 = 5
            var count: Int32 = 3
            var tv = timeval(milliseconds: timeoutMs)
            if timeoutMs <= 0 { tv = timeval() }
            let intSize = socklen_t(MemoryLayout<Int32>.size)
            let options = [
                setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, intSize),
                setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, intSize),
                setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idle, intSize),
                setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &interval, intSize),
                setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPCNT, &count, intSize),
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)),
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)),
            ]
            guard options.allSatisfy({ $0 == 0 }) else {
                let message = String(cString: strerror(errno))
                close(fd)
                throw Failure(kind: .connect, message: "cannot set socket options: \(message)")
            }
            return fd
        }
        throw Failure(kind: .connect, message: lastError)
    }

    /// Connects a blocking socket within `timeoutMs` (non-blocking connect, then poll); nil on success, else
    /// the reason.
    private static func connect(_ fd: Int32, _ address: UnsafeMutablePointer<sockaddr>, _ length: socklen_t, timeoutMs: Int) -> String? {
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else { return String(cString: strerror(errno)) }
        if Glibc.connect(fd, address, length) != 0 {
            guard errno == EINPROGRESS || errno == EINTR else { return String(cString: strerror(errno)) }
            var start = timespec()
            clock_gettime(CLOCK_MONOTONIC, &start)
            while true {
                var now = timespec()
                clock_gettime(CLOCK_MONOTONIC, &now)
                let elapsedMs = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1_000_000
                var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let ready = poll(&entry, 1, timeoutMs <= 0 ? -1 : Int32(max(0, timeoutMs - elapsedMs)))
                if ready > 0 { break }
                if ready == 0 { return "Connection timed out" }
                if errno != EINTR { return String(cString: strerror(errno)) }
            }
            var error: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) == 0 else { return String(cString: strerror(errno)) }
            if error != 0 { return String(cString: strerror(error)) }
        }
        guard fcntl(fd, F_SETFL, flags) == 0 else { return String(cString: strerror(errno)) }
        return nil
    }
}
