/// A blocking Redis connection for the command-line tools that works against one Redis and against a
/// Redis Cluster alike, by following the cluster's redirects.

/// Commands go to the node of the URL; a `MOVED` or `ASK` error reply is followed to the node it names.
///
/// ### Purpose
/// `simulate --verify`, `command send` and `device` read and write a few keys, one command at a time,
/// each naming its key. Against a single Redis (or a Sentinel's primary) nothing changes: the URL's node
/// answers. Against a cluster any node will do as the URL: a key served elsewhere is answered
/// `MOVED <slot> <host:port>`; the command is sent there (a connection per node, opened on first use with
/// the URL's credentials and TLS), and the slot's node is remembered for the next command on a key of
/// that slot. `ASK` (a slot being migrated, the key already on the importing node) sends `ASKING` and
/// the command there, once, remembering nothing. After ``maxRedirects`` redirects the last error reply
/// is the answer. The server's own routing (a slot map, one pipeline per primary) is `ClusterTransport`
/// in Ingest: the tools send too little to need one.
public final class RedirectFollowingConnection {
    /// Redirects one command follows at most (a migration gives `ASK`, then at worst one `MOVED`).
    public static let maxRedirects = 5

    private let url: RedisURL
    private let timeoutMs: Int
    private let clientName: String?
    private let tls: RedisTLSContext?
    private let home: RedisConnection
    /// The URL's node, as redirects name nodes (nil for a Unix socket).
    private let homeNode: ClusterNode?
    private var others: [ClusterNode: RedisConnection] = [:]
    /// Slots a `MOVED` named the node of.
    private var owners: [Int: ClusterNode] = [:]
    /// Redirects followed so far.
    public private(set) var redirects = 0

    /// Connects to the URL's node (as ``RedisConnection/init(url:timeoutMs:clientName:tls:)``).
    public init(url: RedisURL, timeoutMs: Int, clientName: String? = nil, tls: RedisTLSContext? = nil) throws(RedisConnection.Failure) {
        self.url = url
        self.timeoutMs = timeoutMs
        self.clientName = clientName
        self.tls = tls
        home = try RedisConnection(url: url, timeoutMs: timeoutMs, clientName: clientName, tls: tls)
        if case .tcp(let host, let port) = url.endpoint { homeNode = ClusterNode(host: host, port: port) } else { homeNode = nil }
    }

    /// Runs one command whose key is `key` (nil: a command without a key, sent to the URL's node) and
    /// returns its reply, after the redirects it was given.
    public func command(_ arguments: [String], key: String?) throws(RedisConnection.Failure) -> RedisConnection.Reply {
        var target = key.flatMap { owners[ClusterSlot.of($0)] }
        var asking = false
        var reply = RedisConnection.Reply.null
        for round in 0...Self.maxRedirects {
            let connection = try self.connection(to: target)
            if asking { _ = try connection.command(["ASKING"]) }
            reply = try connection.command(arguments)
            let replying = target ?? homeNode ?? ClusterNode(host: "127.0.0.1", port: 6379)
            guard round < Self.maxRedirects, case .error(let message) = reply,
                let redirect = ClusterRedirect(error: message, replying: replying)
            else { return reply }
            redirects += 1
            switch redirect {
            case .moved(let slot, let node):
                owners[slot] = node
                (target, asking) = (node, false)
            case .ask(_, let node):
                (target, asking) = (node, true)
            }
        }
        return reply
    }

    /// The connection to `node` (nil or the URL's node: the first connection), opened on first use.
    private func connection(to node: ClusterNode?) throws(RedisConnection.Failure) -> RedisConnection {
        guard let node, node != homeNode else { return home }
        if let open = others[node] { return open }
        var nodeURL = url
        nodeURL.endpoint = .tcp(host: node.host, port: node.port)
        let connection = try RedisConnection(url: nodeURL, timeoutMs: timeoutMs, clientName: clientName, tls: tls)
        others[node] = connection
        return connection
    }
}
