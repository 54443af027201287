/// Which IMEIs may log in: allow all, or an allowlist from a file or a Redis set, refreshed by whole swaps.
import Codec8
import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import RedisWire

/// `DEVICE_AUTHORITY_MODE`.
public enum DeviceAuthorityMode: String, Sendable, CaseIterable {
    /// Any well-formed IMEI logs in (no allowlist).
    case allowAll = "allow_all"
    /// `DEVICE_ALLOWLIST_FILE`: one IMEI a line.
    case file
    /// `REDIS_DEVICE_ALLOWLIST_KEY`: a Redis set of IMEIs, read with `SSCAN`.
    case redis
}

/// Why an allowlist could not be loaded (the last good one stays in force).
struct AllowlistError: Error, CustomStringConvertible {
    let description: String
}

/// Where the allowlist comes from.
protocol AllowlistSource: Sendable {
    /// The whole list now. Throws when it cannot be read or any entry is not an IMEI.
    func load() throws(AllowlistError) -> Set<IMEI>
    /// For logs: the file path, or the Redis key and endpoint.
    var description: String { get }
}

/// One IMEI (15 or 16 digits) a line; blank lines and `#` comments (whole-line or after the IMEI) ignored.
struct FileAllowlist: AllowlistSource {
    let path: String

    var description: String { path }

    func load() throws(AllowlistError) -> Set<IMEI> {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw AllowlistError(description: "cannot read \(path)")
        }
        return try Self.parse(text, name: path)
    }

    static func parse(_ text: String, name: String) throws(AllowlistError) -> Set<IMEI> {
        var out = Set<IMEI>()
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.prefix { $0 != "#" }.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !line.isEmpty else { continue }
            guard let imei = IMEI(line) else { throw AllowlistError(description: "\(name):\(number + 1): not an IMEI: '\(line)'") }
            out.insert(imei)
        }
        return out
    }
}

/// A Redis set, read whole with `SSCAN ... COUNT 1000` on a connection of its own (through the same
/// connector as the publisher: `REDIS_URL` or Sentinel, TLS as configured).
struct RedisAllowlist: AllowlistSource {
    let connector: any RedisConnector
    let key: String

    var description: String { "\(key) on \(connector.description)" }

    func load() throws(AllowlistError) -> Set<IMEI> {
        let transport: any RedisTransport
        do throws(RedisConnection.Failure) {
            transport = try connector.connect()
        } catch {
            throw AllowlistError(description: "\(error)")
        }
        var out = Set<IMEI>()
        var cursor = "0"
        repeat {
            let reply: RedisConnection.Reply
            do throws(RedisConnection.Failure) {
                reply = try transport.command(["SSCAN", key, cursor, "COUNT", "1000"])
            } catch {
                throw AllowlistError(description: "\(error)")
            }
            guard case .array(let pair) = reply, pair.count == 2, case .string(let next) = pair[0], case .array(let members) = pair[1]
            else {
                if case .error(let message) = reply { throw AllowlistError(description: "SSCAN \(key): \(message)") }
                throw AllowlistError(description: "SSCAN \(key): unexpected reply \(reply)")
            }
            for member in members {
                guard case .string(let text) = member, let imei = IMEI(text) else {
                    throw AllowlistError(description: "\(key): not an IMEI: \(member)")
                }
                out.insert(imei)
            }
            cursor = next
        } while cursor != "0"
        return out
    }
}

/// Which devices may log in, for every session and datagram. In `allow_all` every IMEI is allowed;
/// otherwise only those of the last list loaded, and none before the first load.
final class DeviceAuthority: Sendable {
    enum Verdict: Equatable {
        case allowed
        /// Not on the list.
        case unknown
        /// No list has been loaded yet.
        case notLoaded
    }

    let mode: DeviceAuthorityMode
    private let allowed = NIOLockedValueBox<Set<IMEI>?>(nil)

    init(mode: DeviceAuthorityMode) {
        self.mode = mode
    }

    func verdict(_ imei: IMEI) -> Verdict {
        guard mode != .allowAll else { return .allowed }
        return allowed.withLockedValue { set in
            guard let set else { return .notLoaded }
            return set.contains(imei) ? .allowed : .unknown
        }
    }

    /// Whether the server can serve: always in `allow_all`, else once a list was loaded.
    var isLoaded: Bool { mode == .allowAll || allowed.withLockedValue { $0 != nil } }

    /// Swaps in a whole new list; returns how many IMEIs it adds and removes.
    @discardableResult
    func replace(with next: Set<IMEI>) -> (added: Int, removed: Int) {
        allowed.withLockedValue { current in
            defer { current = next }
            guard let current else { return (next.count, 0) }
            return (next.subtracting(current).count, current.subtracting(next).count)
        }
    }
}

/// Loads the allowlist before the listener accepts, then every `DEVICE_ALLOWLIST_REFRESH_MS` and on
/// SIGHUP. A failed load keeps the last good list (logged, counted). After each successful load the
/// connections of devices no longer on the list are closed.
final class AllowlistRefresher: Sendable {
    private let source: any AllowlistSource
    private let authority: DeviceAuthority
    private let registry: DeviceRegistry
    private let metrics: IngestMetrics
    private let logger: Logger
    private let interval: TimeAmount
    /// Serializes loads (timer and SIGHUP).
    private let loading = NIOLock()
    /// Set by ``stop()``: the timer chain ends.
    private let stopped = NIOLockedValueBox(false)
    private let queue = DispatchQueue(label: "teltonika-ingest.allowlist")

    init(
        source: any AllowlistSource,
        authority: DeviceAuthority,
        registry: DeviceRegistry,
        metrics: IngestMetrics,
        logger: Logger,
        interval: TimeAmount
    ) {
        self.source = source
        self.authority = authority
        self.registry = registry
        self.metrics = metrics
        self.logger = logger
        self.interval = interval
    }

    /// Loads the list now (on the caller's thread); true when it was loaded.
    @discardableResult
    func refresh(reason: String) -> Bool {
        loading.withLock {
            let started = NIODeadline.now()
            let list: Set<IMEI>
            do throws(AllowlistError) {
                list = try source.load()
            } catch {
                metrics.allowlistRefreshes(.failed).increment()
                logger.error(
                    "allowlist not refreshed: keeping the last one",
                    metadata: [
                        "event": "allowlist.refresh_failed", "error": "\(error)", "source": "\(source.description)",
                        "reason": "\(reason)", "loaded": .stringConvertible(authority.isLoaded),
                    ]
                )
                return false
            }
            let change = authority.replace(with: list)
            metrics.allowlistRefreshes(.ok).increment()
            metrics.allowlistSize.set(Int64(list.count))
            metrics.allowlistLastSuccess.set(Int64(wallClockMilliseconds() / 1000))
            let revoked = registry.connections { !list.contains($0) }
            for channel in revoked { channel.pipeline.fireUserInboundEventTriggered(SessionRevoked()) }
            let level: Logger.Level = change.added > 0 || change.removed > 0 || reason != "timer" ? .info : .debug
            logger.log(
                level: level,
                "allowlist loaded",
                metadata: [
                    "event": "allowlist.loaded", "size": .stringConvertible(list.count), "added": .stringConvertible(change.added),
                    "removed": .stringConvertible(change.removed),
                    "connections_closed": .stringConvertible(revoked.count), "reason": "\(reason)", "source": "\(source.description)",
                    "ms": .stringConvertible((NIODeadline.now() - started).nanoseconds / 1_000_000),
                ]
            )
            return true
        }
    }

    /// Refreshes every interval from now on, off the caller's thread.
    func start() {
        queue.asyncAfter(deadline: .now() + .nanoseconds(Int(interval.nanoseconds))) { [self] in
            guard !stopped.withLockedValue({ $0 }) else { return }
            refresh(reason: "timer")
            start()
        }
    }

    /// SIGHUP: refresh now, off the signal handler's thread.
    func refreshSoon(reason: String) {
        queue.async { [self] in refresh(reason: reason) }
    }

    func stop() {
        stopped.withLockedValue { $0 = true }
    }
}

/// Sent to a connection whose IMEI left the allowlist: close.
struct SessionRevoked: Sendable {}
