/// One connection to one cluster node (the seam the routing is tested through), and the dialer that
/// opens them off the calling thread.
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import RedisWire

/// A connection to one node: what ``ClusterTransport`` needs of ``RedisWire/RedisConnection``, so a
/// fake can answer `MOVED`, `ASK`, errors, or break.
protocol ClusterNodeLink: AnyObject {
    /// Queues pre-formatted RESP commands (copied).
    func append(_ resp: UnsafeRawBufferPointer) throws(RedisConnection.Failure)
    /// Queues pre-formatted RESP commands.
    func append(_ resp: [UInt8]) throws(RedisConnection.Failure)
    /// Sends what is queued, without waiting for replies.
    func flush() throws(RedisConnection.Failure)
    /// The next reply (sending what is queued first).
    func reply() throws(RedisConnection.Failure) -> RedisConnection.Reply
    /// The next reply's error message, nil for any other reply (for `XADD`s, whose stream ids are not kept).
    func replyError() throws(RedisConnection.Failure) -> String?
}

extension ClusterNodeLink {
    /// ``reply()`` reduced to its error message (a fake's; ``RedisWire/RedisConnection`` reads it without
    /// making the reply, ``RedisWire/RedisConnection/replyError()``).
    func replyError() throws(RedisConnection.Failure) -> String? {
        if case .error(let message) = try reply() { message } else { nil }
    }
}

extension RedisConnection: ClusterNodeLink {}

extension ClusterNodeLink {
    /// One command and its reply.
    func command(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply {
        try append(ClusterNodeLinks.format(arguments))
        return try reply()
    }
}

enum ClusterNodeLinks {
    /// `arguments` as one RESP command.
    static func format(_ arguments: [String]) -> [UInt8] {
        var writer = RESPWriter()
        writer.beginCommand(arguments: arguments.count)
        for argument in arguments { writer.bulk(string: argument) }
        return writer.bytes
    }

    /// `ASKING`, RESP-formatted.
    static let asking = format(["ASKING"])
}

/// Opens a connection to a node, named (`CLIENT SETNAME`) as given; may block up to the connect timeout.
typealias ClusterDial = @Sendable (ClusterNode, _ clientName: String) throws(RedisConnection.Failure) -> any ClusterNodeLink

/// Runs dials on threads of their own, so the thread that owns the transport (the publisher's) never
/// waits for a node that does not answer (a stopped process accepts TCP connections and then says
/// nothing until the timeout). A dial's outcome waits here until the owner takes it.
final class ClusterDialer: @unchecked Sendable {
    /// A connection made on a dialer thread, handed to the owner's thread once (never used by two at once).
    final class Opened: @unchecked Sendable {
        let link: any ClusterNodeLink
        init(_ link: any ClusterNodeLink) { self.link = link }
    }

    private let dial: ClusterDial
    private let condition = NSCondition()
    // Guarded by `condition`:
    private var running: Set<ClusterNode> = []
    private var outcomes: [ClusterNode: Result<Opened, RedisConnection.Failure>] = [:]

    init(dial: @escaping ClusterDial) { self.dial = dial }

    /// Starts dialing `node` after `delay` unless a dial of it is running or its outcome waits.
    func start(_ node: ClusterNode, clientName: String, after delay: TimeAmount = .zero) {
        condition.lock()
        defer { condition.unlock() }
        guard !running.contains(node), outcomes[node] == nil else { return }
        running.insert(node)
        let dial = self.dial
        // A queue of its own per dial: it gets a thread at once however many dials block (a node that
        // says nothing holds one until the timeout). The shared global queue has one thread per core,
        // so blocked dials, or anything else busy there, delayed the next dial past the owner's wait.
        let queue = DispatchQueue(label: "teltonika-ingest.cluster-dial")
        queue.asyncAfter(deadline: .now() + .nanoseconds(Int(max(0, delay.nanoseconds)))) { [self] in
            let outcome: Result<Opened, RedisConnection.Failure>
            do throws(RedisConnection.Failure) {
                outcome = .success(Opened(try dial(node, clientName)))
            } catch {
                outcome = .failure(error)
            }
            condition.lock()
            running.remove(node)
            outcomes[node] = outcome
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Whether a dial of `node` is running or its outcome waits to be taken.
    func isPending(_ node: ClusterNode) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return running.contains(node) || outcomes[node] != nil
    }

    /// Waits until none of `nodes` is being dialed, or `deadline`.
    func wait(for nodes: Set<ClusterNode>, until deadline: NIODeadline) {
        condition.lock()
        defer { condition.unlock() }
        while !running.isDisjoint(with: nodes) {
            let left = deadline - .now()
            guard left > .zero else { return }
            _ = condition.wait(until: Date().addingTimeInterval(Double(left.nanoseconds) / 1e9))
        }
    }

    /// The finished dials' outcomes (each handed out once).
    func takeFinished() -> [ClusterNode: Result<Opened, RedisConnection.Failure>] {
        condition.lock()
        defer { condition.unlock() }
        defer { outcomes = [:] }
        return outcomes
    }
}
