/// Redis Cluster behind the publisher's seam: every job to the primary of its key's slot, pipelined per
/// primary, with redirects followed and a down primary holding back only its own slots' jobs.
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import RedisWire

/// A ``RedisTransport`` over one connection per primary of a Redis Cluster (hiredis 0.14 has no cluster
/// support: the routing is ours).
///
/// ### Purpose
/// A batch is split by the primary of each job's key (the second argument of its first command, read
/// from the RESP bytes; every command of a job has the same key). Each primary gets its jobs pipelined,
/// and with a ``ReplicaWait`` a `WAIT` of its own; all primaries' pipelines are sent before any reply
/// is read, so they are answered at once. Answers come back in the batch's order.
///
/// - `MOVED`: the slot moved (a resharding or a failover). The map is updated for that slot and read
///   again (`CLUSTER SLOTS`), and the redirected commands are sent to the new owner, up to
///   ``Settings/maxRedirects`` rounds per call; past that, the job is answered with the `MOVED` error
///   (refused: the publisher retries it).
/// - `ASK`: the slot is being migrated and the key is already on the importing node: `ASKING` and the
///   command are sent there, once, the map unchanged.
/// - `TRYAGAIN`, `CLUSTERDOWN` and every other error reply: the job's answer, as on one node (refused:
///   retried with backoff).
/// - A primary that cannot be reached (refused, timed out, broke mid-batch): its jobs are answered
///   `NODEDOWN <node> unreachable: ...` (not confirmed: retried like a refusal), jobs of the other primaries
///   in the same batch are answered as usual. It is dialed again in the background (never on the
///   publisher's thread) with backoff, and the map is read again at most once a second meanwhile, so a
///   failover's new primary takes over its slots. Only when no primary at all can be reached does the
///   batch report a ``BatchResult/failure`` (the publisher then reconnects, and is not ready).
final class ClusterTransport: RedisTransport {
    struct Settings: Sendable {
        /// Nodes asked for the slot map when no connected primary answers (`REDIS_CLUSTER_NODES`).
        var seeds: [ClusterNode]
        /// Connect and reply timeout (`REDIS_TIMEOUT_MS`).
        var timeoutMs: Int
        /// Redirect rounds one call follows for a job or a command.
        var maxRedirects = 5
        /// While a primary is down, the slot map is read again at most this often.
        var refreshInterval: TimeAmount = .seconds(1)
        /// Redial of a down primary: first delay and cap, doubled per failure.
        var redialBase: TimeAmount = .milliseconds(100)
        var redialMax: TimeAmount = .seconds(5)
    }

    /// An open connection to a primary.
    final class Link {
        let node: ClusterNode
        let connection: any ClusterNodeLink
        let id: SpreadWaits.ConnectionID
        /// Jobs written on it, and how many of the first of them a `WAIT` has confirmed.
        var writes = 0
        var confirmedWrites = 0

        init(node: ClusterNode, connection: any ClusterNodeLink) {
            self.node = node
            self.connection = connection
            id = Link.ids.withLockedValue { id in
                id += 1
                return id
            }
        }

        private static let ids = NIOLockedValueBox<SpreadWaits.ConnectionID>(0)
    }

    /// A primary without a connection: since when, how many dials failed, the last error.
    struct Down {
        var failures: Int
        var error: String
    }

    let settings: Settings
    let logger: Logger
    let metrics: ClusterMetrics
    let dialer: ClusterDialer
    /// The name each connection gets (`CLIENT SETNAME` through ``command(_:)`` renames them all).
    var clientName = "teltonika-ingest"
    var map = ClusterSlotMap()
    /// The map as `CLUSTER SLOTS` last gave it (``map`` plus what `MOVED`s said since), for the log.
    var lastRead = ClusterSlotMap()
    var links: [ClusterNode: Link] = [:]
    var down: [ClusterNode: Down] = [:]
    var lastRefresh = NIODeadline.distantPast
    /// The primaries when connected, for logs and to tell the publisher of a different cluster.
    private(set) var endpoint = ""

    /// Reads the slot map from a seed and connects to every primary (at once, waiting for them together
    /// up to the timeout). Throws when no seed gives a map or no primary can be reached.
    init(settings: Settings, dial: @escaping ClusterDial, logger: Logger, metrics: ClusterMetrics) throws(RedisConnection.Failure) {
        self.settings = settings
        self.logger = logger
        self.metrics = metrics
        dialer = ClusterDialer(dial: dial)
        if let failed = refresh(reason: "connect") {
            throw RedisConnection.Failure(kind: .connect, message: "no cluster node gave a slot map: \(failed)")
        }
        let missing = map.primaries.filter { links[$0] == nil }
        for node in missing { dialer.start(node, clientName: clientName) }
        dialer.wait(for: Set(missing), until: .now() + timeout)
        adoptDials()
        for node in missing where links[node] == nil && down[node] == nil {
            down[node] = Down(failures: 0, error: "not connected within \(settings.timeoutMs) ms")
        }
        guard !links.isEmpty else {
            let errors = down.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value.error)" }.joined(separator: "; ")
            throw RedisConnection.Failure(kind: .connect, message: "no primary of the cluster is reachable: \(errors)")
        }
        endpoint = map.primaries.map(\.description).joined(separator: ",")
    }

    var timeout: TimeAmount { .milliseconds(Int64(settings.timeoutMs)) }

    // MARK: - Batches

    /// Where one job of a batch stands.
    private struct Progress {
        var slot: Int?
        /// Not sent yet (the whole job goes out in the first round).
        var unsent = true
        /// Commands (by index) redirected, to send again, and the redirect.
        var redirected: [Int] = []
        var redirect: (ClusterRedirect, message: String)? = nil
        /// The first error reply: the job's answer (refused).
        var error: String? = nil
        /// Why it is in doubt or was not sent: its primary could not be reached.
        var unreachable: String? = nil
        /// Connections it was written on (a command answered with a stream id).
        var written: [SpreadWaits.ConnectionID] = []
        /// The byte range of each command, read when some are sent again on their own.
        var ranges: [Range<Int>]? = nil

        var needsSending: Bool { error == nil && unreachable == nil && (unsent || !redirected.isEmpty) }
    }

    /// Jobs (some of their commands) for one node in one round.
    private struct Item {
        var job: Int
        /// nil: every command of the job (the first round).
        var commands: [Int]?
        var asking: Bool
    }

    /// A batch spread over the primaries is answered out of order and may be redirected: `answered` is not
    /// called, the whole batch is answered at once.
    func send(_ jobs: [PublishJob], replicaWait: ReplicaWait?, answered: ([String?]) -> Void) -> BatchResult {
        maintain()
        var progress = jobs.map { job -> Progress in
            var p = Progress()
            if let arguments = RESPCommandScanner.arguments(in: job.commands.bytes, command: 0, limit: 2), arguments.count == 2 {
                p.slot = ClusterSlot.of(UnsafeRawBufferPointer(rebasing: job.commands.bytes[arguments[1]]))
            } else {
                p.error = "ERR teltonika-ingest: a job whose key cannot be read is not routed"
            }
            return p
        }
        var exchange = Exchange(replicaWait: replicaWait)
        var movedRefreshed = false
        for round in 0...settings.maxRedirects {
            var outgoing: [ClusterNode: [Item]] = [:]
            for index in progress.indices where progress[index].needsSending {
                let p = progress[index]
                let target: ClusterNode?
                switch p.redirect?.0 {
                case .ask(_, let node)?, .moved(_, let node)?: target = node
                case nil: target = p.slot.flatMap(map.primary(of:))
                }
                guard let target else {
                    progress[index].error = "CLUSTERDOWN Hash slot \(p.slot ?? -1) is not served by any primary in the slot map"
                    continue
                }
                let asking = if case .ask? = p.redirect?.0 { true } else { false }
                outgoing[target, default: []].append(Item(job: index, commands: p.unsent ? nil : p.redirected, asking: asking))
                progress[index].unsent = false
                progress[index].redirected = []
                progress[index].redirect = nil
            }
            // The first round also asks primaries holding writes no `WAIT` has confirmed (jobs held for replicas).
            var waitOn = Set(outgoing.keys)
            if round == 0 { waitOn.formUnion(links.values.filter { $0.writes > $0.confirmedWrites }.map(\.node)) }
            if outgoing.isEmpty && (replicaWait == nil || waitOn.isEmpty) { break }
            exchange.run(outgoing, waitOn: replicaWait == nil ? [] : waitOn, jobs: jobs, progress: &progress, transport: self)
            guard progress.contains(where: \.needsSending) else { break }
            if round == settings.maxRedirects {
                for index in progress.indices where progress[index].needsSending {
                    progress[index].error = progress[index].redirect?.message ?? "ERR too many redirects"
                }
            } else if exchange.moved && !movedRefreshed {
                movedRefreshed = true
                refresh(reason: "moved")
            }
        }
        return result(progress, exchange: exchange, replicaWait: replicaWait)
    }

    /// The batch's answers: in order, each job's first error, or why its primary could not be reached,
    /// or nil (written). Only when no primary is left does the batch fail, and then only the jobs
    /// before the first one in doubt count as answered.
    private func result(_ progress: [Progress], exchange: Exchange, replicaWait: ReplicaWait?) -> BatchResult {
        var answers = progress.map { $0.error ?? $0.unreachable }
        var failure: RedisConnection.Failure? = nil
        if links.isEmpty, let first = progress.firstIndex(where: { $0.unreachable != nil }) {
            answers = Array(answers[..<first])
            failure = RedisConnection.Failure(kind: exchange.lastFailure?.kind ?? .connect, message: progress[first].unreachable ?? "")
        }
        var result = BatchResult(answers: answers, replicas: exchange.replicas.min(), failure: failure)
        if replicaWait != nil {
            result.spread = SpreadWaits(
                written: progress.prefix(answers.count).map(\.written),
                confirmed: Set(links.values.filter { $0.writes == $0.confirmedWrites }.map(\.id)),
                open: Set(links.values.map(\.id)),
                waitRefused: exchange.waitRefused
            )
        }
        return result
    }

    /// One round's traffic, and what the rounds of a batch found.
    private struct Exchange {
        let replicaWait: ReplicaWait?
        /// What the `WAIT`s of the batch reported.
        var replicas: [Int] = []
        var waitRefused = false
        var moved = false
        var lastFailure: RedisConnection.Failure? = nil

        init(replicaWait: ReplicaWait?) { self.replicaWait = replicaWait }

        /// Sends every node its items (and a `WAIT` where asked), all nodes before any reply is read,
        /// then reads the replies node by node.
        mutating func run(
            _ outgoing: [ClusterNode: [Item]],
            waitOn: Set<ClusterNode>,
            jobs: [PublishJob],
            progress: inout [Progress],
            transport: ClusterTransport
        ) {
            var sent: [(link: Link, items: [Item], waitCovers: Int?)] = []
            for node in Set(outgoing.keys).union(waitOn).sorted() {
                let items = outgoing[node] ?? []
                guard let link = transport.link(for: node) else {
                    let reason = transport.unreachableMessage(node)
                    for item in items { progress[item.job].unreachable = reason }
                    continue
                }
                var appended: [Item] = []
                do throws(RedisConnection.Failure) {
                    for item in items {
                        let job = jobs[item.job]
                        if let commands = item.commands {
                            if progress[item.job].ranges == nil {
                                progress[item.job].ranges = RESPCommandScanner.commands(in: job.commands.bytes)
                            }
                            guard let ranges = progress[item.job].ranges, commands.allSatisfy({ $0 < ranges.count }) else {
                                progress[item.job].error = "ERR teltonika-ingest: a job's commands cannot be read again"
                                continue
                            }
                            for command in commands {
                                if item.asking { try link.connection.append(ClusterNodeLinks.asking) }
                                try link.connection.append(UnsafeRawBufferPointer(rebasing: job.commands.bytes[ranges[command]]))
                            }
                        } else {
                            try link.connection.append(job.commands.bytes)
                        }
                        appended.append(item)
                        link.writes += 1
                    }
                    var covers: Int? = nil
                    if let replicaWait, waitOn.contains(node) {
                        try link.connection.append(replicaWait.command)
                        covers = link.writes
                    }
                    try link.connection.flush()
                    sent.append((link, appended, covers))
                } catch {
                    lastFailure = error
                    transport.nodeFailed(node, error)
                    for item in items { progress[item.job].unreachable = transport.unreachableMessage(node) }
                }
            }
            for (link, items, covers) in sent {
                var current = 0
                do throws(RedisConnection.Failure) {
                    for (position, item) in items.enumerated() {
                        current = position
                        let commands = item.commands ?? Array(0..<jobs[item.job].commandCount)
                        for command in commands {
                            if item.asking { _ = try link.connection.replyError() }
                            take(
                                try link.connection.replyError(),
                                job: item.job,
                                command: command,
                                link: link,
                                progress: &progress,
                                transport: transport
                            )
                        }
                    }
                    current = items.count
                    if let covers, let replicaWait {
                        let reply = try link.connection.reply()
                        if let replicas = replicaWait.confirmedReplicas(reply) {
                            if replicas >= replicaWait.replicas { link.confirmedWrites = covers }
                            self.replicas.append(replicas)
                        } else {
                            waitRefused = true
                        }
                    }
                } catch {
                    lastFailure = error
                    transport.nodeFailed(link.node, error)
                    // Every job not answered in full on this node is in doubt (it may have been written).
                    for item in items[current...] { progress[item.job].unreachable = transport.unreachableMessage(link.node) }
                }
            }
        }

        /// Sorts one command's reply (its error message, nil for a stream id): written, redirected (to send
        /// again), or refused.
        private mutating func take(
            _ error: String?,
            job: Int,
            command: Int,
            link: Link,
            progress: inout [Progress],
            transport: ClusterTransport
        ) {
            guard let message = error else {
                if !progress[job].written.contains(link.id) { progress[job].written.append(link.id) }
                return
            }
            guard let redirect = ClusterRedirect(error: message, replying: link.node) else {
                if progress[job].error == nil { progress[job].error = message }
                return
            }
            transport.redirected(redirect)
            if case .moved = redirect { moved = true }
            progress[job].redirected.append(command)
            progress[job].redirect = (redirect, message)
        }
    }

    /// A redirect: counted; a `MOVED` also updates the slot's owner at once.
    func redirected(_ redirect: ClusterRedirect) {
        switch redirect {
        case .moved(let slot, let node):
            metrics.redirects(.moved).increment()
            map.assign(slot: slot, to: node)
        case .ask:
            metrics.redirects(.ask).increment()
        }
    }

    // MARK: - Single commands

    /// One command: to the primary of its key's slot (following redirects), to every primary (`PING`,
    /// `CONFIG GET`, `INFO`, `CLIENT SETNAME`; replies read as one, see ``ClusterReplies``), or to any.
    /// A primary that cannot be reached answers `NODEDOWN ...` as an error reply while another can;
    /// it throws only when none can.
    func command(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply {
        maintain()
        switch ClusterCommandRoute(arguments) {
        case .key(let key): return try keyed(arguments, slot: ClusterSlot.of(key))
        case .everyPrimary: return try everyPrimary(arguments)
        case .anyPrimary: return try anyPrimary(arguments)
        }
    }

    private func keyed(_ arguments: [String], slot: Int) throws(RedisConnection.Failure) -> RedisConnection.Reply {
        var target = map.primary(of: slot)
        var asking = false
        var refreshed = false
        var last = RedisConnection.Reply.error("ERR too many redirects")
        for _ in 0...settings.maxRedirects {
            guard let node = target else { return .error("CLUSTERDOWN Hash slot \(slot) is not served by any primary in the slot map") }
            guard let link = link(for: node) else { return try unreachable(node, nil) }
            let reply: RedisConnection.Reply
            do throws(RedisConnection.Failure) {
                if asking { try link.connection.append(ClusterNodeLinks.asking) }
                try link.connection.append(ClusterNodeLinks.format(arguments))
                if asking { _ = try link.connection.reply() }
                reply = try link.connection.reply()
            } catch {
                nodeFailed(node, error)
                return try unreachable(node, error)
            }
            guard case .error(let message) = reply, let redirect = ClusterRedirect(error: message, replying: node) else { return reply }
            redirected(redirect)
            last = reply
            target = redirect.node
            switch redirect {
            case .moved:
                asking = false
                if !refreshed {
                    refreshed = true
                    refresh(reason: "moved")
                }
            case .ask:
                asking = true
            }
        }
        return last
    }

    private func everyPrimary(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply {
        if arguments.count >= 3, arguments[0].uppercased() == "CLIENT" { clientName = arguments[2] }
        var replies: [RedisConnection.Reply] = []
        var failure: RedisConnection.Failure? = nil
        for node in map.primaries {
            guard let link = link(for: node) else { continue }
            do throws(RedisConnection.Failure) {
                replies.append(try link.connection.command(arguments))
            } catch {
                failure = error
                nodeFailed(node, error)
            }
        }
        guard !replies.isEmpty else { throw noPrimary(failure) }
        return ClusterReplies.combine(arguments, replies)
    }

    private func anyPrimary(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply {
        var failure: RedisConnection.Failure? = nil
        for node in map.primaries {
            guard let link = link(for: node) else { continue }
            do throws(RedisConnection.Failure) {
                return try link.connection.command(arguments)
            } catch {
                failure = error
                nodeFailed(node, error)
            }
        }
        throw noPrimary(failure)
    }

    /// A primary cannot be reached: an error reply while another can, a failure when none can.
    private func unreachable(_ node: ClusterNode, _ failure: RedisConnection.Failure?) throws(RedisConnection.Failure)
        -> RedisConnection.Reply
    {
        guard !links.isEmpty else { throw noPrimary(failure) }
        return .error(unreachableMessage(node))
    }

    private func noPrimary(_ failure: RedisConnection.Failure?) -> RedisConnection.Failure {
        RedisConnection.Failure(
            kind: failure?.kind ?? .connect,
            message: "no primary of the cluster is reachable" + (failure.map { " (last: \($0.message))" } ?? "")
        )
    }
}
