import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import RedisWire

@testable import Ingest

/// A Redis Cluster in memory that answers as Redis does: each node owns slots, stores `XADD`s of the keys
/// it holds, answers `MOVED` for slots it does not own and `ASK` for keys of a slot it is migrating
/// that it no longer has; a node can be down (dials fail, open connections break) or break after a number
/// of replies. `CLUSTER SLOTS` answers from ``published``, which a test may leave stale on purpose.
final class FakeCluster: @unchecked Sendable {
    final class Node {
        let address: ClusterNode
        /// Key → entries (the values of each XADD's last field).
        var keys: [String: [String]] = [:]
        /// What `WAIT` answers.
        var replicas = 1
        /// `CONFIG GET` values and `INFO` text.
        var config: [String: String] = ["appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"]
        var info = "# Server\r\nredis_version:7.0.15\r\n# Memory\r\nused_memory:1000\r\nmaxmemory:0\r\n"
        /// Down: dials fail and open connections break.
        var isDown = false
        /// Breaks its connections after this many more replies.
        var breakAfterReplies: Int? = nil
        /// An error every XADD gets (`TRYAGAIN ...`, `OOM ...`).
        var xaddError: String? = nil
        /// Commands received, by name, over every connection.
        var received: [String] = []
        var dials = 0
        var flushes = 0
        var names: [String] = []
        init(_ address: ClusterNode) { self.address = address }
    }

    let lock = NIOLock()
    private(set) var nodes: [ClusterNode: Node] = [:]
    /// Who owns each slot.
    var owners: [Int: ClusterNode] = [:]
    /// What `CLUSTER SLOTS` says (ranges to nodes); by default the truth.
    var published: [(ClosedRange<Int>, ClusterNode)]? = nil
    /// Slots being migrated: source → target.
    var migrating: [Int: ClusterNode] = [:]
    /// Called after each XADD a node stores (the count so far, over the cluster): a test moves keys here.
    var afterXadd: ((Int) -> Void)? = nil
    private var xadds = 0

    /// Nodes on ports 7000... each owning an equal share of the slots.
    init(primaries: Int) {
        let share = ClusterSlot.count / primaries
        for index in 0..<primaries {
            let address = ClusterNode(host: "10.0.0.1", port: 7000 + index)
            nodes[address] = Node(address)
            let last = index == primaries - 1 ? ClusterSlot.count - 1 : (index + 1) * share - 1
            for slot in (index * share)...last { owners[slot] = address }
        }
    }

    func node(_ port: Int) -> Node { nodes[ClusterNode(host: "10.0.0.1", port: port)]! }

    func addNode(_ port: Int) -> Node {
        let address = ClusterNode(host: "10.0.0.1", port: port)
        let node = Node(address)
        lock.withLock { nodes[address] = node }
        return node
    }

    /// The node that owns `key`'s slot.
    func owner(of key: String) -> Node { lock.withLock { nodes[owners[ClusterSlot.of(key)]!]! } }

    /// A key whose slot `port` owns, made from `prefix`.
    func key(on port: Int, prefix: String = "k") -> String {
        var n = 0
        while true {
            let key = "\(prefix)\(n)"
            if owners[ClusterSlot.of(key)]?.port == port { return key }
            n += 1
        }
    }

    /// Moves every slot of `from` to `to` (a failover), in the truth and, unless told, in what is published.
    func failover(from: Int, to: Int, publish: Bool = true) {
        lock.withLock {
            let old = ClusterNode(host: "10.0.0.1", port: from)
            let new = ClusterNode(host: "10.0.0.1", port: to)
            for (slot, owner) in owners where owner == old { owners[slot] = new }
            if publish { published = nil }
        }
    }

    var dial: ClusterDial {
        { [self] (address: ClusterNode, name: String) throws(RedisConnection.Failure) -> any ClusterNodeLink in
            let node = lock.withLock { () -> Node? in
                guard let node = nodes[address] else { return nil }
                node.dials += 1
                node.names.append(name)
                return node.isDown ? nil : node
            }
            guard let node else { throw RedisConnection.Failure(kind: .connect, message: "Connection refused") }
            return Link(cluster: self, node: node)
        }
    }

    /// The truth as `CLUSTER SLOTS` ranges.
    private func slotRanges() -> [(ClosedRange<Int>, ClusterNode)] {
        if let published { return published }
        var ranges: [(ClosedRange<Int>, ClusterNode)] = []
        var start = 0
        for slot in 1...ClusterSlot.count where slot == ClusterSlot.count || owners[slot] != owners[start] {
            if let owner = owners[start] { ranges.append((start...(slot - 1), owner)) }
            start = slot
        }
        return ranges
    }

    final class Link: ClusterNodeLink {
        let cluster: FakeCluster
        let node: Node
        private var queued: [[String]] = []
        private var broken = false
        private var asking = false

        init(cluster: FakeCluster, node: Node) {
            self.cluster = cluster
            self.node = node
        }

        private func check() throws(RedisConnection.Failure) {
            let down = cluster.lock.withLock { node.isDown }
            if down || broken {
                broken = true
                throw RedisConnection.Failure(kind: .io, message: "Connection reset by peer")
            }
        }

        func append(_ resp: UnsafeRawBufferPointer) throws(RedisConnection.Failure) {
            try append(Array(resp))
        }

        func append(_ resp: [UInt8]) throws(RedisConnection.Failure) {
            try check()
            guard let commands = RESPCommandScanner.commands(in: resp) else { fatalError("not RESP: \(resp)") }
            for range in commands {
                let arguments = RESPCommandScanner.arguments(in: resp, command: range.lowerBound)!
                queued.append(arguments.map { String(decoding: resp[$0], as: UTF8.self) })
            }
        }

        func flush() throws(RedisConnection.Failure) {
            try check()
            cluster.lock.withLock { node.flushes += 1 }
        }

        func reply() throws(RedisConnection.Failure) -> RedisConnection.Reply {
            try check()
            guard !queued.isEmpty else { fatalError("a reply was read with nothing sent") }
            let breakNow = cluster.lock.withLock { () -> Bool in
                guard let left = node.breakAfterReplies else { return false }
                node.breakAfterReplies = left - 1
                return left == 0
            }
            if breakNow {
                broken = true
                throw RedisConnection.Failure(kind: .eof, message: "Server closed the connection")
            }
            let arguments = queued.removeFirst()
            // A short WAIT blocks for its timeout, as Redis does (so a publisher asking again is paced).
            if arguments[0] == "WAIT", let wanted = Int(arguments[1]), let timeoutMs = UInt32(arguments[2]),
                cluster.lock.withLock({ node.replicas }) < wanted
            {
                usleep(timeoutMs * 1000)
            }
            let (reply, stored) = cluster.lock.withLock { () -> (RedisConnection.Reply, Int?) in
                node.received.append(arguments[0])
                return execute(arguments)
            }
            if let stored { cluster.afterXadd?(stored) }
            return reply
        }

        /// Runs a command as the node (under the cluster's lock); the XADD count when one was stored.
        private func execute(_ arguments: [String]) -> (RedisConnection.Reply, Int?) {
            let wasAsking = asking
            asking = false
            switch arguments[0].uppercased() {
            case "ASKING":
                asking = true
                return (.string("OK"), nil)
            case "PING": return (.string("PONG"), nil)
            case "WAIT": return (.integer(Int64(node.replicas)), nil)
            case "CLIENT":
                node.names.append(arguments[2])
                return (.string("OK"), nil)
            case "CONFIG": return (.array([.string(arguments[2]), .string(node.config[arguments[2]] ?? "")]), nil)
            case "INFO": return (.string(node.info), nil)
            case "CLUSTER":
                let ranges = cluster.slotRanges().map { range, owner -> RedisConnection.Reply in
                    .array([
                        .integer(Int64(range.lowerBound)), .integer(Int64(range.upperBound)),
                        .array([.string(owner.host), .integer(Int64(owner.port)), .string("id-\(owner.port)"), .array([])]),
                    ])
                }
                return (.array(ranges), nil)
            default:
                let key = arguments[0].uppercased() == "XINFO" ? arguments[2] : arguments[1]
                let slot = ClusterSlot.of(key)
                let owner = cluster.owners[slot]!
                let served: Bool
                if owner == node.address {
                    if let target = cluster.migrating[slot], node.keys[key] == nil { return (.error("ASK \(slot) \(target)"), nil) }
                    served = true
                } else {
                    served = wasAsking && cluster.migrating[slot] == node.address
                }
                guard served else { return (.error("MOVED \(slot) \(owner)"), nil) }
                switch arguments[0].uppercased() {
                case "XADD":
                    if let error = node.xaddError { return (.error(error), nil) }
                    node.keys[key, default: []].append(arguments.last!)
                    cluster.xadds += 1
                    return (.string("1-\(node.keys[key]!.count)"), cluster.xadds)
                case "XLEN": return (.integer(Int64(node.keys[key]?.count ?? 0)), nil)
                default: return (.string("OK \(arguments[0]) \(key)"), nil)
                }
            }
        }
    }
}

/// Jobs and transports for the cluster tests.
enum ClusterFixtures {
    /// A job of one `XADD <key> * v <value>` per value.
    static func job(_ key: String, _ values: [String], outcome: (@Sendable (PublishOutcome) -> Void)? = nil) -> PublishJob {
        var writer = RESPWriter()
        for value in values {
            writer.beginCommand(arguments: 5)
            for argument in ["XADD", key, "*", "v", value] { writer.bulk(string: argument) }
        }
        return PublishJob(
            commands: RESPBuffer(copying: writer.bytes, commands: values.count),
            recordCount: values.count,
            deadline: .now() + .seconds(5),
            completion: outcome ?? { _ in }
        )
    }

    static func transport(
        _ cluster: FakeCluster,
        seeds: [Int] = [7000],
        metrics: ClusterMetrics = ClusterMetrics(registry: .init()),
        redial: TimeAmount = .milliseconds(1),
        refreshInterval: TimeAmount = .seconds(1)
    ) throws -> ClusterTransport {
        var settings = ClusterTransport.Settings(seeds: seeds.map { ClusterNode(host: "10.0.0.1", port: $0) }, timeoutMs: 1000)
        settings.redialBase = redial
        settings.redialMax = redial
        settings.refreshInterval = refreshInterval
        return try ClusterTransport(settings: settings, dial: cluster.dial, logger: .init(label: "test"), metrics: metrics)
    }
}
