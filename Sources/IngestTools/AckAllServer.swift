/// The hidden `ack-server`: ACKs every packet without Redis, for measuring the simulator alone.
import Codec8
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A stand-in server that ACKs every AVL packet at once, with no Redis: the simulator's own ceiling,
/// and a server that misbehaves on purpose for the simulator's tests (`teltonika-ingest ack-server`).
///
/// Accepts any valid IMEI login (answers 0x01), skips keep-alive bytes, frames packets with
/// ``TeltonikaFramer`` (8-byte header, data field, 4-byte CRC) and answers each with its record count
/// (the byte at offset 9) as a 4-byte ACK. The CRC is not checked. A framing error closes the connection.
public final class AckAllServer: Sendable {
    public struct Options: Sendable {
        public var host = "127.0.0.1"
        /// 0: any free port (see ``AckAllServer/port``).
        public var port = 0
        /// Packets of each device (IMEI) left unanswered before it gets ACKs, across its connections.
        public var withholdAcks = 0
        /// Called with one line per packet: `packet imei=... n=... records=... first_ts=... crc=... acked=...`.
        public var packetLog: (@Sendable (String) -> Void)?
        public var threads = 0

        public init() {}
    }

    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel

    /// The port the server listens on.
    public var port: Int { channel.localAddress?.port ?? 0 }

    /// Binds and starts serving.
    public init(options: Options) async throws {
        group = MultiThreadedEventLoopGroup(numberOfThreads: options.threads > 0 ? options.threads : System.coreCount)
        // Packets seen per IMEI, kept only when ACKs are withheld or packets logged.
        let counts: NIOLockedValueBox<[UInt64: Int]>? =
            options.withholdAcks > 0 || options.packetLog != nil ? NIOLockedValueBox([:]) : nil
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 4096)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(AckAllHandler(options: options, counts: counts))
                    }
                }
                .bind(host: options.host, port: options.port)
                .get()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    /// Serves until the process ends.
    public func run() async throws {
        try await channel.closeFuture.get()
    }
}

/// One device connection of the ``AckAllServer``.
private final class AckAllHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let options: AckAllServer.Options
    private let counts: NIOLockedValueBox<[UInt64: Int]>?
    private var cutter = TeltonikaFrameCutter()
    private var buffer = ByteBuffer()
    private var imei: IMEI?

    init(options: AckAllServer.Options, counts: NIOLockedValueBox<[UInt64: Int]>?) {
        self.options = options
        self.counts = counts
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        buffer.writeBuffer(&incoming)
        var acks = 0
        defer {
            if acks > 0 { context.flush() }
            buffer.discardReadBytes()
        }
        while true {
            let cut: TeltonikaFrameCutter.Cut
            do throws(Codec8Error) {
                cut = try buffer.withUnsafeReadableBytes { (raw) throws(Codec8Error) in try cutter.next(raw) }
            } catch {
                context.close(promise: nil)
                return
            }
            switch cut {
            case .needMore:
                return
            case .keepAlive:
                buffer.moveReaderIndex(forwardBy: 1)
            case .login(let length):
                let login = buffer.readSlice(length: length)!
                guard let parsed = try? IMEI.parseLogin(Array(login.readableBytesView)) else {
                    context.writeAndFlush(wrapOutboundOut(ByteBuffer(integer: UInt8(0))), promise: nil)
                    context.close(promise: nil)
                    return
                }
                imei = parsed
                context.write(wrapOutboundOut(ByteBuffer(integer: UInt8(1))), promise: nil)
                acks += 1
            case .frame(let length):
                if packet(buffer.readSlice(length: length)!, context: context) { acks += 1 }
            }
        }
    }

    /// Answers one packet (unless withheld); true when an ACK was written.
    private func packet(_ frame: ByteBuffer, context: ChannelHandlerContext) -> Bool {
        let records = frame.getInteger(at: frame.readerIndex + 9, as: UInt8.self) ?? 0
        var acked = true
        var number = 0
        if let counts, let imei {
            number = counts.withLockedValue { counts in
                counts[imei.value, default: 0] += 1
                return counts[imei.value]!
            }
            acked = number > options.withholdAcks
        }
        if let log = options.packetLog {
            let firstTimestamp = frame.readableBytes >= 18 ? frame.getInteger(at: frame.readerIndex + 10, as: UInt64.self) ?? 0 : 0
            let crc = frame.getInteger(at: frame.readerIndex + frame.readableBytes - 4, as: UInt32.self) ?? 0
            log(
                "packet imei=\(imei?.description ?? "-") n=\(number) records=\(records) first_ts=\(firstTimestamp) crc=\(crc) acked=\(acked)\n"
            )
        }
        guard acked else { return false }
        context.write(wrapOutboundOut(ByteBuffer(integer: UInt32(records))), promise: nil)
        return true
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
