/// The TLS half of a session on the TLS port: handshake outcomes counted and logged, TLS events translated for
/// the session.
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS
import Prometheus

/// Sits between ``NIOSSLServerHandler`` and the session pipeline of a TLS connection.
///
/// Counts each connection's handshake once: `ok` with the negotiated version when it completes, `failed`
/// when TLS refuses it (old version, no or bad client certificate, not TLS at all) or the connection ends
/// before it completes (closed by the peer, or by the handshake timer of ``DeviceSessionHandler``, which
/// starts at `channelActive` and so bounds the TLS handshake and the login together).
///
/// A refused handshake is one warning line (`tls.handshake_failed`) at most every 10 s for the whole
/// listener (a scanner cannot flood the log) and closes the session as `tls_handshake_failed`, without the
/// session's per-connection `device.connection_error`. After the handshake, a device that drops the link
/// without a close_notify (most embedded TLS stacks) is a peer close, as on TCP, not an error.
final class DeviceTLSHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let tls: NIOSSLServerHandler
    private let metrics: IngestMetrics
    private let logger: Logger
    /// Shared by every connection of the listener.
    private let failureLog: NIOLockedValueBox<LogLimiter>
    /// The device's address: the PROXY header's behind a load balancer, else the connection's.
    private let deviceAddress: @Sendable (any Channel) -> SocketAddress?
    /// `TLS_CLIENT_CERT_IMEI`: tell the session the client certificate's name when the handshake completes.
    private let reportsCertificateName: Bool
    private var handshake = Handshake.pending

    private enum Handshake {
        case pending
        case completed
        /// Counted as failed (once).
        case failed
    }

    init(
        tls: NIOSSLServerHandler,
        metrics: IngestMetrics,
        logger: Logger,
        failureLog: NIOLockedValueBox<LogLimiter>,
        deviceAddress: @escaping @Sendable (any Channel) -> SocketAddress? = { $0.remoteAddress },
        reportsCertificateName: Bool = false
    ) {
        self.tls = tls
        self.metrics = metrics
        self.logger = logger
        self.failureLog = failureLog
        self.deviceAddress = deviceAddress
        self.reportsCertificateName = reportsCertificateName
    }

    func channelActive(context: ChannelHandlerContext) {
        metrics.tlsConnectionsActive.increment()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .pending = handshake { handshakeFailed() }
        metrics.tlsConnectionsActive.decrement()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event, case .pending = handshake {
            handshake = .completed
            switch tls.tlsVersion {
            case .tlsv13: metrics.tlsHandshakesOK(.tls13).increment()
            case .tlsv12: metrics.tlsHandshakesOK(.tls12).increment()
            case let other:
                // TLS_MIN_VERSION is 1.2 at least, so BoringSSL cannot have agreed to anything else.
                preconditionFailure("a TLS handshake completed with version \(String(describing: other))")
            }
            // Before any byte of the session reaches it: the login it is compared with comes after.
            if reportsCertificateName {
                context.fireUserInboundEventTriggered(SessionCertificateName(name: tls.peerCertificate.flatMap(certificateCommonName)))
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch handshake {
        case .completed:
            if let error = error as? NIOSSLError, error == .uncleanShutdown { return }
            context.fireErrorCaught(error)
        case .failed:
            break
        case .pending:
            handshakeFailed()
            if let suppressed = failureLog.withLockedValue({ $0.admit(nowNanoseconds: NIODeadline.now().uptimeNanoseconds) }) {
                logger.warning(
                    "TLS handshake failed",
                    metadata: [
                        "event": "tls.handshake_failed", "error": "\(logText(error))",
                        "peer": "\(peerString(deviceAddress(context.channel)))",
                        "suppressed": .stringConvertible(suppressed),
                    ]
                )
            }
            context.fireUserInboundEventTriggered(SessionTLSFailed())
        }
    }

    private func handshakeFailed() {
        handshake = .failed
        metrics.tlsHandshakesFailed.increment()
    }
}

@available(*, unavailable)
extension DeviceTLSHandler: Sendable {}

/// A TLS error for the log: BoringSSL's reasons (`...:SSL routines:OPENSSL_internal:UNSUPPORTED_PROTOCOL`)
/// without the build paths of the source files they name.
private func logText(_ error: any Error) -> String {
    let pieces = "\(error)".split(separator: " at /", omittingEmptySubsequences: false)
    return pieces.dropFirst().reduce(String(pieces[0])) { text, piece in
        text + piece.drop { $0 != "]" && $0 != "," && $0 != ")" }
    }
}

/// Sent to a TLS connection's session when its handshake failed: close it as `tls_handshake_failed`.
struct SessionTLSFailed: Sendable {}

/// Sent to a TLS connection's session when its handshake completed, with `TLS_CLIENT_CERT_IMEI`: the one
/// common name of the client certificate's subject (nil: none, or several), which the login IMEI must equal.
struct SessionCertificateName: Sendable {
    let name: String?
}
