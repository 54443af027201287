/// The device registry in Redis: which instance holds each device, since when, and when it was last seen.
import Codec8
import NIOCore
import RedisWire
import Synchronization

/// Where the registry writes: Redis through the side channel, or a fake in unit tests.
protocol DeviceDirectory: Sendable {
    /// A token for a new session, unique across instances and restarts.
    func newSession() -> String
    /// `imei` logged in on this instance as `session` at `atMs` (wall clock); another live session of it
    /// elsewhere is told to close, the older of the two whichever is written first.
    func loggedIn(_ imei: IMEI, session: String, peer: String, atMs: UInt64)
    /// `imei` was seen now (and, with `recordAt`, its last packet was ACKed then, wall-clock ms).
    func seen(_ imei: IMEI, session: String, recordAt: UInt64?)
    /// The session ended.
    func loggedOut(_ imei: IMEI, session: String)
    /// The session the registry names for `imei` now (nil when none, or Redis did not answer), answered
    /// on any thread after every write queued before it.
    func currentSession(_ imei: IMEI, completion: @escaping @Sendable (String?) -> Void)
}

/// The device registry's keys: `<REDIS_DEVICE_PREFIX>:{IMEI}`, a hash (OPERATIONS.md, "Device registry").
public struct DeviceKeys: Sendable, Equatable {
    public let prefix: String

    public init(prefix: String) { self.prefix = prefix }

    public func device(_ imei: String) -> String { "\(prefix):{\(imei)}" }

    /// How long an entry is kept after its last write.
    public static let retentionMs = 7 * 86_400_000

    /// KEYS: device hash. ARGV: session, instance, peer, login_ms (when the device logged in), retention_ms.
    /// Returns `{'replaces', previous}` when another session was online and this login is newer (it is
    /// written), `{'older', current}` when the session online logged in later (two instances' writes can
    /// arrive in either order: this login is not written, and the older connection is the one to close),
    /// else nil.
    static let loginScript = """
        local previous = redis.call('HGET', KEYS[1], 'session')
        local online = redis.call('HGET', KEYS[1], 'online')
        local since = tonumber(redis.call('HGET', KEYS[1], 'connected_since_ms') or '0') or 0
        local live = online == '1' and previous and previous ~= ARGV[1]
        if live and since > tonumber(ARGV[4]) then return {'older', previous} end
        redis.call('HSET', KEYS[1], 'session', ARGV[1], 'instance', ARGV[2], 'peer', ARGV[3], 'connected_since_ms', ARGV[4],
          'last_seen_ms', ARGV[4], 'online', '1')
        redis.call('HDEL', KEYS[1], 'disconnected_at_ms')
        redis.call('PEXPIRE', KEYS[1], ARGV[5])
        if live then return {'replaces', previous} end
        return false
        """

    /// KEYS: device hash. ARGV: session, now_ms, last record ms ('' when none), retention_ms. Only while
    /// the session is the registered one (a replaced session does not write over its successor).
    static let seenScript = """
        if redis.call('HGET', KEYS[1], 'session') ~= ARGV[1] then return 0 end
        redis.call('HSET', KEYS[1], 'last_seen_ms', ARGV[2])
        if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'last_record_ms', ARGV[3]) end
        redis.call('PEXPIRE', KEYS[1], ARGV[4])
        return 1
        """

    /// KEYS: device hash. ARGV: session, now_ms, retention_ms.
    static let logoutScript = """
        if redis.call('HGET', KEYS[1], 'session') ~= ARGV[1] then return 0 end
        redis.call('HSET', KEYS[1], 'online', '0', 'disconnected_at_ms', ARGV[2], 'last_seen_ms', ARGV[2])
        redis.call('PEXPIRE', KEYS[1], ARGV[3])
        return 1
        """
}

/// The registry in Redis, written through the side channel: one write at login, at most one per
/// `DEVICE_SEEN_INTERVAL_MS` per session while it lives (the session limits itself), one at logout.
final class RedisDeviceDirectory: DeviceDirectory {
    private let keys: DeviceKeys
    private let noticesStream: String
    private let side: RedisSideChannel
    private let sessions = Atomic<UInt64>(0)

    init(keys: DeviceKeys, noticesStream: String, side: RedisSideChannel) {
        self.keys = keys
        self.noticesStream = noticesStream
        self.side = side
    }

    func newSession() -> String { "\(side.holder)#\(sessions.add(1, ordering: .relaxed).newValue)" }

    func loggedIn(_ imei: IMEI, session: String, peer: String, atMs: UInt64) {
        side.run { [keys, noticesStream] side in
            let outcome = side.eval(
                DeviceKeys.loginScript,
                keys: [keys.device(imei.description)],
                args: [session, side.instance, peer, String(atMs), String(DeviceKeys.retentionMs)]
            )
            // Two live sessions: the notice names the newer, and whichever instance holds the other closes it.
            guard case .array(let reply) = outcome, reply.count == 2, case .string(let kind) = reply[0],
                case .string(let current) = reply[1]
            else { return }
            let newer = kind == "older" ? current : session
            _ = side.call(["XADD", noticesStream, "MAXLEN", "~", "10000", "*", "imei", imei.description, "session", newer])
        }
    }

    func seen(_ imei: IMEI, session: String, recordAt: UInt64?) {
        side.run(droppable: true) { [keys] side in
            _ = side.eval(
                DeviceKeys.seenScript,
                keys: [keys.device(imei.description)],
                args: [session, String(wallClockMilliseconds()), recordAt.map { String($0) } ?? "", String(DeviceKeys.retentionMs)]
            )
        }
    }

    func currentSession(_ imei: IMEI, completion: @escaping @Sendable (String?) -> Void) {
        let queued = side.run(droppable: true) { [keys] side in
            if case .string(let session) = side.call(["HGET", keys.device(imei.description), "session"]) {
                completion(session)
            } else {
                completion(nil)
            }
        }
        if !queued { completion(nil) }
    }

    func loggedOut(_ imei: IMEI, session: String) {
        side.run { [keys] side in
            _ = side.eval(
                DeviceKeys.logoutScript,
                keys: [keys.device(imei.description)],
                args: [session, String(wallClockMilliseconds()), String(DeviceKeys.retentionMs)]
            )
        }
    }
}

/// Sent to a session whose device logged in as `session` (a notice): unless that is this session, the
/// registry is asked which session is current, and this one closes if it is not (a notice about an
/// older login than this one's changes nothing).
struct SessionLoggedInElsewhere: Sendable {
    let session: String
}

/// The registry as sessions use it: the directory and how often a session may write its last-seen time.
final class DeviceRegistration: Sendable {
    let directory: any DeviceDirectory
    let seenInterval: TimeAmount

    init(directory: any DeviceDirectory, seenInterval: TimeAmount) {
        self.directory = directory
        self.seenInterval = seenInterval
    }
}

/// One session's registration: its token, and the last-seen writes it owes (at most one per interval).
struct RegisteredSession {
    let imei: IMEI
    let session: String
    private var lastWrite: NIODeadline
    /// When the last packet was ACKed (wall ms) since the last write, if one was.
    private var recordAt: UInt64? = nil

    init(imei: IMEI, session: String, at now: NIODeadline) {
        self.imei = imei
        self.session = session
        lastWrite = now
    }

    /// A last-seen write: when the last packet was ACKed since the previous write (wall ms), if one was.
    struct Write: Equatable {
        var recordAt: UInt64?
    }

    /// The device was seen at `now` (with `record`: a packet was ACKed). Returns the write owed once the
    /// interval since the previous one has passed; nil otherwise.
    mutating func seen(at now: NIODeadline, wallMs: UInt64, record: Bool, interval: TimeAmount) -> Write? {
        if record { recordAt = wallMs }
        guard now - lastWrite >= interval else { return nil }
        lastWrite = now
        defer { recordAt = nil }
        return Write(recordAt: recordAt)
    }
}
