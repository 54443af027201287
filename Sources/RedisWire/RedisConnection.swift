/// One blocking Redis connection (hiredis, or OpenSSL for `rediss://`): connect, authenticate, append
/// pipelined commands, read replies.
import CHiredis

#if canImport(Glibc)
import Glibc
#endif

/// One blocking Redis connection. Owned by exactly one thread (the publisher's); never touched by an
/// event loop. Plain TCP and Unix sockets go through hiredis; `rediss://` through ``RedisTLSStream`` (hiredis
/// 0.14 has no TLS), which parses with hiredis' reader, so replies and failures read the same on both.
public final class RedisConnection {
    /// A reply, reduced to what the publisher needs.
    public enum Reply: Equatable, Sendable {
        /// A bulk string (an `XADD` stream id) or a status (`OK`, `PONG`).
        case string(String)
        /// An error reply from Redis (`OOM ...`, `WRONGTYPE ...`, `NOAUTH ...`): the connection is still usable.
        case error(String)
        case integer(Int64)
        case array([Reply])
        case null
    }

    /// Why the connection failed; after any of these the connection is unusable.
    public struct Failure: Error, Equatable, Sendable, CustomStringConvertible {
        /// What failed (the server's `teltonika_redis_errors_total` label).
        public enum Kind: String, CaseIterable, Sendable {
            case connect
            case auth
            /// The TLS handshake failed: certificate verification, protocol or cipher mismatch, or the
            /// server's refusal (an alert).
            case tls
            case `protocol`
            case io
            case timeout
            case eof
            case reply
            case other
        }

        public var kind: Kind
        public var message: String

        public init(kind: Kind, message: String) {
            self.kind = kind
            self.message = message
        }
        public var description: String { "\(kind.rawValue): \(message)" }
    }

    /// Where the bytes go.
    private enum Backend {
        /// Plain TCP or a Unix socket: hiredis does the I/O (the hot path, unchanged).
        case hiredis(UnsafeMutablePointer<redisContext>)
        /// `rediss://`.
        case tls(RedisTLSStream)
    }

    private let backend: Backend

    /// Connects, sets the command timeout and TCP keep-alive, logs in, selects the database and, with
    /// `clientName`, names the connection (`CLIENT LIST` shows it; a refusal is ignored).
    ///
    /// With `url.tls` the connection is TLS, set up by `tls` (nil: the system trust store, no client
    /// certificate), the server's certificate verified; it never falls back to plain text.
    public init(url: RedisURL, timeoutMs: Int, clientName: String? = nil, tls: RedisTLSContext? = nil) throws(Failure) {
        if url.tls {
            guard case .tcp(let host, let port) = url.endpoint else {
                throw Failure(kind: .connect, message: "TLS needs a host and port, not \(url)")
            }
            let context: RedisTLSContext
            if let tls {
                context = tls
            } else {
                switch RedisTLSContext.systemDefault {
                case .success(let systemDefault): context = systemDefault
                case .failure(let error): throw Failure(kind: .tls, message: error.description)
                }
            }
            backend = .tls(try RedisTLSStream(host: host, port: port, timeoutMs: timeoutMs, context: context))
        } else {
            let tv = timeval(milliseconds: timeoutMs)
            let ctx: UnsafeMutablePointer<redisContext>?
            switch url.endpoint {
            case .tcp(let host, let port): ctx = redisConnectWithTimeout(host, Int32(port), tv)
            case .unix(let path): ctx = redisConnectUnixWithTimeout(path, tv)
            }
            guard let ctx else { throw Failure(kind: .connect, message: "out of memory") }
            if ctx.pointee.err != 0 {
                let message = RedisConnection.errorString(ctx)
                redisFree(ctx)
                throw Failure(kind: .connect, message: message)
            }
            backend = .hiredis(ctx)
            _ = redisSetTimeout(ctx, tv)
            if case .tcp = url.endpoint { _ = redisEnableKeepAlive(ctx) }
        }
        if let password = url.password {
            let args = url.username.map { ["AUTH", $0, password] } ?? ["AUTH", password]
            if case .error(let e) = try command(args) { throw Failure(kind: .auth, message: e) }
        }
        if url.database != 0, case .error(let e) = try command(["SELECT", String(url.database)]) {
            throw Failure(kind: .auth, message: e)
        }
        if let clientName { _ = try command(["CLIENT", "SETNAME", clientName]) }
        if case .error(let e) = try command(["PING"]) { throw Failure(kind: .protocol, message: e) }
    }

    deinit {
        // The TLS stream frees itself.
        if case .hiredis(let context) = backend { redisFree(context) }
    }

    /// How long each later read may wait for a reply (the one given at connect until then): a subscriber
    /// that waits for rare messages reads longer than commands are answered in. 0 waits for ever.
    public func setReadTimeout(milliseconds: Int) {
        var tv = timeval(milliseconds: milliseconds)
        let fd =
            switch backend {
            case .hiredis(let context): context.pointee.fd
            case .tls(let stream): stream.fd
            }
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Runs one command and waits for its reply.
    public func command(_ arguments: [String]) throws(Failure) -> Reply {
        var writer = RESPWriter()
        writer.beginCommand(arguments: arguments.count)
        for a in arguments { writer.bulk(string: a) }
        try append(writer.bytes)
        return try reply()
    }

    /// Queues pre-formatted RESP commands in the output buffer (sent on the next `reply()`).
    public func append(_ resp: [UInt8]) throws(Failure) {
        let failure: Failure? = resp.withUnsafeBytes { bytes in
            do throws(Failure) {
                try append(bytes)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
    }

    /// Queues pre-formatted RESP commands (copied) in the output buffer (sent on the next `reply()`).
    public func append(_ resp: UnsafeRawBufferPointer) throws(Failure) {
        switch backend {
        case .hiredis(let context):
            let status = redisAppendFormattedCommand(context, resp.baseAddress?.assumingMemoryBound(to: CChar.self), resp.count)
            guard status == REDIS_OK else { throw RedisConnection.failure(context) }
        case .tls(let stream):
            try stream.append(resp)
        }
    }

    /// Sends `pieces` (whole commands), then `last`, in order, after anything ``append(_:)`` queued, without reading a
    /// reply. Over plain TCP or a Unix socket they go to the socket as they are, with `writev` (as many at a
    /// time as the system takes), not copied into hiredis' output buffer first: the publisher's batches, each
    /// job's ``RESPBuffer`` in place (about 3 % of the server's CPU at peak, docs/PERFORMANCE.md). Over TLS
    /// they are queued like ``append(_:)`` and sent by the next reply or ``flush()``.
    ///
    /// The caller keeps the memory alive until this returns. A failed or timed-out write leaves the
    /// connection unusable, as hiredis' own would.
    public func write(_ pieces: some Sequence<UnsafeRawBufferPointer>, then last: UnsafeRawBufferPointer? = nil) throws(Failure) {
        let context: UnsafeMutablePointer<redisContext>
        switch backend {
        case .tls(let stream):
            for piece in pieces { try stream.append(piece) }
            if let last { try stream.append(last) }
            return
        case .hiredis(let hiredis):
            context = hiredis
        }
        try flush()
        // Out of `self` while it is used: no exclusivity check per element.
        var iovecs = self.iovecs
        self.iovecs = []
        defer { self.iovecs = iovecs }
        iovecs.removeAll(keepingCapacity: true)
        for piece in pieces where piece.count > 0 {
            iovecs.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: piece.baseAddress), iov_len: piece.count))
        }
        if let last, last.count > 0 {
            iovecs.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: last.baseAddress), iov_len: last.count))
        }
        let fd = context.pointee.fd
        var first = 0
        while first < iovecs.count {
            let count = Int32(min(iovecs.count - first, Self.iovecLimit))
            let written = iovecs.withUnsafeBufferPointer { writev(fd, $0.baseAddress! + first, count) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else {
                // What hiredis does on a failed write: the context keeps the error, so nothing else is tried on it.
                RedisConnection.setError(context, written == 0 ? "Connection closed while writing" : String(cString: strerror(errno)))
                throw RedisConnection.failure(context)
            }
            Self.advance(&iovecs, first: &first, by: written)
        }
    }

    /// Moves past `written` bytes of `iovecs` from `first`: the pieces written whole are skipped, a piece
    /// written in part starts after what was. (A blocking socket writes in part only when its send timeout
    /// passed with some of it written; the next `writev` sends the rest.)
    static func advance(_ iovecs: inout [iovec], first: inout Int, by written: Int) {
        var rest = written
        while rest > 0 {
            if iovecs[first].iov_len <= rest {
                rest -= iovecs[first].iov_len
                first += 1
            } else {
                iovecs[first].iov_base += rest
                iovecs[first].iov_len -= rest
                rest = 0
            }
        }
    }

    /// ``write(_:)``'s vector, kept for the next batch.
    private var iovecs: [iovec] = []

    /// The most pieces one `writev` takes (`IOV_MAX` on Linux).
    static var iovecLimit: Int { 1024 }

    private static func setError(_ context: UnsafeMutablePointer<redisContext>, _ message: String) {
        context.pointee.err = REDIS_ERR_IO
        withUnsafeMutableBytes(of: &context.pointee.errstr) { errstr in
            let bytes = message.utf8.prefix(errstr.count - 1)
            errstr.copyBytes(from: bytes)
            errstr[bytes.count] = 0
        }
    }

    /// Sends what is queued without reading a reply (``reply()`` sends it too), so that batches queued
    /// on several connections travel at once before any of their replies is awaited.
    public func flush() throws(Failure) {
        switch backend {
        case .hiredis(let context):
            var done: Int32 = 0
            while done == 0 {
                guard redisBufferWrite(context, &done) == REDIS_OK else { throw RedisConnection.failure(context) }
            }
        case .tls(let stream):
            try stream.sendQueued()
        }
    }

    /// Sends what is queued, then waits (without reading) until at least `bytes` of replies can be read, or
    /// `timeoutMs` has passed, or the connection failed: whichever comes first. Nothing else changes.
    ///
    /// Why: Redis reads a pipeline 16 KiB at a time and writes the replies of each piece as it goes, so a
    /// thread reading a big batch's replies blocks and is woken once per piece (about 14 times for 650
    /// `XADD`s: 5,400 context switches a second at peak, the publisher thread's largest cost). With the
    /// socket's receive low-water mark (`SO_RCVLOWAT`, which `poll` honours for TCP) set to what the
    /// replies will take (at most ``maxLowWaterMark``), the kernel wakes it once. The mark is set back to 1
    /// before returning, so reads never wait for it. A guess above what comes (replies shorter than expected) costs at most
    /// `timeoutMs`, then the replies are read as before. TLS: only sends (the bytes on the socket are not
    /// the replies').
    public func awaitReplies(bytes: Int, timeoutMs: Int) throws(Failure) {
        try flush()
        guard case .hiredis(let context) = backend, bytes > 1 else { return }
        // Replies hiredis has already read are not on the socket: then this guess is off, and not needed.
        if let reader = context.pointee.reader, reader.pointee.pos < reader.pointee.len { return }
        let fd = context.pointee.fd
        var mark = Int32(clamping: min(bytes, Self.maxLowWaterMark))
        guard setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &mark, socklen_t(MemoryLayout<Int32>.size)) == 0 else { return }
        var one: Int32 = 1
        defer { _ = setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        _ = poll(&ready, 1, Int32(clamping: timeoutMs))
    }

    /// The most ``awaitReplies(bytes:timeoutMs:)`` waits for at once: 4 KiB (about 186 stream ids). A bigger
    /// mark can make Linux grow the receive buffer and clamp the connection's window to the mark, for the
    /// connection's life (`tcp_set_rcvlowat`); with marks up to 64 KiB the ACK latency p99 at half the peak
    /// rate was 12-18 ms against 5-7 ms with 8 KiB or none (docs/PERFORMANCE.md, "Issue 19, third pass").
    /// A batch's replies are awaited in pieces of this size instead, and the publisher completes the jobs
    /// answered before each wait: 4 KiB rather than 8 lets those devices send again sooner (fewer idle
    /// cores at peak, and a lower half-peak p99: "Issue 19, fifth pass").
    public static var maxLowWaterMark: Int { 4 * 1024 }

    /// The socket's receive low-water mark (`SO_RCVLOWAT`): 1 except inside ``awaitReplies(bytes:timeoutMs:)``.
    /// Nil for TLS, whose socket this connection does not read through hiredis. For tests and diagnostics.
    public var receiveLowWaterMark: Int? {
        guard case .hiredis(let context) = backend else { return nil }
        var mark: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(context.pointee.fd, SOL_SOCKET, SO_RCVLOWAT, &mark, &size) == 0 else { return nil }
        return Int(mark)
    }

    /// Flushes what is queued and reads the next reply.
    public func reply() throws(Failure) -> Reply {
        try nextReply { RedisConnection.convert($0) }
    }

    /// Flushes what is queued and reads the next reply, reduced to its error message: nil for any other
    /// reply. For the publisher's `XADD`s, whose stream ids it does not keep: no `String` is made for them
    /// (about 300 instructions per record, a third of reading the reply), and hiredis allocates nothing for
    /// a reply that is not an error (the error-only object functions of `shim.h`, about 300 more).
    public func replyError() throws(Failure) -> String? {
        try nextReply(errorOnly: true) { reply in
            reply.type == REDIS_REPLY_ERROR
                ? String(decoding: UnsafeRawBufferPointer(start: reply.str, count: Int(reply.len)), as: UTF8.self) : nil
        }
    }

    /// Flushes what is queued, reads the next reply and hands it to `body` (it is freed after). With
    /// `errorOnly`, a reply that is not an error reaches `body` as a `REDIS_REPLY_STATUS` with no string.
    private func nextReply<R>(errorOnly: Bool = false, _ body: (redisReply) -> R) throws(Failure) -> R {
        let reader =
            switch backend {
            case .hiredis(let context): context.pointee.reader!
            case .tls(let stream): stream.reader
            }
        let functions = errorOnly ? teltonika_reader_error_only(reader) : nil
        defer { if errorOnly { teltonika_reader_restore(reader, functions) } }
        let raw: UnsafeMutableRawPointer
        switch backend {
        case .hiredis(let context):
            var reply: UnsafeMutableRawPointer? = nil
            guard redisGetReply(context, &reply) == REDIS_OK, let reply else { throw RedisConnection.failure(context) }
            raw = reply
        case .tls(let stream):
            raw = try stream.reply()
        }
        defer { teltonika_free_reply(raw) }
        return body(raw.assumingMemoryBound(to: redisReply.self).pointee)
    }

    private static func convert(_ r: redisReply) -> Reply {
        switch r.type {
        case REDIS_REPLY_STRING, REDIS_REPLY_STATUS:
            return .string(String(decoding: UnsafeRawBufferPointer(start: r.str, count: Int(r.len)), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: UnsafeRawBufferPointer(start: r.str, count: Int(r.len)), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(r.integer)
        case REDIS_REPLY_ARRAY:
            return .array((0..<Int(r.elements)).map { convert(r.element[$0]!.pointee) })
        default:
            return .null
        }
    }

    private static func failure(_ context: UnsafeMutablePointer<redisContext>) -> Failure {
        let message = RedisConnection.errorString(context)
        // hiredis 0.14 reports a timeout as an I/O error with EAGAIN.
        let kind: Failure.Kind =
            context.pointee.err == REDIS_ERR_IO && (message.contains("temporarily unavailable") || errno == EAGAIN) ? .timeout : .io
        return Failure(kind: kind, message: message)
    }

    private static func errorString(_ ctx: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: ctx.pointee.errstr) { raw in
            let bytes = raw.prefix { $0 != 0 }
            return String(decoding: bytes, as: UTF8.self)
        }
    }
}

extension timeval {
    /// `milliseconds` as a socket timeout.
    init(milliseconds: Int) {
        self.init(tv_sec: milliseconds / 1000, tv_usec: Int((milliseconds % 1000) * 1000))
    }
}
