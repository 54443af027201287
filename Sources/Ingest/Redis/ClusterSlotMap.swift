/// Redis Cluster topology as the server sees it: nodes, the slot map (`CLUSTER SLOTS`), redirects.
import RedisWire

/// Which primary serves each of the 16384 slots.
struct ClusterSlotMap: Equatable, Sendable {
    /// The primaries that serve at least one slot, in address order.
    private(set) var primaries: [ClusterNode] = []
    /// Per slot, the index of its primary in `primaries`; ``unassigned`` when no primary serves it.
    private var owners = [UInt16](repeating: ClusterSlotMap.unassigned, count: ClusterSlot.count)
    private static let unassigned = UInt16.max

    /// The primary of `slot`; nil when none serves it (the cluster is missing slots).
    func primary(of slot: Int) -> ClusterNode? {
        let index = owners[slot]
        return index == Self.unassigned ? nil : primaries[Int(index)]
    }

    /// Slots some primary serves.
    var coveredSlots: Int { owners.count(where: { $0 != Self.unassigned }) }

    /// Slots whose primary differs between the two maps.
    func changedSlots(from other: ClusterSlotMap) -> Int {
        (0..<ClusterSlot.count).count(where: { primary(of: $0) != other.primary(of: $0) })
    }

    /// Records what a `MOVED` says: `slot` is served by `node` now.
    mutating func assign(slot: Int, to node: ClusterNode) {
        owners[slot] = index(of: node)
    }

    /// Assigns `slots` to `node`.
    mutating func assign(_ slots: ClosedRange<Int>, to node: ClusterNode) {
        let index = index(of: node)
        for slot in slots { owners[slot] = index }
    }

    private mutating func index(of node: ClusterNode) -> UInt16 {
        if let existing = primaries.firstIndex(of: node) { return UInt16(existing) }
        // Kept in address order: indices after the new one move up by one.
        let position = primaries.firstIndex { node < $0 } ?? primaries.count
        primaries.insert(node, at: position)
        for slot in owners.indices where owners[slot] != Self.unassigned && owners[slot] >= UInt16(position) { owners[slot] += 1 }
        return UInt16(position)
    }

    /// Why a `CLUSTER SLOTS` reply could not be read.
    struct ParseError: Error, Equatable, CustomStringConvertible {
        var description: String
    }

    /// The map from a `CLUSTER SLOTS` reply, asked of `askedNode`:
    ///
    /// ```
    /// 1) 1) (integer) 0            first slot
    ///    2) (integer) 5460         last slot
    ///    3) 1) "127.0.0.1"         the primary: preferred endpoint ("" = the node asked; "?" = unknown),
    ///       2) (integer) 7100                   port, node id, then (7.0+) a map of hostnames
    ///       3) "57bc4b21..."
    ///    4) ...                    replicas, same form (not used: writes go to primaries)
    /// ```
    ///
    /// A range whose primary's endpoint is unknown (`?`) stays unassigned (its jobs are refused until
    /// a later refresh names one); a reply that is not this shape, or covers no slot, is an error.
    static func parse(slots reply: RedisConnection.Reply, askedNode: ClusterNode) throws(ParseError) -> ClusterSlotMap {
        guard case .array(let ranges) = reply else { throw ParseError(description: "CLUSTER SLOTS answered \(reply)") }
        var map = ClusterSlotMap()
        for range in ranges {
            guard case .array(let fields) = range, fields.count >= 3, case .integer(let first) = fields[0],
                case .integer(let last) = fields[1], 0 <= first, first <= last, last < ClusterSlot.count,
                case .array(let primary) = fields[2], primary.count >= 2, case .string(let host) = primary[0],
                case .integer(let port) = primary[1], (1...65535).contains(port)
            else { throw ParseError(description: "CLUSTER SLOTS: unexpected range \(range)") }
            if host == "?" { continue }
            map.assign(Int(first)...Int(last), to: ClusterNode(host: host.isEmpty ? askedNode.host : host, port: Int(port)))
        }
        guard map.coveredSlots > 0 else { throw ParseError(description: "CLUSTER SLOTS: no slot is served (\(reply))") }
        return map
    }
}
