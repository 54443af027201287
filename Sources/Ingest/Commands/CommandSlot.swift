/// One device connection's downlink command slot, as a channel-free state machine: events in, actions out.
import Codec8
import NIOCore

/// A command a session took from Redis (its lease is held): what to write and how to correlate the answer.
struct TakenCommand: Sendable, Equatable {
    var id: String
    /// `.codec12` or `.codec14`.
    var codec: DeviceMessage.Codec
    var payload: [UInt8]
    /// 1 for the first write, 2 for the first resend (only with `retry_on_timeout`).
    var attempt: Int

    /// The frame written to the device.
    func frame(for imei: IMEI) -> [UInt8] {
        DeviceMessage(
            codec: codec,
            type: DeviceMessage.typeCommand,
            imei: codec == .codec14 ? imei.description : nil,
            payload: payload
        ).encoded()
    }
}

/// How a command ended, as recorded on it and on the command-events stream (`status`).
enum CommandOutcome: String, Sendable, CaseIterable {
    case answered
    case nack
    case timeout
    case late
    case expired
    case unknown
    /// Not sendable as stored (codec not 12/14, payload not hex, empty or over 160 bytes): never written.
    case rejected
}

/// What the command store answered to a take.
enum TakeResult: Sendable, Equatable {
    /// The next command, its lease now held by this instance.
    case command(TakenCommand)
    /// Nothing queued.
    case empty
    /// Another holder's lease (another connection, instance, or a grace window): try again after it.
    case busy(retryAfterMs: Int)
    /// Redis did not answer: nothing is sent; try again later.
    case failed
}

/// The downlink side of one device session: at most one command in flight.
///
/// ```
/// idle --opportunity--> taking --command--> holding --session idle--> sent --answer--> idle (answered/nack)
///  ^                      |empty/busy/failed                           |timeout
///  +----------------------+                                  grace ----+--answer--> idle (late)
///  +----------------------------------------- grace over --------+
/// ```
/// A command is written only when the session is idle (logged in, no AVL packet awaiting Redis or its
/// ACK, nothing buffered), so it never splits a packet and its ACK. Nothing else is written while one is
/// sent or in its grace window, so an answer is attributed without doubt. Nothing is ever re-sent here:
/// a resend (`retry_on_timeout`) is a new take of the same command after the grace window.
struct CommandSlot {
    enum State: Equatable {
        /// No command taken; `mayHavePending`: a take is worth trying (login, a wake-up notice, an answer).
        case idle(mayHavePending: Bool)
        /// A take request is out.
        case taking
        /// Taken (lease held), waiting for the session to be idle.
        case holding(TakenCommand)
        /// Written at `at`; the answer is awaited until `at + timeout`.
        case sent(TakenCommand, at: NIODeadline)
        /// Timed out; an answer until `until` is `late`; nothing else is sent meanwhile.
        case grace(TakenCommand, sentAt: NIODeadline, until: NIODeadline)
        case closed
    }

    private(set) var state = State.idle(mayHavePending: false)
    /// No take before the login grace is over (the device's first packets go first).
    private(set) var loginGraceOver = false
    let timeout: TimeAmount
    let lateGrace: TimeAmount

    init(timeout: TimeAmount, lateGrace: TimeAmount) {
        self.timeout = timeout
        self.lateGrace = lateGrace
    }

    enum Action: Equatable {
        case none
        /// Ask the store for the next command.
        case take
        /// Write this command now (the session is idle); record it as sent.
        case write(TakenCommand)
    }

    /// The login grace is over: commands may be taken from now on.
    mutating func loginGraceEnded() {
        loginGraceOver = true
        if case .idle = state { state = .idle(mayHavePending: true) }
    }

    /// A wake-up notice for this device (a command was queued, a lease released).
    mutating func wake() {
        if case .idle = state { state = .idle(mayHavePending: true) }
    }

    /// A moment to act: after login grace, a wake-up notice, an ACK, a take answer. `sessionIdle`: the
    /// session is logged in, has no packet in flight and nothing buffered, and is not draining.
    mutating func opportunity(sessionIdle: Bool, now: NIODeadline) -> Action {
        switch state {
        case .idle(true) where loginGraceOver:
            state = .taking
            return .take
        case .holding(let command) where sessionIdle:
            state = .sent(command, at: now)
            return .write(command)
        default:
            return .none
        }
    }

    enum TakeAction: Equatable {
        /// Nothing more now (a command is held until the session is idle, or the queue was empty).
        case none
        /// Try again after this long (another holder's lease, or Redis failed).
        case retry(after: TimeAmount)
        /// The connection closed while the take was out: give the command back.
        case giveBack(TakenCommand)
    }

    /// The store answered a take.
    mutating func takeAnswered(_ result: TakeResult) -> TakeAction {
        guard case .taking = state else {
            if case .command(let command) = result { return .giveBack(command) }
            return .none
        }
        switch result {
        case .command(let command):
            state = .holding(command)
            return .none
        case .empty:
            state = .idle(mayHavePending: false)
            return .none
        case .busy(let ms):
            state = .idle(mayHavePending: false)
            return .retry(after: .milliseconds(Int64(max(ms, 10))))
        case .failed:
            state = .idle(mayHavePending: false)
            return .retry(after: .seconds(5))
        }
    }

    /// When the next timer should fire (the answer's deadline or the end of the grace window).
    var deadline: NIODeadline? {
        switch state {
        case .sent(_, let at): at + timeout
        case .grace(_, _, let until): until
        default: nil
        }
    }

    enum TimerAction: Equatable {
        case none
        /// No answer in time: record `timeout`, keep the lease through the grace window.
        case timedOut(TakenCommand, holdLeaseFor: TimeAmount)
        /// The grace window is over: release the lease; look for the next command.
        case graceOver(TakenCommand)
    }

    mutating func timerFired(now: NIODeadline) -> TimerAction {
        switch state {
        case .sent(let command, let at) where now >= at + timeout:
            state = .grace(command, sentAt: at, until: now + lateGrace)
            return .timedOut(command, holdLeaseFor: lateGrace)
        case .grace(let command, _, let until) where now >= until:
            state = .idle(mayHavePending: true)
            return .graceOver(command)
        default:
            return .none
        }
    }

    /// What kind of answer a device message is.
    enum Answer: Equatable {
        /// Codec 12 or 14 response (type 0x06).
        case response
        /// Codec 14 nACK (type 0x11): the IMEI did not match.
        case notAcknowledged
    }

    /// The answer's attribution: which command, how it ended, after how long.
    struct Correlation: Equatable {
        var command: TakenCommand
        var outcome: CommandOutcome
        var latency: TimeAmount
    }

    /// A response arrived; nil when no command is sent or in its grace window (uncorrelated).
    mutating func answerReceived(_ answer: Answer, now: NIODeadline) -> Correlation? {
        switch state {
        case .sent(let command, let at):
            state = .idle(mayHavePending: true)
            return Correlation(command: command, outcome: answer == .response ? .answered : .nack, latency: now - at)
        case .grace(let command, let at, _):
            state = .idle(mayHavePending: true)
            return Correlation(command: command, outcome: .late, latency: now - at)
        default:
            return nil
        }
    }

    enum CloseAction: Equatable {
        case none
        /// Taken, never written: back to the queue, unchanged.
        case giveBack(TakenCommand)
        /// Written, no answer: the device may or may not have run it (`unknown`).
        case unknown(TakenCommand)
        /// Timed out earlier: release the lease.
        case release(TakenCommand)
    }

    /// The connection is gone.
    mutating func connectionClosed() -> CloseAction {
        let previous = state
        state = .closed
        switch previous {
        case .holding(let command): return .giveBack(command)
        case .sent(let command, _): return .unknown(command)
        case .grace(let command, _, _): return .release(command)
        case .idle, .taking, .closed: return .none
        }
    }
}
