/// ``ClusterTransport``'s view of the cluster: the slot map, which primaries it has connections to,
/// and the ones it is waiting to reach again.
import Logging
import NIOCore
import Prometheus
import RedisWire

extension ClusterTransport {
    /// Before each batch or command: connections dialed meanwhile are taken up (but not to nodes that
    /// serve no slot any more: a failed primary back as a replica), and while a primary is down the slot
    /// map is read again (at most every ``Settings/refreshInterval``), so a failover's new primary is
    /// found without waiting for a `MOVED`.
    func maintain() {
        adoptDials()
        for node in links.keys where !map.primaries.contains(node) { links.removeValue(forKey: node) }
        if !down.isEmpty, NIODeadline.now() - lastRefresh >= settings.refreshInterval {
            refresh(reason: "primary_down")
        }
    }

    /// The connection to `node`: the open one; none while it is down or being dialed; for a node never
    /// dialed (a redirect's target, a primary new in the map), one dialed now, waited for up to the timeout.
    func link(for node: ClusterNode) -> Link? {
        if let link = links[node] { return link }
        guard down[node] == nil, !dialer.isPending(node) else { return nil }
        dialer.start(node, clientName: clientName)
        dialer.wait(for: [node], until: .now() + timeout)
        adoptDials()
        if links[node] == nil, down[node] == nil {
            down[node] = Down(failures: 0, error: "not connected within \(settings.timeoutMs) ms")
        }
        return links[node]
    }

    /// Takes up finished dials: a connection replaces the node's down state (`redis.cluster_node_up`);
    /// a failure schedules the next attempt (while the node is a primary).
    func adoptDials() {
        for (node, outcome) in dialer.takeFinished() {
            switch outcome {
            case .success(let opened):
                guard links[node] == nil else { continue }
                links[node] = Link(node: node, connection: opened.link)
                if let was = down.removeValue(forKey: node), was.failures > 0 {
                    logger.info(
                        "redis cluster primary reachable again",
                        metadata: ["event": "redis.cluster_node_up", "node": "\(node)", "connection": "\(clientName)"]
                    )
                }
            case .failure(let error):
                markDown(node, error)
            }
        }
    }

    /// A connection to `node` failed (or could not be made): it is closed, the node is down until a
    /// dial succeeds (the next one after a backoff), and the slot map is read again soon.
    func nodeFailed(_ node: ClusterNode, _ error: RedisConnection.Failure) {
        links.removeValue(forKey: node)
        markDown(node, error)
    }

    private func markDown(_ node: ClusterNode, _ error: RedisConnection.Failure) {
        let failures = (down[node]?.failures ?? 0) + 1
        down[node] = Down(failures: failures, error: "\(error)")
        metrics.nodeFailures.increment()
        if failures == 1 {
            logger.warning(
                "redis cluster primary unreachable; its slots' writes wait",
                metadata: [
                    "event": "redis.cluster_node_down", "node": "\(node)", "error": "\(error)", "connection": "\(clientName)",
                    "slots": "\((0..<ClusterSlot.count).count(where: { map.primary(of: $0) == node }))",
                ]
            )
        }
        guard map.primaries.contains(node) else { return }
        let exponential = settings.redialBase.nanoseconds << Int64(min(failures - 1, 16))
        dialer.start(node, clientName: clientName, after: .nanoseconds(min(settings.redialMax.nanoseconds, exponential)))
    }

    /// The answer of a job or command whose primary cannot be reached.
    func unreachableMessage(_ node: ClusterNode) -> String {
        "NODEDOWN \(node) unreachable: \(down[node]?.error ?? "no connection")"
    }

    /// Reads the slot map (`CLUSTER SLOTS`) from a connected primary, else from the seeds; nil when read,
    /// else why not (`redis.cluster_slots_refresh_failed`). Connections to nodes that serve no slot
    /// any more are closed (writes held on them are written again elsewhere); a new primary is dialed
    /// when a job or command first needs it.
    @discardableResult
    func refresh(reason: String) -> String? {
        lastRefresh = .now()
        var errors: [String] = []
        var candidates = links.keys.sorted()
        candidates += settings.seeds.filter { links[$0] == nil && down[$0] == nil }
        candidates += settings.seeds.filter { links[$0] == nil && down[$0] != nil }
        for node in candidates {
            guard let link = links[node] ?? seedLink(node) else {
                errors.append("\(node): \(down[node]?.error ?? "no connection")")
                continue
            }
            let reply: RedisConnection.Reply
            do throws(RedisConnection.Failure) {
                reply = try link.connection.command(["CLUSTER", "SLOTS"])
            } catch {
                nodeFailed(node, error)
                errors.append("\(node): \(error)")
                continue
            }
            do throws(ClusterSlotMap.ParseError) {
                install(try ClusterSlotMap.parse(slots: reply, askedNode: node), from: node, reason: reason)
                return nil
            } catch {
                errors.append("\(node): \(error)")
            }
        }
        metrics.slotRefreshes(.failed).increment()
        let failed = errors.isEmpty ? "no node to ask" : errors.joined(separator: "; ")
        logger.warning(
            "redis cluster slot map not read",
            metadata: ["event": "redis.cluster_slots_refresh_failed", "reason": "\(reason)", "error": "\(failed)"]
        )
        return failed
    }

    /// A connection to a seed for `CLUSTER SLOTS`, dialed now (waited for up to the timeout).
    private func seedLink(_ node: ClusterNode) -> Link? {
        guard !dialer.isPending(node) else { return nil }
        dialer.start(node, clientName: clientName)
        dialer.wait(for: [node], until: .now() + timeout)
        adoptDials()
        return links[node]
    }

    private func install(_ new: ClusterSlotMap, from node: ClusterNode, reason: String) {
        let changed = new.changedSlots(from: lastRead)
        map = new
        lastRead = new
        metrics.slotRefreshes(.ok).increment()
        let metadata: Logger.Metadata = [
            "event": "redis.cluster_slots_refreshed", "reason": "\(reason)", "from": "\(node)", "changed_slots": "\(changed)",
            "covered_slots": "\(new.coveredSlots)", "primaries": "\(new.primaries.map(\.description).joined(separator: ","))",
            "connection": "\(clientName)",
        ]
        if changed > 0 && reason != "connect" {
            logger.info("redis cluster slot map changed", metadata: metadata)
        } else {
            logger.debug("redis cluster slot map read", metadata: metadata)
        }
        for stale in links.keys where !new.primaries.contains(stale) { links.removeValue(forKey: stale) }
        for stale in down.keys where !new.primaries.contains(stale) { down.removeValue(forKey: stale) }
    }
}
