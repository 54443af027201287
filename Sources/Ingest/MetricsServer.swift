import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// The HTTP listener on `METRICS_HOST`:`METRICS_PORT`: `/metrics` (Prometheus text format),
/// `/healthz` (alive: every device event loop answers within a second) and `/readyz` (listening,
/// Redis up, not draining). It runs on its own event loop, so a scrape never waits for device
/// traffic and device traffic never waits for a scrape. It stays up during a drain (so `/readyz`
/// can say 503) and stops last.
public final class MetricsServer: Service, Sendable {
    private let host: String
    private let port: Int
    private let health: ServerHealth
    private let metrics: IngestMetrics
    private let logger: Logger
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    public init(host: String, port: Int, health: ServerHealth, metrics: IngestMetrics = .shared, logger: Logger) {
        self.host = host
        self.port = port
        self.health = health
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        let routes = Routes(health: health, metrics: metrics)
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandlers(
                            IdleStateHandler(readTimeout: .seconds(60)),
                            HTTPHandler(routes: routes)
                        )
                    }
                }
                .bind(host: host, port: port).get()
        } catch {
            logger.critical("cannot listen for metrics", metadata: ["event": "metrics.listen_failed", "error": "\(error)"])
            try await group.shutdownGracefully()
            throw error
        }
        let address = channel.localAddress!
        logger.info(
            "serving metrics and health",
            metadata: ["event": "metrics.listening", "address": "\(address)", "port": "\(address.port ?? 0)"]
        )
        try? await gracefulShutdown()
        try? await channel.close()
        try await group.shutdownGracefully()
    }
}

/// What each path answers.
struct Routes: Sendable {
    let health: ServerHealth
    let metrics: IngestMetrics

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
        ProcessMetrics.read().emit(into: &buffer)
        return buffer
    }
}

/// One request at a time per connection (HTTP/1.1 keep-alive honoured); bodies are ignored.
final class HTTPHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let routes: Routes

    init(routes: Routes) { self.routes = routes }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let keepAlive = head.isKeepAlive
        let version = head.version
        let isHead = head.method == .HEAD
        let response: EventLoopFuture<Routes.Response>
        if head.method == .GET || isHead {
            response = routes.respond(to: path, on: context.eventLoop)
        } else {
            response = context.eventLoop.makeSucceededFuture(
                Routes.Response(status: .methodNotAllowed, contentType: "text/plain; charset=utf-8", body: Array("GET only\n".utf8))
            )
        }
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        response.whenSuccess { response in
            let context = bound.value
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: response.contentType)
            headers.add(name: "Content-Length", value: "\(response.body.count)")
            headers.add(name: "Cache-Control", value: "no-store")
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(
                self.wrapOutboundOut(.head(HTTPResponseHead(version: version, status: response.status, headers: headers))),
                promise: nil
            )
            if !isHead {
                context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: response.body)))), promise: nil)
            }
            let done = context.writeAndFlush(self.wrapOutboundOut(.end(nil)))
            if !keepAlive {
                let channel = context.channel
                done.whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
