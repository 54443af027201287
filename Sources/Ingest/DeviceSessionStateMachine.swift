/// The life of one device connection as a channel-free state machine: events in, actions out.
import Codec8
import NIOCore

/// The life of one device connection, without a channel: events in, actions out.
///
/// ```
/// awaitingLogin --IMEI ok--> ready --AVL packet--> publishing --Redis confirmed--> ready (+ ACK)
///       |  \--bad IMEI: 0x00, close           |  \--keep-alive, Codec 12-15: stay ready
///       \--handshake timeout: close           \--bad frame: close, no ACK     \--not confirmed in time: close, no ACK
/// ```
/// At most one frame is in flight, an AVL packet *or* a device message (Codec 12-15); while it is, no
/// frame is handled and the handler does not read the socket, so a connection never buffers more than
/// one frame ahead whatever its peer sends. Device messages are also rate-limited per connection
/// (``MessageRateLimiter``): the excess is dropped and counted, never queued.
/// Draining (graceful shutdown) stops all reading for good: a packet in flight still gets its ACK
/// once Redis confirms it, and nothing after it is handled.
///
/// `InFlight` is what the handler keeps for the packet being published (its job and the time its
/// frame completed); tests use any value. ``DeviceSessionHandler`` only carries out the actions.
struct DeviceSessionStateMachine<InFlight> {
    enum State {
        case awaitingLogin
        case ready(IMEI)
        case publishing(IMEI, InFlight, Publishing)
        case closed
    }

    /// What is in flight.
    enum Publishing: Equatable {
        /// An AVL packet: ACKed with its record count once Redis confirms it.
        case packet(records: Int)
        /// A device message: never ACKed; reading resumes once Redis has answered (or given up).
        case message
    }

    private(set) var state = State.awaitingLogin
    private(set) var isDraining = false
    /// The device's IMEI from its accepted login on; kept after the server closes the connection, so
    /// that ``connectionClosed()`` can still name the registration to remove.
    private(set) var imei: IMEI? = nil
    private var messageLimiter: MessageRateLimiter
    /// How long a packet may wait for room in a full publish queue (`OVERFLOW_WAIT_MS`).
    private let overflowWait: TimeAmount
    /// When the queue first refused the packet in flight.
    private var queueFullSince: NIODeadline? = nil
    /// One log line per 10 s per kind of frequent event on this connection.
    private var messageLog = LogLimiter()
    private var rateLimitedLog = LogLimiter()
    private var overflowLog = LogLimiter()

    /// - Parameters:
    ///   - messageLimiter: the per-connection budget of device messages.
    ///   - overflowWait: how long a packet waits for room in a full publish queue.
    init(messageLimiter: MessageRateLimiter = MessageRateLimiter(perSecond: 10, burst: 50), overflowWait: TimeAmount = .seconds(1)) {
        self.messageLimiter = messageLimiter
        self.overflowWait = overflowWait
    }

    /// What the framer should cut next, or nil when no frame may be handled now (a packet in flight,
    /// draining, closed).
    var framerMode: TeltonikaFramer.Mode? {
        guard !isDraining else { return nil }
        switch state {
        case .awaitingLogin: return .login
        case .ready: return .packets
        case .publishing, .closed: return nil
        }
    }

    /// The packet or message being published, if any.
    var inFlight: InFlight? {
        if case .publishing(_, let inFlight, _) = state { return inFlight }
        return nil
    }

    /// Whether the socket may be read while a frame is in flight: only with nothing buffered (`buffered`
    /// bytes), so that at most one read waits behind the frame, and never while draining or closed.
    ///
    /// Why read at all then: NIO takes a connection's read interest out of epoll when a read is held and
    /// puts it back when the read is passed on, two `epoll_ctl` calls per packet. A device waits for its ACK
    /// before it sends again, so with the read passed on the socket stays armed and nothing is read.
    func mayReadAhead(buffered: Int) -> Bool {
        guard !isDraining, buffered == 0, case .publishing = state else { return false }
        return true
    }

    /// Whether an AVL packet (not a device message) is in flight.
    var packetInFlight: Bool {
        if case .publishing(_, _, .packet) = state { return true }
        return false
    }

    // MARK: - Frames

    enum LoginAction: Equatable {
        /// Register the device, answer 0x01.
        case accept(IMEI)
        /// Answer 0x00 and close; `result` is the `teltonika_handshake_total` label.
        case refuse(result: HandshakeResult, Codec8Error)
        /// A well-formed IMEI the device authority does not allow: answer 0x00 and close.
        case deny(IMEI)
    }

    /// A login frame was cut and parsed. Only while awaiting the login (the framer mode says so):
    /// anything else is a programming error and stops the process.
    mutating func loginReceived(_ parsed: Result<IMEI, Codec8Error>, isAllowed: (IMEI) -> Bool = { _ in true }) -> LoginAction {
        guard case .awaitingLogin = state else { preconditionFailure("a login frame in state \(state)") }
        switch parsed {
        case .success(let imei) where !isAllowed(imei):
            state = .closed
            return .deny(imei)
        case .success(let imei):
            state = .ready(imei)
            self.imei = imei
            return .accept(imei)
        case .failure(let error):
            state = .closed
            return .refuse(result: .rejected, error)
        }
    }

    enum PacketAction: Equatable {
        /// Stop reading, queue the packet for Redis; the ACK waits for ``published(_:)``.
        case publish
        /// A packet with no records: ACK 0 at once.
        case acknowledge(records: Int)
    }

    /// An AVL packet was decoded (and its records encoded for Redis); `inFlight` makes what the handler
    /// keeps for it, when it is to be published.
    mutating func packetDecoded(records: Int, inFlight: () -> InFlight) -> PacketAction {
        guard case .ready(let imei) = state else { preconditionFailure("a packet in state \(state)") }
        guard records > 0 else { return .acknowledge(records: 0) }
        state = .publishing(imei, inFlight(), .packet(records: records))
        queueFullSince = nil
        return .publish
    }

    enum QueueFullAction: Equatable {
        /// Try to queue the packet again after `after`.
        case retry(after: TimeAmount)
        /// No room came within `OVERFLOW_WAIT_MS`: count it and close without ACK (the device resends).
        case giveUp(waited: TimeAmount)
    }

    /// The publish queue had no room for the packet in flight at `now`: wait in short steps until
    /// `OVERFLOW_WAIT_MS` has passed since the first refusal, then give up.
    mutating func packetNotQueued(at now: NIODeadline) -> QueueFullAction {
        guard case .publishing(_, _, .packet) = state else { preconditionFailure("a queue refusal in state \(state)") }
        let since = queueFullSince ?? now
        queueFullSince = since
        let waited = now - since
        guard waited < overflowWait else { return .giveUp(waited: waited) }
        return .retry(after: min(.milliseconds(10), overflowWait - waited))
    }

    enum MessageAction: Equatable {
        /// Stop reading, queue the message for the responses stream; reading resumes after ``published(_:)``.
        case publish
        /// Over the connection's message budget: drop it (count it), keep reading.
        case rateLimited
    }

    /// A device message (Codec 12-15) was decoded and encoded for Redis at `nowNanoseconds` (monotonic).
    mutating func messageDecoded(nowNanoseconds: UInt64, inFlight: () -> InFlight) -> MessageAction {
        guard case .ready(let imei) = state else { preconditionFailure("a device message in state \(state)") }
        guard messageLimiter.admit(nowNanoseconds: nowNanoseconds) else { return .rateLimited }
        state = .publishing(imei, inFlight(), .message)
        return .publish
    }

    /// The publish queue had no room for the device message in flight: it is dropped (counted), and
    /// reading goes on (or the drained session closes).
    mutating func messageNotQueued() -> Next {
        guard case .publishing(let imei, _, .message) = state else {
            preconditionFailure("a queue refusal for a message that is not in flight: \(state)")
        }
        state = .ready(imei)
        return next
    }

    /// After an answer: read on, or close when draining.
    private var next: Next { isDraining ? .close : .read }

    enum RejectAction: Equatable {
        /// A malformed login: answer 0x00 and close; `result` is the `teltonika_handshake_total` label.
        case refuseLogin(result: HandshakeResult, Codec8Error)
        /// A bad frame after login: count it under `result` (`teltonika_frames_total`), close, no ACK.
        case close(result: FrameResult, Codec8Error)
    }

    /// The framer or the decoder refused the bytes.
    mutating func frameRejected(_ error: Codec8Error) -> RejectAction {
        let wasAwaitingLogin: Bool
        switch state {
        case .awaitingLogin: wasAwaitingLogin = true
        case .ready: wasAwaitingLogin = false
        case .publishing, .closed: preconditionFailure("a frame rejected in state \(state)")
        }
        state = .closed
        if wasAwaitingLogin, case .badIMEI = error { return .refuseLogin(result: .malformed, error) }
        return .close(result: FrameResult(error), error)
    }

    // MARK: - Redis

    /// What follows an answered frame.
    enum Next: Equatable {
        /// Read on.
        case read
        /// The session drains: close once what is being written is out.
        case close
    }

    enum PublishedAction: Equatable {
        /// Write the ACK; then read on, or close when draining.
        case acknowledge(records: Int, then: Next)
        /// The device message is in the responses stream.
        case messageStored(then: Next)
        /// Redis did not confirm the device message in time: log it (it is lost; the device does not
        /// resend messages).
        case messageNotStored(PublishFailure, then: Next)
        /// Redis did not confirm in time: close without ACK (the device resends).
        case closeUnconfirmed(PublishFailure)
        /// The job was dropped (its connection is closing anyway): close.
        case close
        /// No packet in flight any more (the connection closed first): nothing to do.
        case ignore
    }

    /// The publisher's answer for the packet in flight.
    mutating func published(_ outcome: PublishOutcome) -> PublishedAction {
        guard case .publishing(let imei, _, let publishing) = state else {
            // Legitimate only once the connection has closed (a job answered after its close).
            guard case .closed = state else { preconditionFailure("an answer with nothing in flight, in state \(state)") }
            return .ignore
        }
        switch (outcome, publishing) {
        case (.stored, .packet(let records)):
            state = .ready(imei)
            return .acknowledge(records: records, then: next)
        case (.stored, .message):
            state = .ready(imei)
            return .messageStored(then: next)
        case (.expired(let reason), .packet):
            return .closeUnconfirmed(reason)
        case (.expired(let reason), .message):
            state = .ready(imei)
            return .messageNotStored(reason, then: next)
        case (.dropped, _):
            return .close
        }
    }

    // MARK: - Logs

    /// The events a connection can repeat thousands of times a second, logged at most once per 10 s each.
    enum LogKind {
        /// `device.message`
        case message
        /// `device.message_rate_limited`
        case messageRateLimited
        /// `publish.overflow` for a device message
        case messageOverflow
    }

    /// Whether to write a line for `kind` now: nil to hold it back (counted), else the number held back
    /// since the previous line.
    mutating func admitLog(_ kind: LogKind, nowNanoseconds: UInt64) -> Int? {
        switch kind {
        case .message: messageLog.admit(nowNanoseconds: nowNanoseconds)
        case .messageRateLimited: rateLimitedLog.admit(nowNanoseconds: nowNanoseconds)
        case .messageOverflow: overflowLog.admit(nowNanoseconds: nowNanoseconds)
        }
    }

    // MARK: - Timers, drain, close

    /// The handshake timer fired: true when the device has still not logged in (close it).
    func handshakeTimedOut() -> Bool {
        if case .awaitingLogin = state, !isDraining { return true }
        return false
    }

    enum DrainAction: Equatable {
        /// Nothing in flight: close now.
        case close
        /// A packet or message is in flight: its answer comes first (an ACK for a packet), then the
        /// session closes (``published(_:)`` says `.close`).
        case finishInFlight
        /// Already closed: nothing to do.
        case none
    }

    /// Graceful shutdown: stop reading for good; close now, or once the frame in flight is answered.
    mutating func drain() -> DrainAction {
        isDraining = true
        switch state {
        case .awaitingLogin, .ready: return .close
        case .publishing: return .finishInFlight
        case .closed: return .none
        }
    }

    /// What the closed connection leaves behind.
    struct Ended {
        /// Unregister this device.
        var imei: IMEI?
        /// Cancel this packet or message (never ACKed; the device resends a packet).
        var abandoned: InFlight?
        /// Whether `abandoned` is an AVL packet (a drain waits for those).
        var abandonedPacket: Bool
        /// Whether bytes left in the buffer are a frame cut short by the device (counted and logged);
        /// false when the server closed it or was draining.
        var bufferedBytesAreTruncatedFrame: Bool
    }

    /// The connection is gone.
    mutating func connectionClosed() -> Ended {
        let closedByServer: Bool
        if case .closed = state { closedByServer = true } else { closedByServer = false }
        let ended = Ended(
            imei: imei,
            abandoned: inFlight,
            abandonedPacket: packetInFlight,
            bufferedBytesAreTruncatedFrame: !closedByServer && !isDraining
        )
        state = .closed
        return ended
    }
}
