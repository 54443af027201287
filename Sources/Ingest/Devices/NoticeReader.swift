/// Reads the notices stream: command wake-ups and logins elsewhere.
import Codec8
import Dispatch
import Logging
import NIOCore
import NIOPosix
import Prometheus
import RedisWire
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One notice: a device whose command queue changed (`session` nil), or a device that logged in as
/// `session` (other sessions of it close).
struct Notice: Equatable, Sendable {
    var imei: IMEI
    var session: String?
}

/// Reads the notices stream (`XREAD BLOCK`) on a thread and connection of its own (`teltonika-ingest-notices`)
/// and hands each notice to ``onNotice``. Every instance reads every notice (no consumer group): the one
/// holding the device acts. After a reconnect, ``onResync`` runs (notices may have been missed).
final class NoticeReader: @unchecked Sendable {
    private let key: String
    private let connector: any RedisConnector
    private let blockMs: Int
    private let read: Counter
    private let errors: Counter
    private let logger: Logger
    private let onNotice: @Sendable (Notice) -> Void
    private let onResync: @Sendable () -> Void
    private let stopping = Atomic<Bool>(false)
    private let pool = NIOThreadPool(numberOfThreads: 1)

    init(
        key: String,
        connector: any RedisConnector,
        timeoutMs: Int,
        read: Counter,
        errors: Counter,
        logger: Logger,
        onNotice: @escaping @Sendable (Notice) -> Void,
        onResync: @escaping @Sendable () -> Void
    ) {
        self.key = key
        self.connector = connector
        blockMs = max(50, min(1000, timeoutMs / 2))
        self.read = read
        self.errors = errors
        self.logger = logger
        self.onNotice = onNotice
        self.onResync = onResync
    }

    func start() {
        pool.start()
        pool.submit { [self] _ in loop() }
    }

    /// Asks the loop to end (within one block interval); ``stop()`` waits for it.
    func beginStop() { stopping.store(true, ordering: .relaxed) }

    /// Ends the loop (within one block interval) and joins its thread, waiting no later than `deadline`
    /// (a hung Redis holds the read up to `REDIS_TIMEOUT_MS`: the thread then ends by itself).
    func stop(deadline: NIODeadline) async {
        beginStop()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let once = ResumeOnce(continuation)
            pool.shutdownGracefully { _ in once.resume(()) }
            let seconds = Double(max(0, (deadline - .now()).nanoseconds)) / 1e9
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { once.resume(()) }
        }
    }

    private func loop() {
        var transport: (any RedisTransport)? = nil
        var lastID = "$"
        var everConnected = false
        var errorLog = LogLimiter()
        while !stopping.load(ordering: .relaxed) {
            do throws(RedisConnection.Failure) {
                if transport == nil {
                    let connected = try connector.connect()
                    _ = try connected.command(["CLIENT", "SETNAME", "teltonika-ingest-notices"])
                    transport = connected
                    if everConnected { onResync() }
                    everConnected = true
                    // Read from the stream's last entry now, never with `$` again: `$` means "after the last
                    // entry at the time of this call", so each block that timed out with nothing read would
                    // skip whatever was added before the next call (a wake-up lost, a command left queued).
                    if lastID == "$" { lastID = try Self.lastEntryID(key, connected) }
                }
                let reply = try transport!.command(["XREAD", "COUNT", "1000", "BLOCK", String(blockMs), "STREAMS", key, lastID])
                if case .error(let message) = reply { throw RedisConnection.Failure(kind: .reply, message: message) }
                for (id, notice) in Self.entries(reply) {
                    lastID = id
                    read.increment()
                    if let notice { onNotice(notice) }
                }
            } catch {
                transport = nil
                errors.increment()
                if let heldBack = errorLog.admit(nowNanoseconds: NIODeadline.now().uptimeNanoseconds) {
                    logger.warning(
                        "notices stream unreadable: retrying",
                        metadata: ["event": "redis.notices_failed", "error": "\(error)", "suppressed": .stringConvertible(heldBack)]
                    )
                }
                // A pause before reconnecting, in steps so that a stop is not held up.
                for _ in 0..<10 where !stopping.load(ordering: .relaxed) { usleep(100_000) }
            }
        }
    }

    /// The id of the stream's last entry (`XREVRANGE key + - COUNT 1`), `0-0` when it has none.
    static func lastEntryID(_ key: String, _ transport: any RedisTransport) throws(RedisConnection.Failure) -> String {
        let reply = try transport.command(["XREVRANGE", key, "+", "-", "COUNT", "1"])
        if case .error(let message) = reply { throw RedisConnection.Failure(kind: .reply, message: message) }
        guard case .array(let entries) = reply, case .array(let entry)? = entries.first, case .string(let id)? = entry.first else {
            return "0-0"
        }
        return id
    }

    /// `(id, notice)` of each entry of an `XREAD` reply of one stream (the notice nil when it names no IMEI).
    static func entries(_ reply: RedisConnection.Reply) -> [(String, Notice?)] {
        guard case .array(let streams) = reply, case .array(let stream)? = streams.first, stream.count == 2,
            case .array(let entries) = stream[1]
        else { return [] }
        return entries.compactMap { entry in
            guard case .array(let parts) = entry, parts.count == 2, case .string(let id) = parts[0], case .array(let fields) = parts[1]
            else { return nil }
            var imei: IMEI? = nil
            var session: String? = nil
            var i = 0
            while i + 1 < fields.count {
                if case .string(let name) = fields[i], case .string(let value) = fields[i + 1] {
                    if name == "imei" { imei = IMEI(value) }
                    if name == "session" { session = value }
                }
                i += 2
            }
            return (id, imei.map { Notice(imei: $0, session: session) })
        }
    }
}
