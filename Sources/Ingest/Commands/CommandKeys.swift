/// Where downlink commands live in Redis, and the scripts that move them: one place, shared by the
/// server, the `command` tool and the recipe in OPERATIONS.md.
import Codec8

/// The Redis key layout of downlink commands (OPERATIONS.md, "Downlink commands").
///
/// Every key of one device carries the hash tag `{IMEI}`, so one device's queue, commands and lease
/// live in one cluster slot and each script touches one slot:
/// - `<prefix>:{IMEI}:queue`: a list of command ids, oldest first; the head is the next or current one;
/// - `<prefix>:{IMEI}:cmd:<id>`: a hash per command (its text, state and timestamps);
/// - `<prefix>:{IMEI}:lease`: `"<holder> <id>"` while a command is being sent or awaits its answer
///   (expiring, so a crashed holder frees it);
/// A producer then adds a wake-up notice (`imei`) to the notices stream (`REDIS_NOTICES_STREAM`), which
/// every instance reads.
public struct CommandKeys: Sendable, Equatable {
    public let prefix: String

    public init(prefix: String) { self.prefix = prefix }

    public func queue(_ imei: String) -> String { "\(prefix):{\(imei)}:queue" }
    public func lease(_ imei: String) -> String { "\(prefix):{\(imei)}:lease" }
    /// The prefix of `imei`'s command hashes (the id follows).
    public func commandPrefix(_ imei: String) -> String { "\(prefix):{\(imei)}:cmd:" }
    public func command(_ imei: String, id: String) -> String { commandPrefix(imei) + id }

    /// The most text (or payload bytes) one command carries (Teltonika's limit for SMS/GPRS commands).
    public static let maxPayloadBytes = 160

    /// Statuses after which a command is not sent again.
    public static let finalStatuses: Set<String> = ["answered", "nack", "timeout", "late", "expired", "unknown", "rejected"]

    // MARK: - Scripts

    /// Enqueues a command. KEYS: queue, command hash. ARGV: id, imei, codec (12|14), payload_hex, text,
    /// expires_at_ms (0: never), retry_on_timeout (resends allowed), now_ms, queue cap, retention_ms.
    /// Errors `EXISTS` (id in use) and `FULL` (queue at its cap); else the queue's new length.
    public static let enqueueScript = """
        if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('EXISTS command id in use') end
        if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[9]) then
          return redis.error_reply('FULL the device queue holds ' .. ARGV[9] .. ' commands')
        end
        redis.call('HSET', KEYS[2], 'id', ARGV[1], 'imei', ARGV[2], 'codec', ARGV[3], 'payload_hex', ARGV[4],
          'text', ARGV[5], 'expires_at_ms', ARGV[6], 'retry_on_timeout', ARGV[7], 'attempt', '0',
          'status', 'queued', 'queued_at_ms', ARGV[8])
        redis.call('PEXPIRE', KEYS[2], ARGV[10])
        return redis.call('RPUSH', KEYS[1], ARGV[1])
        """

    /// Takes the head command and its lease. KEYS: queue, lease. ARGV: command-hash prefix, holder,
    /// lease_ms, now_ms. Returns `{status, id, codec, payload_hex, attempt, closed}`: status `take`,
    /// `empty` or `busy` (then `id` is the lease's remaining ms); `closed` lists `outcome, id, attempt`
    /// of commands ended on the way (expired before sending; `unknown`: a holder died after taking it).
    static let takeScript = """
        local pttl = redis.call('PTTL', KEYS[2])
        if pttl ~= -2 then return {'busy', tostring(pttl), '', '', '0', {}} end
        local closed = {}
        local now = tonumber(ARGV[4])
        while true do
          local id = redis.call('LINDEX', KEYS[1], 0)
          if not id then return {'empty', '', '', '', '0', closed} end
          local h = ARGV[1] .. id
          local f = redis.call('HMGET', h, 'status', 'codec', 'payload_hex', 'expires_at_ms', 'attempt', 'retry_on_timeout')
          local status = f[1]
          local attempt = tonumber(f[5] or '0') or 0
          local retries = tonumber(f[6] or '0') or 0
          if not status then
            redis.call('LPOP', KEYS[1])
          elseif status == 'sending' or status == 'sent' then
            if attempt <= retries then
              redis.call('HSET', h, 'status', 'queued')
            else
              redis.call('HSET', h, 'status', 'unknown', 'done_at_ms', ARGV[4])
              redis.call('LPOP', KEYS[1])
              table.insert(closed, 'unknown'); table.insert(closed, id); table.insert(closed, tostring(attempt))
            end
          elseif status == 'queued' then
            local expires = tonumber(f[4] or '0') or 0
            if expires > 0 and expires <= now then
              redis.call('HSET', h, 'status', 'expired', 'done_at_ms', ARGV[4])
              redis.call('LPOP', KEYS[1])
              table.insert(closed, 'expired'); table.insert(closed, id); table.insert(closed, tostring(attempt))
            else
              redis.call('SET', KEYS[2], ARGV[2] .. ' ' .. id, 'PX', ARGV[3])
              redis.call('HSET', h, 'status', 'sending', 'attempt', attempt + 1, 'holder', ARGV[2])
              return {'take', id, f[2] or '', f[3] or '', tostring(attempt + 1), closed}
            end
          else
            redis.call('LPOP', KEYS[1])
          end
        end
        """

    /// Marks a taken command written. KEYS: command hash. ARGV: now_ms.
    static let sentScript = """
        redis.call('HSET', KEYS[1], 'status', 'sent', 'sent_at_ms', ARGV[1])
        return 1
        """

    /// Records how a command ended. KEYS: queue, command hash, lease. ARGV: lease value, id, outcome,
    /// now_ms, latency_ms, response text, response hex, hold-lease ms (0: release), retention_ms.
    /// A `timeout` with resends left goes back to `queued` at the head (sent again after the grace
    /// window). Returns `{requeued, queue length}`.
    static let finishScript = """
        local f = redis.call('HMGET', KEYS[2], 'attempt', 'retry_on_timeout')
        local attempt = tonumber(f[1] or '0') or 0
        local retries = tonumber(f[2] or '0') or 0
        local requeued = 0
        if ARGV[3] == 'timeout' and attempt <= retries then
          redis.call('HSET', KEYS[2], 'status', 'queued', 'last_outcome', 'timeout')
          requeued = 1
        else
          redis.call('HSET', KEYS[2], 'status', ARGV[3], 'done_at_ms', ARGV[4], 'latency_ms', ARGV[5])
          if ARGV[6] ~= '' or ARGV[7] ~= '' then
            redis.call('HSET', KEYS[2], 'response', ARGV[6], 'response_hex', ARGV[7])
          end
          redis.call('LREM', KEYS[1], 1, ARGV[2])
          redis.call('PEXPIRE', KEYS[2], ARGV[9])
        end
        if redis.call('GET', KEYS[3]) == ARGV[1] then
          if tonumber(ARGV[8]) > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[8]) else redis.call('DEL', KEYS[3]) end
        end
        return {requeued, redis.call('LLEN', KEYS[1])}
        """

    /// Gives a lease back. KEYS: queue, command hash, lease. ARGV: lease value, unsent (1: the command
    /// was taken but never written: queued again as it was). Returns the queue's length.
    static let releaseScript = """
        if ARGV[2] == '1' and redis.call('HGET', KEYS[2], 'status') == 'sending' then
          redis.call('HSET', KEYS[2], 'status', 'queued')
          redis.call('HINCRBY', KEYS[2], 'attempt', -1)
        end
        if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
        return redis.call('LLEN', KEYS[1])
        """

    /// Ends a command still queued after its TTL (the device never came): KEYS queue, command hash;
    /// ARGV id, now_ms, retention_ms. 1 when it was expired now.
    public static let expireScript = """
        local f = redis.call('HMGET', KEYS[2], 'status', 'expires_at_ms')
        local expires = tonumber(f[2] or '0') or 0
        if f[1] == 'queued' and expires > 0 and expires <= tonumber(ARGV[2]) then
          redis.call('HSET', KEYS[2], 'status', 'expired', 'done_at_ms', ARGV[2])
          redis.call('LREM', KEYS[1], 1, ARGV[1])
          redis.call('PEXPIRE', KEYS[2], ARGV[3])
          return 1
        end
        return 0
        """
}
