/// Redis Cluster addresses and redirects, as the server's cluster transport and the command-line tools
/// read them.

/// A cluster node's address, as `CLUSTER SLOTS`, `MOVED` and `ASK` give it.
public struct ClusterNode: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var host: String
    public var port: Int

    /// `host:port` (`[v6]:port` for an IPv6 address), as in logs and `REDIS_CLUSTER_NODES`.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses `host:port`, `[v6]:port` or `v6:port` (the port after the last colon); an empty host is
    /// `defaultHost` (Redis 7 writes `MOVED 3999 :6380` for "the host you are connected to").
    public init?(parsing text: some StringProtocol, defaultHost: String? = nil) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty {
            guard let defaultHost else { return nil }
            host = defaultHost
        }
        self.init(host: host, port: port)
    }

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public static func < (a: ClusterNode, b: ClusterNode) -> Bool { (a.host, a.port) < (b.host, b.port) }
}

/// A redirect in an error reply: `MOVED <slot> <host:port>` (the slot lives there now: update the map,
/// send there) or `ASK <slot> <host:port>` (this one command, during a migration: `ASKING` first, map
/// unchanged).
public enum ClusterRedirect: Equatable, Sendable {
    case moved(slot: Int, to: ClusterNode)
    case ask(slot: Int, to: ClusterNode)

    /// The redirect an error reply carries, if it is one; `replying` is the node that sent it (an empty
    /// host means its host).
    public init?(error message: String, replying: ClusterNode) {
        let parts = message.split(separator: " ")
        guard parts.count == 3, let slot = Int(parts[1]), (0..<ClusterSlot.count).contains(slot),
            let node = ClusterNode(parsing: parts[2], defaultHost: replying.host)
        else { return nil }
        switch parts[0] {
        case "MOVED": self = .moved(slot: slot, to: node)
        case "ASK": self = .ask(slot: slot, to: node)
        default: return nil
        }
    }

    public var node: ClusterNode {
        switch self {
        case .moved(_, let node), .ask(_, let node): node
        }
    }
}
