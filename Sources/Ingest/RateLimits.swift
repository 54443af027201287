/// Per-connection budgets: how many device messages a connection may have stored, and how many log
/// lines one kind of event may write. Both are pure values on a caller-given monotonic clock (nanoseconds),
/// so tests drive them without waiting.

/// A token bucket: `burst` messages at once, refilled at `perSecond`. A device answering commands or
/// passing serial data through stays far below the default budget; a client streaming messages back
/// to back gets the excess dropped (counted), so it can neither flood Redis nor starve other devices.
struct MessageRateLimiter: Sendable, Equatable {
    let perSecond: Int
    let burst: Int
    private var tokens: Double
    private var last: UInt64? = nil

    init(perSecond: Int, burst: Int) {
        precondition(perSecond > 0 && burst > 0, "a message budget needs a positive rate and burst")
        self.perSecond = perSecond
        self.burst = burst
        tokens = Double(burst)
    }

    /// True when one more message fits the budget at `nowNanoseconds` (and takes it).
    mutating func admit(nowNanoseconds: UInt64) -> Bool {
        // Refill for the time since the last call; a clock that goes back earns nothing.
        if let last, nowNanoseconds > last {
            tokens = min(Double(burst), tokens + Double(nowNanoseconds - last) / 1e9 * Double(perSecond))
        }
        last = max(last ?? nowNanoseconds, nowNanoseconds)
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}

/// At most one log line per `interval` for one kind of event on one connection, however often the
/// event happens; the lines held back are counted and reported on the next line that is written.
struct LogLimiter: Sendable, Equatable {
    let intervalNanoseconds: UInt64
    private var nextAllowed: UInt64 = 0
    private var heldBack = 0

    /// The default: one line per 10 s per connection and kind.
    init(intervalNanoseconds: UInt64 = 10_000_000_000) {
        self.intervalNanoseconds = intervalNanoseconds
    }

    /// nil: do not write this line (it is counted). Otherwise write it, with the number of lines held
    /// back since the previous one.
    mutating func admit(nowNanoseconds: UInt64) -> Int? {
        guard nowNanoseconds >= nextAllowed else {
            heldBack += 1
            return nil
        }
        nextAllowed = nowNanoseconds + intervalNanoseconds
        defer { heldBack = 0 }
        return heldBack
    }
}
