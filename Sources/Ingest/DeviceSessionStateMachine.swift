import Codec8

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

    /// - Parameter messageLimiter: the per-connection budget of device messages.
    init(messageLimiter: MessageRateLimiter = MessageRateLimiter(perSecond: 10, burst: 50)) {
        self.messageLimiter = messageLimiter
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
        /// Not waiting for a login (cannot happen while the framer mode is honoured).
        case ignore
    }

    /// A login frame was cut and parsed.
    mutating func loginReceived(_ parsed: Result<IMEI, Codec8Error>) -> LoginAction {
        guard case .awaitingLogin = state else { return .ignore }
        switch parsed {
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
        /// Not logged in or a packet already in flight (cannot happen while the framer mode is honoured).
        case ignore
    }

    /// An AVL packet was decoded (and its records encoded for Redis); `inFlight` makes what the handler
    /// keeps for it, when it is to be published.
    mutating func packetDecoded(records: Int, inFlight: () -> InFlight) -> PacketAction {
        guard case .ready(let imei) = state else { return .ignore }
        guard records > 0 else { return .acknowledge(records: 0) }
        state = .publishing(imei, inFlight(), .packet(records: records))
        return .publish
    }

    enum MessageAction: Equatable {
        /// Stop reading, queue the message for the responses stream; reading resumes after ``published(_:)``.
        case publish
        /// Over the connection's message budget: drop it (count it), keep reading.
        case rateLimited
        /// Not logged in or something already in flight (cannot happen while the framer mode is honoured).
        case ignore
    }

    /// A device message (Codec 12-15) was decoded and encoded for Redis at `nowNanoseconds` (monotonic).
    mutating func messageDecoded(nowNanoseconds: UInt64, inFlight: () -> InFlight) -> MessageAction {
        guard case .ready(let imei) = state else { return .ignore }
        guard messageLimiter.admit(nowNanoseconds: nowNanoseconds) else { return .rateLimited }
        state = .publishing(imei, inFlight(), .message)
        return .publish
    }

    /// The publish queue had no room for the device message in flight: it is dropped (counted), and
    /// reading goes on. Returns whether to resume reading (false while draining or when nothing was in flight).
    mutating func messageNotQueued() -> Bool {
        guard case .publishing(let imei, _, .message) = state else { return false }
        state = .ready(imei)
        return !isDraining
    }

    enum RejectAction: Equatable {
        /// A malformed login: answer 0x00 and close; `result` is the `teltonika_handshake_total` label.
        case refuseLogin(result: HandshakeResult, Codec8Error)
        /// A bad frame after login: count it under `result` (`teltonika_frames_total`), close, no ACK.
        case close(result: FrameResult, Codec8Error)
    }

    /// The framer or the decoder refused the bytes.
    mutating func frameRejected(_ error: Codec8Error) -> RejectAction {
        let wasAwaitingLogin: Bool
        if case .awaitingLogin = state { wasAwaitingLogin = true } else { wasAwaitingLogin = false }
        state = .closed
        if wasAwaitingLogin, case .badIMEI = error { return .refuseLogin(result: .malformed, error) }
        return .close(result: FrameResult(error), error)
    }

    // MARK: - Redis

    enum PublishedAction: Equatable {
        /// Write the ACK; then read on unless the session is draining.
        case acknowledge(records: Int, resumeReading: Bool)
        /// The device message is in the responses stream; read on unless draining.
        case messageStored(resumeReading: Bool)
        /// Redis did not confirm the device message in time: log it (it is lost; the device does not
        /// resend messages); read on unless draining.
        case messageNotStored(String, resumeReading: Bool)
        /// Redis did not confirm in time: close without ACK (the device resends).
        case closeUnconfirmed(String)
        /// The job was dropped (its connection is closing anyway): close.
        case close
        /// No packet in flight any more (the connection closed first): nothing to do.
        case ignore
    }

    /// The publisher's answer for the packet in flight.
    mutating func published(_ outcome: PublishOutcome) -> PublishedAction {
        guard case .publishing(let imei, _, let publishing) = state else { return .ignore }
        switch (outcome, publishing) {
        case (.stored, .packet(let records)):
            state = .ready(imei)
            return .acknowledge(records: records, resumeReading: !isDraining)
        case (.stored, .message):
            state = .ready(imei)
            return .messageStored(resumeReading: !isDraining)
        case (.expired(let reason), .packet):
            return .closeUnconfirmed(reason)
        case (.expired(let reason), .message):
            state = .ready(imei)
            return .messageNotStored(reason, resumeReading: !isDraining)
        case (.dropped, _):
            return .close
        }
    }

    // MARK: - Timers, drain, close

    /// The handshake timer fired: true when the device has still not logged in (close it).
    func handshakeTimedOut() -> Bool {
        if case .awaitingLogin = state, !isDraining { return true }
        return false
    }

    /// Graceful shutdown: stop reading for good. A packet in flight still completes.
    mutating func drain() {
        isDraining = true
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
