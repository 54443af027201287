/// The publisher's decisions (connect, send, back off, check, stop), without a thread, a clock or a socket.
import NIOCore

/// What the publisher thread does next, decided from the time it is given and the work it reports;
/// the driver (``RedisPublisher``) carries the actions out and reports what happened.
///
/// ```
/// down(failures, nextAttempt) --connect ok--> up(refusals 0) --batch refused--> up(refusals n, pause)
///      ^   \--connect failed: failures+1,          |  \--batch stored: refusals 0
///      |      next attempt after backoff(failures) |
///      \------- connection lost (mid-batch: after backoff(1); health check: at once)
/// stop(deadline): finish when no work is left; at the deadline, abandon what is left (never ACKed)
/// ```
/// Backoff after n failures in a row: base × 2^(n-1), capped, times a jitter in 0.5...1 that the driver
/// draws (tests pass it). New work never shortens a wait for a reconnect; it does end a refusal pause
/// (so a job Redis keeps refusing does not hold back others).
struct PublisherStateMachine {
    struct Settings: Equatable {
        var reconnectBase: TimeAmount
        var reconnectMax: TimeAmount
        /// With nothing to send for this long the connection is checked (`PING`).
        var healthCheck: TimeAmount
        /// How often Redis' persistence settings are read again while connected.
        var durabilityCheck: TimeAmount
    }

    enum Link: Equatable {
        /// No connection: `failures` attempts in a row failed; the next one not before `nextAttempt`.
        case down(failures: Int, nextAttempt: NIODeadline)
        /// Connected. After `refusals` batches in a row with error replies, retried jobs wait until
        /// `pauseUntil` unless new work is queued.
        case up(refusals: Int, pauseUntil: NIODeadline)
    }

    /// The work the driver holds at a decision.
    struct Work: Equatable {
        /// Jobs refused or left unanswered, to send again first.
        var retrying: Bool
        /// Jobs waiting in the queue.
        var queued: Bool
        /// The earliest deadline among them (the driver wakes to expire it).
        var earliestDeadline: NIODeadline?

        static let none = Work(retrying: false, queued: false, earliestDeadline: nil)
        var any: Bool { retrying || queued }
    }

    enum Action: Equatable {
        /// Open a connection (and read Redis' persistence settings); report ``connected(at:)`` or
        /// ``connectFailed(at:jitter:)``.
        case connect
        /// Send the retried jobs, then queued ones, in one pipelined batch; report
        /// ``batchAnswered(at:refused:jitter:)`` or ``connectionLost(at:jitter:)``.
        case send
        /// Nothing to send for a while: `PING`; report ``pinged(at:)`` or ``droppedBetweenBatches(at:)``.
        case ping
        /// Read Redis' persistence settings again; report ``durabilityChecked(at:)`` or ``droppedBetweenBatches(at:)``.
        case checkDurability
        /// Sleep until `until`; with `wakeOnWork`, a new job ends the sleep early. A stop request always does.
        case wait(until: NIODeadline, wakeOnWork: Bool)
        /// The stop deadline passed: every job left completes `.expired` (never ACKed), then finish.
        case abandon
        /// Stopped and nothing left: close the connection, end the thread.
        case finish
    }

    let settings: Settings
    private(set) var link: Link
    private(set) var stopDeadline: NIODeadline? = nil
    /// When Redis last answered anything (the health check counts from here).
    private var lastAnswer: NIODeadline
    private var nextDurabilityCheck: NIODeadline

    /// Starts down, with a first attempt due at `now`.
    init(settings: Settings, now: NIODeadline) {
        self.settings = settings
        link = .down(failures: 0, nextAttempt: now)
        lastAnswer = now
        nextDurabilityCheck = now
    }

    /// What to do at `now` with `work` at hand.
    mutating func next(now: NIODeadline, work: Work) -> Action {
        if let stop = stopDeadline {
            if now >= stop { return .abandon }
            if !work.any { return .finish }
        }
        switch link {
        case .down(_, let nextAttempt):
            if now >= nextAttempt { return .connect }
            // Work waits for the attempt (it does not cut the backoff short), waking only to expire jobs.
            if work.any { return .wait(until: capped(min(nextAttempt, work.earliestDeadline ?? nextAttempt)), wakeOnWork: false) }
            return .wait(until: capped(nextAttempt), wakeOnWork: true)
        case .up(let refusals, let pauseUntil):
            if now >= nextDurabilityCheck { return .checkDurability }
            if work.any {
                if refusals > 0, now < pauseUntil, !work.queued {
                    return .wait(until: capped(min(pauseUntil, work.earliestDeadline ?? pauseUntil)), wakeOnWork: true)
                }
                return .send
            }
            let pingAt = lastAnswer + settings.healthCheck
            if now >= pingAt { return .ping }
            return .wait(until: capped(min(pingAt, nextDurabilityCheck)), wakeOnWork: true)
        }
    }

    // MARK: - Outcomes

    /// Connected (settings read): the failure count starts again.
    mutating func connected(at now: NIODeadline) {
        link = .up(refusals: 0, pauseUntil: now)
        lastAnswer = now
        nextDurabilityCheck = now + settings.durabilityCheck
    }

    /// A connect failed; returns the delay before the next attempt (what the log says and what is kept).
    mutating func connectFailed(at now: NIODeadline, jitter: Double) -> TimeAmount {
        guard case .down(let failures, _) = link else { preconditionFailure("connect failed while connected: \(link)") }
        let delay = backoff(failures: failures + 1, jitter: jitter)
        link = .down(failures: failures + 1, nextAttempt: now + delay)
        return delay
    }

    /// The connection broke during a batch (the unanswered jobs are retried), or was dropped for the
    /// `inARow`-th time running because the node refused writes as a replica (`READONLY`): the delay
    /// before reconnecting grows with that streak, so a Redis that stays read-only is not reconnected to
    /// ten times a second. Returns the delay.
    mutating func connectionLost(at now: NIODeadline, jitter: Double, inARow: Int = 1) -> TimeAmount {
        let delay = backoff(failures: max(1, inARow), jitter: jitter)
        link = .down(failures: max(1, inARow), nextAttempt: now + delay)
        return delay
    }

    /// Every job of a batch was answered; `refused` when some got an error reply (they are retried,
    /// after a pause that grows with each refused batch in a row).
    mutating func batchAnswered(at now: NIODeadline, refused: Bool, jitter: Double) {
        guard case .up(let refusals, _) = link else { preconditionFailure("batch answered while down: \(link)") }
        lastAnswer = now
        if refused {
            link = .up(refusals: refusals + 1, pauseUntil: now + backoff(failures: refusals + 1, jitter: jitter))
        } else {
            link = .up(refusals: 0, pauseUntil: now)
        }
    }

    /// The `PING` was answered.
    mutating func pinged(at now: NIODeadline) {
        lastAnswer = now
    }

    /// Redis' persistence settings were read; the next reading is due a period later.
    mutating func durabilityChecked(at now: NIODeadline) {
        lastAnswer = now
        nextDurabilityCheck = now + settings.durabilityCheck
    }

    /// The connection was closed with nothing in flight (a `PING` or settings check failed, or Sentinel named
    /// another primary): reconnect at once.
    mutating func droppedBetweenBatches(at now: NIODeadline) {
        link = .down(failures: 0, nextAttempt: now)
    }

    /// Stop taking work; finish what is left by `deadline`. The first deadline given stands.
    mutating func stop(deadline: NIODeadline) {
        if stopDeadline == nil { stopDeadline = deadline }
    }

    /// The wait after `failures` failures in a row (≥ 1).
    func backoff(failures: Int, jitter: Double) -> TimeAmount {
        let exponential = settings.reconnectBase.nanoseconds << Int64(min(max(failures - 1, 0), 16))
        let capped = min(settings.reconnectMax.nanoseconds, exponential)
        return .nanoseconds(Int64(Double(capped) * jitter))
    }

    private func capped(_ t: NIODeadline) -> NIODeadline {
        stopDeadline.map { min(t, $0) } ?? t
    }
}
