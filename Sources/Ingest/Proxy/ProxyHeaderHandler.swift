/// The first handler of a device connection when `PROXY_PROTOCOL` is on: reads the PROXY v2 header (or makes
/// sure none comes from an untrusted peer), hands the device's address on, then leaves the pipeline.
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// `reason` label of `teltonika_proxy_header_refusals_total`: why a connection was closed at its PROXY header.
enum ProxyRefusal: String, CaseIterable, Sendable {
    /// A header from outside `PROXY_TRUSTED_CIDRS` (or, with `v2`, any connection from outside).
    case untrusted
    /// `v2`: a trusted peer whose first bytes are not the signature.
    case missing
    /// Bad version or command, unsupported family, addresses or a TLV past the header's end.
    case malformed
    /// The declared length is above ``ProxyHeader/defaultMaximumBytes``.
    case tooLarge = "too_large"
    /// The peer closed (or reset) the connection inside the header.
    case truncated
    /// The header was not complete within `HANDSHAKE_TIMEOUT_MS`.
    case timeout
}

/// `command` label of `teltonika_proxy_headers_total`.
enum ProxyCommandLabel: String, CaseIterable, Sendable { case proxy, local }

/// What a device listener shares between the proxy handlers of its connections.
struct ProxyListener: Sendable {
    let environment: SessionEnvironment
    /// One `proxy.header_refused` line per 10 s for the listener.
    let refusalLog: NIOLockedValueBox<LogLimiter>
    /// Admits a connection under the device's own address (`MAX_CONNECTIONS_PER_IP`,
    /// `MAX_LOGIN_FAILURES_PER_IP`); false: it was refused (counted and logged) and must be closed.
    let admitDevice: @Sendable (any Channel, SocketAddress?) -> Bool
}

/// Reads the PROXY v2 header before anything else of the connection sees a byte.
///
/// From a trusted peer (`PROXY_TRUSTED_CIDRS`) the handler holds back `channelActive` and every byte until the
/// header is complete, then: admits the connection under the address the header names (a LOCAL header, or PROXY
/// with the UNSPEC family, keeps the peer's own), records that address for the session
/// (``SessionEnvironment/deviceAddress(of:)``), passes `channelActive` and the bytes after the header on, and
/// removes itself. So the session, the TLS handshake and the idle timer start once the device is known, and the
/// login timeout (`HANDSHAKE_TIMEOUT_MS`) starts again there. With `optional`, a trusted peer whose first byte
/// is not the signature is a plain device under its own address. A malformed, oversized or missing (`v2`)
/// header, or none within `HANDSHAKE_TIMEOUT_MS`, closes the connection; a peer that closes before sending a
/// byte (a health check) is no error.
///
/// From an untrusted peer (`optional` only; with `v2` it is refused on accept) the session starts at once; the
/// handler only watches the first bytes and closes the connection if they are the signature.
final class ProxyHeaderHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let listener: ProxyListener
    private let trusted: Bool
    /// `v2`: a trusted peer must send a header.
    private let required: Bool
    private var held: ByteBuffer? = nil
    private var timer: Scheduled<Void>? = nil
    /// The header is dealt with (read, absent, or refused).
    private var done = false
    /// `channelActive` went on: the rest of the pipeline (the session) sees this connection, and so must see
    /// its end and its errors. A connection refused before that never was a session.
    private var sessionStarted = false

    init(listener: ProxyListener, trusted: Bool, required: Bool) {
        self.listener = listener
        self.trusted = trusted
        self.required = required
    }

    func channelActive(context: ChannelHandlerContext) {
        guard trusted else {
            sessionStarted = true
            return context.fireChannelActive()
        }
        let timeout = TimeAmount.milliseconds(Int64(listener.environment.configuration.handshakeTimeoutMs))
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            guard !handler.done else { return }
            handler.refuse(context, .timeout, detail: "\(handler.held?.readableBytes ?? 0) bytes in \(timeout.nanoseconds / 1_000_000) ms")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        if sessionStarted { return context.fireChannelInactive() }
        // The session never saw the connection start: it must not see it end either.
        if !done, let held, held.readableBytes > 0 {
            count(context, .truncated, detail: "closed after \(held.readableBytes) bytes of the header")
        }
        done = true
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if sessionStarted { return context.fireErrorCaught(error) }
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A drain while the header is awaited: nothing of the device is in flight, close.
        if !sessionStarted, event is SessionDrain { return context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return context.fireChannelRead(data) }
        var bytes = unwrapInboundIn(data)
        if held != nil {
            held!.writeBuffer(&bytes)
        } else {
            held = bytes
        }
        let result = held!.withUnsafeReadableBytes { raw in
            Result { () throws(ProxyHeader.ParseError) in try ProxyHeader.parse(raw) }
        }
        switch (result, trusted) {
        case (.success(.needMore), true):
            return
        case (.success(.needMore), false):
            // The whole signature from an untrusted peer is a header attempt: no need to wait for the rest.
            guard held!.readableBytes >= ProxyHeader.signature.count else { return }
            refuse(context, .untrusted, detail: "PROXY header from a peer outside PROXY_TRUSTED_CIDRS")
        case (.success(.notProxy), true) where required:
            refuse(context, .missing, detail: "first bytes are not the PROXY v2 signature")
        case (.success(.notProxy), _):
            pass(context, address: nil)
        case (.success(.header(let header)), true):
            listener.environment.metrics.proxyHeaders(header.command == .local ? .local : .proxy).increment()
            held!.moveReaderIndex(forwardBy: header.byteCount)
            let address = header.source.flatMap { try? SocketAddress(ipAddress: $0.addressText, port: Int($0.port)) }
            pass(context, address: address)
        case (.success(.header), false), (.failure, false):
            refuse(context, .untrusted, detail: "PROXY header from a peer outside PROXY_TRUSTED_CIDRS")
        case (.failure(let error), true):
            refuse(context, error.isTooLarge ? .tooLarge : .malformed, detail: "\(error)")
        }
    }

    /// The header is done with (or there is none): the connection is the device's.
    private func pass(_ context: ChannelHandlerContext, address: SocketAddress?) {
        done = true
        timer?.cancel()
        let rest = held
        held = nil
        if trusted {
            if let address { listener.environment.deviceAddresses.set(address, for: context.channel) }
            guard listener.admitDevice(context.channel, address ?? context.remoteAddress) else {
                return context.close(promise: nil)
            }
            sessionStarted = true
            context.fireChannelActive()
        }
        if let rest, rest.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(rest)) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func refuse(_ context: ChannelHandlerContext, _ reason: ProxyRefusal, detail: String) {
        done = true
        timer?.cancel()
        held = nil
        count(context, reason, detail: detail)
        // A session already under way (an untrusted peer in `optional` mode) counts why it closes.
        if sessionStarted { context.fireUserInboundEventTriggered(SessionProxyRefused()) }
        context.close(promise: nil)
    }

    private func count(_ context: ChannelHandlerContext, _ reason: ProxyRefusal, detail: String) {
        listener.environment.metrics.proxyRefusals(reason).increment()
        Self.log(listener, reason, detail: detail, peer: context.remoteAddress)
    }

    /// Logs a refusal, at most one line per 10 s for the listener.
    static func log(_ listener: ProxyListener, _ reason: ProxyRefusal, detail: String, peer: SocketAddress?) {
        let now = NIODeadline.now().uptimeNanoseconds
        guard let suppressed = listener.refusalLog.withLockedValue({ $0.admit(nowNanoseconds: now) }) else { return }
        listener.environment.logger.warning(
            "PROXY header refused: closing",
            metadata: [
                "event": "proxy.header_refused", "reason": "\(reason.rawValue)", "detail": "\(detail)", "peer": "\(peerString(peer))",
                "suppressed": .stringConvertible(suppressed),
            ]
        )
    }
}

@available(*, unavailable)
extension ProxyHeaderHandler: Sendable {}

/// The addresses PROXY headers named, by connection: what the session reports and limits instead of the
/// load balancer's. Only connections whose header named a client are here, each until it closes.
final class DeviceAddresses: Sendable {
    private let table = NIOLockedValueBox<[ObjectIdentifier: SocketAddress]>([:])

    func set(_ address: SocketAddress, for channel: any Channel) {
        let id = ObjectIdentifier(channel)
        table.withLockedValue { $0[id] = address }
        channel.closeFuture.whenComplete { [table] _ in table.withLockedValue { _ = $0.removeValue(forKey: id) } }
    }

    /// The device's address: the one its PROXY header named, else the connection's peer.
    func address(of channel: any Channel) -> SocketAddress? {
        table.withLockedValue { $0[ObjectIdentifier(channel)] } ?? channel.remoteAddress
    }
}

extension SessionEnvironment {
    /// The device's address on `channel`: from its PROXY header when a load balancer sent one, else the peer.
    func deviceAddress(of channel: any Channel) -> SocketAddress? { deviceAddresses.address(of: channel) }
}

/// Told to a session whose connection is closed at a PROXY header it should not have sent
/// (`PROXY_PROTOCOL=optional`, a peer outside `PROXY_TRUSTED_CIDRS`): counted as `proxy_refused`.
struct SessionProxyRefused: Sendable {}
