/// The server's second Redis connection, on a thread of its own: the device registry and downlink commands.
import Dispatch
import Logging
import NIOCore
import NIOPosix
import Prometheus
import RedisWire
import Synchronization

/// One Redis connection (named `teltonika-ingest-devices`) on one thread, for the work beside publishing:
/// the device registry and downlink commands. Never the publisher's connection, so a slow script cannot
/// delay an ACK. Operations run in the order given; ones that may be dropped (``run(droppable:_:)``)
/// are refused once ``maxOutstanding`` wait.
final class RedisSideChannel: @unchecked Sendable {
    static let maxOutstanding = 10_000
    static let clientName = "teltonika-ingest-devices"

    /// This instance (`INSTANCE_ID`), for events.
    let instance: String
    /// This process among every instance: the instance and a per-process nonce (a restarted instance is
    /// another holder). Leases and the registry name it.
    let holder: String
    private let connector: any RedisConnector
    private let errors: Counter
    private let logger: Logger
    private let pool = NIOThreadPool(numberOfThreads: 1)
    private let outstanding = Atomic<Int>(0)
    // Touched only on the pool's thread.
    private var transport: (any RedisTransport)? = nil
    private var lastFailure: NIODeadline? = nil
    private var errorLog = LogLimiter()

    init(instance: String, connector: any RedisConnector, errors: Counter, logger: Logger) {
        self.instance = instance
        self.connector = connector
        self.errors = errors
        self.logger = logger
        holder = "\(instance)/\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
    }

    func start() { pool.start() }

    /// Runs what is queued (bounded by `deadline`), then ends the thread: joined when the queue ran out in
    /// time; left to end by itself when an operation was still stuck at the deadline (a hung Redis).
    func stop(deadline: NIODeadline) async {
        let drained = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let once = ResumeOnce(continuation)
            pool.submit { _ in once.resume(true) }
            let seconds = Double(max(0, (deadline - .now()).nanoseconds)) / 1e9
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { once.resume(false) }
        }
        if drained {
            try? await pool.shutdownGracefully()
        } else {
            pool.shutdownGracefully { _ in }
        }
    }

    /// Runs `body` on the channel's thread. With `droppable`, refused (false, counted) when
    /// ``maxOutstanding`` operations already wait: a take or a last-seen update may be, the records of an
    /// outcome may not.
    @discardableResult
    func run(droppable: Bool = false, _ body: @escaping @Sendable (RedisSideChannel) -> Void) -> Bool {
        guard outstanding.add(1, ordering: .relaxed).newValue <= Self.maxOutstanding || !droppable else {
            outstanding.subtract(1, ordering: .relaxed)
            errors.increment()
            return false
        }
        pool.submit { [self] _ in
            defer { outstanding.subtract(1, ordering: .relaxed) }
            body(self)
        }
        return true
    }

    /// `EVAL script numkeys keys... args...` (on the channel's thread).
    func eval(_ script: String, keys: [String], args: [String]) -> RedisConnection.Reply? {
        call(["EVAL", script, String(keys.count)] + keys + args)
    }

    /// One command on the connection (connected first when needed); nil when it failed (counted,
    /// logged at most once per 10 s). After a failed connect, operations fail at once for a second.
    /// On the channel's thread only.
    func call(_ arguments: [String]) -> RedisConnection.Reply? {
        do throws(RedisConnection.Failure) {
            if transport == nil {
                if let lastFailure, NIODeadline.now() - lastFailure < .seconds(1) {
                    throw RedisConnection.Failure(kind: .connect, message: "reconnecting")
                }
                let connected = try connector.connect()
                // Named apart from the publisher's connection in `CLIENT LIST`.
                _ = try connected.command(["CLIENT", "SETNAME", Self.clientName])
                transport = connected
            }
            let reply = try transport!.command(arguments)
            if case .error(let message) = reply { throw RedisConnection.Failure(kind: .reply, message: message) }
            return reply
        } catch {
            if error.kind != .reply {
                transport = nil
                lastFailure = .now()
            }
            errors.increment()
            if let heldBack = errorLog.admit(nowNanoseconds: NIODeadline.now().uptimeNanoseconds) {
                logger.warning(
                    "device registry or command operation failed in Redis",
                    metadata: [
                        "event": "redis.side_failed", "error": "\(error)", "operation": "\(arguments.first ?? "")",
                        "suppressed": .stringConvertible(heldBack),
                    ]
                )
            }
            return nil
        }
    }
}
