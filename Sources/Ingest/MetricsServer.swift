/// The metrics and health port (`/metrics`, `/healthz`, `/readyz`), bounded against clients that misbehave.
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// The HTTP listener on `METRICS_HOST`:`METRICS_PORT`: `/metrics` (Prometheus text format),
/// `/healthz` (alive: every device event loop answers within a second) and `/readyz` (listening,
/// Redis up, not draining). It runs on its own event loop, so a scrape never waits for device
/// traffic and device traffic never waits for a scrape. It stays up during a drain (so `/readyz`
/// can say 503) and stops last. Every connection is bounded (``MetricsPortLimits``), and so is their
/// number (`METRICS_MAX_CONNECTIONS`).
public final class MetricsServer: Service, Sendable {
    private let host: String
    private let port: Int
    private let maxConnections: Int
    private let health: ServerHealth
    private let metrics: IngestMetrics
    private let logger: Logger
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    public init(
        host: String,
        port: Int,
        maxConnections: Int = IngestConfiguration().metricsMaxConnections,
        health: ServerHealth,
        metrics: IngestMetrics = .shared,
        logger: Logger
    ) {
        self.host = host
        self.port = port
        self.maxConnections = maxConnections
        self.health = health
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        let routes = Routes(health: health, metrics: metrics)
        // The descriptor count is walked on this loop every few seconds, never inside a scrape.
        routes.openFiles.refresh()
        let counting = group.next().scheduleRepeatedTask(initialDelay: OpenFileCount.interval, delay: OpenFileCount.interval) { _ in
            routes.openFiles.refresh()
        }
        let channel: any Channel
        do {
            let limiter = MetricsConnectionLimiter(limit: maxConnections, metrics: metrics, logger: logger)
            let limits = MetricsPortLimits.decoder
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler())
                    }
                }
                .childChannelOption(.maxMessagesPerRead, value: 1)
                .childChannelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: MetricsPortLimits.readChunkBytes))
                .childChannelInitializer { channel in
                    guard limiter.admit(channel) else { return channel.close() }
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                            withPipeliningAssistance: false,
                            withErrorHandling: true,
                            withEncoderConfiguration: .init(),
                            withDecoderLimitConfiguration: limits
                        )
                        try channel.pipeline.syncOperations.addHandlers(
                            IdleStateHandler(readTimeout: MetricsPortLimits.idleTimeout),
                            HTTPHandler(routes: routes)
                        )
                    }
                }
                .bind(host: host, port: port).get()
        } catch {
            logger.critical(
                "cannot listen for metrics",
                metadata: ["event": "metrics.listen_failed", "error": "\(error)", "address": "\(host):\(port)"]
            )
            counting.cancel()
            try await group.shutdownGracefully()
            throw error
        }
        let address = channel.localAddress!
        logger.lifecycle.info(
            "serving metrics and health",
            metadata: ["event": "metrics.listening", "address": "\(address)", "port": .stringConvertible(address.port ?? 0)]
        )
        try? await gracefulShutdown()
        // Cancelled before the loop goes: a repeated task left to its loop's shutdown asks to be scheduled again.
        counting.cancel()
        try? await channel.close()
        try await group.shutdownGracefully()
    }
}

/// What each path answers.
struct Routes: Sendable {
    let health: ServerHealth
    let metrics: IngestMetrics
    let openFiles = OpenFileCount()

    struct Response {
        var status: HTTPResponseStatus
        var contentType: String
        var body: [UInt8]
    }

    func respond(to path: Substring, on loop: any EventLoop) -> EventLoopFuture<Response> {
        switch path {
        case "/metrics":
            return loop.makeSucceededFuture(Response(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: scrape()))
        case "/readyz":
            let (ready, reason) = health.readiness
            let body = #"{"ready":\#(ready),"reason":"\#(reason)"}"# + "\n"
            return loop.makeSucceededFuture(json(ready ? .ok : .serviceUnavailable, body))
        case "/healthz":
            return health.eventLoopsRespond(on: loop, timeout: .seconds(1)).map { alive in
                alive
                    ? json(.ok, #"{"alive":true,"reason":"ok"}"# + "\n")
                    : json(.serviceUnavailable, #"{"alive":false,"reason":"event loop unresponsive"}"# + "\n")
            }
        default:
            return loop.makeSucceededFuture(
                Response(
                    status: .notFound,
                    contentType: "text/plain; charset=utf-8",
                    body: Array("paths: /metrics /healthz /readyz\n".utf8)
                )
            )
        }
    }

    private func json(_ status: HTTPResponseStatus, _ body: String) -> Response {
        Response(status: status, contentType: "application/json", body: Array(body.utf8))
    }

    /// The registry, with the gauges that are read rather than counted brought up to date first,
    /// then the standard process metrics.
    func scrape() -> [UInt8] {
        metrics.ready.set(Int64(health.readiness.ready ? 1 : 0))
        metrics.publishQueueDepth.set(Int64(health.publisher.queuedRecords))
        var buffer: [UInt8] = []
        buffer.reserveCapacity(32 * 1024)
        metrics.registry.emit(into: &buffer)
        ProcessMetrics.read(openFDs: openFiles.current).emit(into: &buffer)
        return buffer
    }
}

/// Limits of the metrics port, each against one kind of abuse (see OPERATIONS.md, "Metrics port limits").
enum MetricsPortLimits {
    /// Largest request head (request line and headers together).
    static let maxHeaderBytes = 8 * 1024
    /// Largest request body (a scrape has none); more closes the connection.
    static let maxBodyBytes = 8 * 1024
    /// Requests received but not yet answered (pipelined); more closes the connection.
    static let maxQueuedRequests = 16
    /// A response the client has not taken (read) within this time closes the connection.
    static let responseWriteTimeout = TimeAmount.seconds(10)
    /// A connection that sends nothing for this long is closed.
    static let idleTimeout = TimeAmount.seconds(60)
    /// The most one socket read delivers.
    static let readChunkBytes = 4 * 1024

    static var decoder: NIOHTTPDecoderLimitConfiguration {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = maxHeaderBytes
        limits.maxHeaderListSize = maxHeaderBytes
        limits.maxHeaderFieldCount = 100
        return limits
    }
}

/// One request at a time per connection (HTTP/1.1 keep-alive honoured; bodies are ignored).
///
/// The next request is read only once the previous response has been written to the socket: while a
/// response waits for the client to read it, the handler holds back the channel's `read()`, so a client
/// that pipelines requests and never reads the answers costs one response and one read of requests,
/// never more. Requests already read (one read's worth) wait in a short queue; a response not taken
/// within ``MetricsPortLimits/responseWriteTimeout`` closes the connection.
final class HTTPHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    struct Request {
        var path: Substring
        var method: HTTPMethod
        var version: HTTPVersion
        var keepAlive: Bool
    }

    private let routes: Routes
    private var receiving: Request? = nil
    private var bodyBytes = 0
    private var queued: [Request] = []
    private var responding = false
    private var readHeld = false
    private var closing = false

    init(routes: Routes) { self.routes = routes }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            receiving = Request(path: path, method: head.method, version: head.version, keepAlive: head.isKeepAlive)
            bodyBytes = 0
        case .body(let body):
            bodyBytes += body.readableBytes
            if bodyBytes > MetricsPortLimits.maxBodyBytes { close(context) }
        case .end:
            guard let request = receiving else { return }
            receiving = nil
            queued.append(request)
            if queued.count > MetricsPortLimits.maxQueuedRequests {
                close(context)
                return
            }
            respondToNext(context)
        }
    }

    /// Reads more only when nothing is waiting to be answered or written.
    func read(context: ChannelHandlerContext) {
        if responding || !queued.isEmpty {
            readHeld = true
        } else {
            context.read()
        }
    }

    private func respondToNext(_ context: ChannelHandlerContext) {
        guard !responding, !closing, !queued.isEmpty else { return }
        let request = queued.removeFirst()
        responding = true
        let response: EventLoopFuture<Routes.Response>
        if request.method == .GET || request.method == .HEAD {
            response = routes.respond(to: request.path, on: context.eventLoop)
        } else {
            response = context.eventLoop.makeSucceededFuture(
                Routes.Response(status: .methodNotAllowed, contentType: "text/plain; charset=utf-8", body: Array("GET only\n".utf8))
            )
        }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        response.whenSuccess { response in
            let (handler, context) = bound.value
            handler.write(context, response, for: request)
        }
    }

    private func write(_ context: ChannelHandlerContext, _ response: Routes.Response, for request: Request) {
        guard !closing else { return }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Cache-Control", value: "no-store")
        if !request.keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: response.status, headers: headers))),
            promise: nil
        )
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: response.body)))), promise: nil)
        }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let timeout = context.eventLoop.scheduleTask(in: MetricsPortLimits.responseWriteTimeout) {
            let (handler, context) = bound.value
            handler.close(context)
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { result in
            timeout.cancel()
            let (handler, context) = bound.value
            handler.responding = false
            guard case .success = result, request.keepAlive else {
                handler.close(context)
                return
            }
            handler.respondToNext(context)
            if !handler.responding && handler.queued.isEmpty && handler.readHeld {
                handler.readHeld = false
                context.read()
            }
        }
    }

    private func close(_ context: ChannelHandlerContext) {
        guard !closing else { return }
        closing = true
        queued.removeAll()
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            close(context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        close(context)
    }
}

@available(*, unavailable)
extension HTTPHandler: Sendable {}

/// Counts open metrics connections and closes those beyond `METRICS_MAX_CONNECTIONS` at once, so a
/// client opening connections cannot take file descriptors from devices.
final class MetricsConnectionLimiter: Sendable {
    private let limit: Int
    private let state = NIOLockedValueBox((open: 0, refusalLog: LogLimiter()))
    private let metrics: IngestMetrics
    private let logger: Logger

    init(limit: Int, metrics: IngestMetrics, logger: Logger) {
        self.limit = limit
        self.metrics = metrics
        self.logger = logger
    }

    /// Counts the connection in (released when it closes), or false at the limit.
    func admit(_ channel: any Channel) -> Bool {
        let now = NIODeadline.now().uptimeNanoseconds
        let (admitted, heldBack) = state.withLockedValue { s -> (Bool, Int?) in
            guard s.open < limit else { return (false, s.refusalLog.admit(nowNanoseconds: now)) }
            s.open += 1
            return (true, nil)
        }
        guard admitted else {
            metrics.metricsConnectionsRefused.increment()
            if let heldBack {
                logger.warning(
                    "metrics connection refused: at METRICS_MAX_CONNECTIONS",
                    metadata: [
                        "event": "metrics.connection_refused", "limit": .stringConvertible(limit),
                        "suppressed": .stringConvertible(heldBack),
                    ]
                )
            }
            return false
        }
        channel.closeFuture.whenComplete { [state] _ in state.withLockedValue { $0.open -= 1 } }
        return true
    }
}
