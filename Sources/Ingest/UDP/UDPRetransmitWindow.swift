/// What the UDP listener remembers of recent datagrams, so that a device's resend is answered without
/// storing its records twice. A pure value on a caller-given monotonic clock (tests drive it directly).
import Codec8
import NIOCore

/// Recent AVL packets by device and AVL packet ID, each with a hash of its data array and where its
/// ACK goes.
///
/// A device that misses an ACK resends the same datagram (same AVL packet ID, same records). The
/// window answers it:
/// - the first copy is stored (Redis confirmed it): ACK again at once, publish nothing;
/// - the first copy still waits for Redis: nothing now; when it is confirmed, one ACK goes to the
///   latest copy's address and packet ID;
/// - anything else (new, different records under a reused ID, forgotten, or the first copy failed):
///   publish it.
///
/// Bounded: one entry per (IMEI, AVL packet ID), so at most 256 per device, a newer packet replacing an
/// older one with the same ID; at most `capacity` entries in all (the oldest are forgotten first); an
/// entry is forgotten `ttlNanoseconds` after it was stored. A forgotten packet that is resent is stored
/// again: a duplicate entry in the stream, never a lost record.
struct UDPRetransmitWindow<Target> {
    struct Key: Hashable {
        let imei: IMEI
        let avlPacketID: UInt8
    }

    /// Identifies one admitted packet for its outcome (a newer packet under the same key has another).
    struct Ticket: Equatable {
        let key: Key
        let sequence: UInt64
    }

    enum Decision {
        /// New: publish it, then report ``stored(_:records:now:)`` or ``failed(_:)``.
        case publish(Ticket)
        /// Its first copy is stored: ACK this copy now with `records` accepted.
        case acknowledgeAgain(records: UInt8)
        /// Its first copy waits for Redis: that copy's ACK will answer this one.
        case joinPending
    }

    private enum State {
        case pending(reply: Target)
        case stored(records: UInt8)
    }

    private struct Entry {
        let payloadHash: Int
        let sequence: UInt64
        var state: State
        var expires: UInt64
    }

    let capacity: Int
    let ttlNanoseconds: UInt64
    private var entries: [Key: Entry] = [:]
    /// Keys in the order their expiry was set (so by expiry: the TTL is the same for all); an item whose
    /// entry was replaced, removed or refreshed since is stale and skipped.
    private var order = CircularBuffer<(key: Key, sequence: UInt64, expires: UInt64)>()
    private var nextSequence: UInt64 = 0

    init(capacity: Int, ttlNanoseconds: UInt64) {
        precondition(capacity > 0, "a retransmit window needs room for at least one packet")
        self.capacity = capacity
        self.ttlNanoseconds = ttlNanoseconds
    }

    /// Packets remembered now.
    var count: Int { entries.count }

    /// Expiry items kept (live and stale): stays within a constant factor of ``count``.
    var bookkeeping: Int { order.count }

    /// What to do with a datagram whose data array hashes to `payloadHash`; `reply` is where its ACK goes.
    mutating func admit(imei: IMEI, avlPacketID: UInt8, payloadHash: Int, reply: Target, now: UInt64) -> Decision {
        expire(now: now)
        let key = Key(imei: imei, avlPacketID: avlPacketID)
        if var entry = entries[key], entry.payloadHash == payloadHash {
            switch entry.state {
            case .stored(let records):
                return .acknowledgeAgain(records: records)
            case .pending:
                entry.state = .pending(reply: reply)
                entries[key] = entry
                return .joinPending
            }
        }
        nextSequence &+= 1
        let expires = now &+ ttlNanoseconds
        entries[key] = Entry(payloadHash: payloadHash, sequence: nextSequence, state: .pending(reply: reply), expires: expires)
        order.append((key, nextSequence, expires))
        evictOverCapacity()
        return .publish(Ticket(key: key, sequence: nextSequence))
    }

    /// Redis confirmed the packet: remember it as stored for the TTL. Returns where its ACK goes (the
    /// latest copy's target), or nil when the window no longer holds it (then answer the copy that was
    /// published).
    mutating func stored(_ ticket: Ticket, records: UInt8, now: UInt64) -> Target? {
        guard var entry = entries[ticket.key], entry.sequence == ticket.sequence, case .pending(let reply) = entry.state else {
            return nil
        }
        entry.state = .stored(records: records)
        entry.expires = now &+ ttlNanoseconds
        entries[ticket.key] = entry
        order.append((ticket.key, ticket.sequence, entry.expires))
        compactIfStale()
        return reply
    }

    /// The packet was not stored (Redis did not confirm it, the queue was full, or the server drains):
    /// forget it, so that its resend is published again.
    mutating func failed(_ ticket: Ticket) {
        if entries[ticket.key]?.sequence == ticket.sequence { entries[ticket.key] = nil }
    }

    /// Forgets stored packets whose TTL has passed. A pending packet stays until its outcome arrives
    /// (bounded by PUBLISH_TIMEOUT_MS), whatever its age.
    private mutating func expire(now: UInt64) {
        while let first = order.first, first.expires <= now {
            order.removeFirst()
            guard let entry = entries[first.key], entry.sequence == first.sequence, entry.expires == first.expires else { continue }
            if case .stored = entry.state { entries[first.key] = nil }
        }
    }

    /// Over capacity: forget the oldest entries, pending or not (a pending one's ACK still goes to the
    /// copy that was published).
    private mutating func evictOverCapacity() {
        while entries.count > capacity, let first = order.popFirst() {
            guard let entry = entries[first.key], entry.sequence == first.sequence, entry.expires == first.expires else { continue }
            entries[first.key] = nil
        }
        compactIfStale()
    }

    /// Keeps `order` within a constant factor of the entries: packets that keep replacing each other
    /// under one key would otherwise leave stale items behind until their TTL.
    private mutating func compactIfStale() {
        guard order.count > 2 * entries.count + 1024 else { return }
        order = CircularBuffer(
            entries.map { (key: $0.key, sequence: $0.value.sequence, expires: $0.value.expires) }.sorted { $0.expires < $1.expires }
        )
    }
}
