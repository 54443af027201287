/// Budgets against hostile clients: device messages per connection, log lines per event kind, failed
/// logins per address (pure values on a caller-given monotonic clock, in nanoseconds, so tests drive them
/// without waiting), and the bytes buffered across all connections.
import Synchronization

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

/// Log lines of one kind across every connection: `burst` at once, then `perSecond`; the lines held back
/// are counted and reported on the next line written. For events each connection has at most once or
/// twice (a handshake timeout, a reset), which a storm of reconnects has by the ten thousand at once: the
/// first lines tell what happens, the metrics count every one.
struct LogSampler: Sendable, Equatable {
    private var bucket: MessageRateLimiter
    private var heldBack = 0

    init(perSecond: Int = 5, burst: Int = 50) {
        bucket = MessageRateLimiter(perSecond: perSecond, burst: burst)
    }

    /// nil: do not write this line (it is counted). Otherwise write it, with the number of lines held
    /// back since the previous one.
    mutating func admit(nowNanoseconds: UInt64) -> Int? {
        guard bucket.admit(nowNanoseconds: nowNanoseconds) else {
            heldBack += 1
            return nil
        }
        defer { heldBack = 0 }
        return heldBack
    }
}

/// Per source address: failed logins allowed before that address is refused on accept, as a token bucket
/// (`budgetPerMinute` at once, refilled at that rate). A pure value on a caller-given monotonic clock.
///
/// Bounded: at most `maxAddresses` buckets; past that, buckets that have refilled completely (addresses
/// that stopped failing) are dropped, and if all are still draining the oldest half is dropped (those
/// addresses start over with a full budget: the bound wins over the memory of a huge scan).
struct LoginFailureLimiter: Sendable {
    let budgetPerMinute: Int
    let maxAddresses: Int
    private var buckets: [String: (tokens: Double, last: UInt64)] = [:]

    init(budgetPerMinute: Int, maxAddresses: Int = 100_000) {
        precondition(budgetPerMinute > 0 && maxAddresses > 0, "a login-failure budget needs a positive rate and room")
        self.budgetPerMinute = budgetPerMinute
        self.maxAddresses = maxAddresses
    }

    /// Addresses tracked now.
    var count: Int { buckets.count }

    private func refilled(_ bucket: (tokens: Double, last: UInt64), at now: UInt64) -> Double {
        let elapsed = now > bucket.last ? Double(now - bucket.last) / 60e9 : 0
        return min(Double(budgetPerMinute), bucket.tokens + elapsed * Double(budgetPerMinute))
    }

    /// Whether `address` may open a connection now: false while its failures have used up the budget.
    func admits(_ address: String, now: UInt64) -> Bool {
        guard let bucket = buckets[address] else { return true }
        return refilled(bucket, at: now) >= 1
    }

    /// A login from `address` failed (refused, malformed, unknown device, or none in time).
    mutating func failed(_ address: String, now: UInt64) {
        let tokens = buckets[address].map { refilled($0, at: now) } ?? Double(budgetPerMinute)
        buckets[address] = (max(0, tokens - 1), now)
        if buckets.count > maxAddresses { prune(now: now) }
    }

    private mutating func prune(now: UInt64) {
        buckets = buckets.filter { refilled($0.value, at: now) < Double(budgetPerMinute) }
        guard buckets.count > maxAddresses else { return }
        let newest = buckets.sorted { $0.value.last > $1.value.last }.prefix(maxAddresses / 2)
        buckets = Dictionary(uniqueKeysWithValues: newest.map { ($0.key, $0.value) })
    }
}

/// The bytes all device connections hold in their receive buffers beyond a small allowance each
/// (`MAX_BUFFERED_BYTES`). A connection whose buffer would take the total past the limit is closed:
/// real devices send packets of at most 1,280 bytes and never need more than the allowance, so only
/// clients holding large partial frames (or pipelining without reading) meet the limit.
final class BufferBudget: Sendable {
    /// Bytes of buffer each connection holds without charge: every documented packet fits.
    static let allowance = 2048

    let limit: Int
    private let used = Atomic<Int>(0)

    init(limit: Int) {
        self.limit = limit
    }

    /// Bytes charged now, across connections.
    var inUse: Int { used.load(ordering: .relaxed) }

    /// Changes one connection's charge from `old` to `new` bytes. Growing past the limit is refused
    /// (false; nothing charged); shrinking always succeeds.
    func recharge(from old: Int, to new: Int) -> Bool {
        let delta = new - old
        guard delta > 0 else {
            used.subtract(-delta, ordering: .relaxed)
            return true
        }
        let after = used.add(delta, ordering: .relaxed).newValue
        guard after <= limit else {
            used.subtract(delta, ordering: .relaxed)
            return false
        }
        return true
    }
}
