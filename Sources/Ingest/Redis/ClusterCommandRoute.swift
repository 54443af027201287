/// Where a single command goes in a Redis Cluster, and how the replies of the primaries it went to are
/// read as one.
import RedisWire

/// Where ``ClusterTransport/command(_:)`` sends a command: to the primary of its first key's slot, to
/// every primary (health and settings, where one node's answer would not speak for the others), or to
/// any primary (no key).
enum ClusterCommandRoute: Equatable {
    case key(String)
    case everyPrimary
    case anyPrimary

    /// Commands that take no key.
    static let keyless: Set<String> = [
        "PING", "INFO", "CONFIG", "CLIENT", "CLUSTER", "SCRIPT", "FUNCTION", "ROLE", "DBSIZE", "TIME", "ECHO", "HELLO", "AUTH",
        "COMMAND", "WAIT", "WAITAOF", "LASTSAVE", "MEMORY", "SLOWLOG", "LATENCY",
    ]

    init(_ arguments: [String]) {
        let name = arguments.first?.uppercased() ?? ""
        switch name {
        case "PING", "INFO": self = .everyPrimary
        case "CONFIG" where arguments.count >= 3 && arguments[1].uppercased() == "GET": self = .everyPrimary
        case "CLIENT" where arguments.count >= 3 && arguments[1].uppercased() == "SETNAME": self = .everyPrimary
        case "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO":
            // EVAL script numkeys key [key ...] arg [arg ...]
            if arguments.count >= 4, let keys = Int(arguments[2]), keys >= 1 { self = .key(arguments[3]) } else { self = .anyPrimary }
        case "XREAD", "XREADGROUP":
            // ... STREAMS key [key ...] id [id ...]
            if let streams = arguments.firstIndex(where: { $0.uppercased() == "STREAMS" }), streams + 1 < arguments.count {
                self = .key(arguments[streams + 1])
            } else {
                self = .anyPrimary
            }
        case "XINFO", "XGROUP", "OBJECT":
            // XINFO GROUPS key, XGROUP CREATE key ...: a subcommand, then the key.
            self = arguments.count >= 3 ? .key(arguments[2]) : .anyPrimary
        default:
            self = Self.keyless.contains(name) || arguments.count < 2 ? .anyPrimary : .key(arguments[1])
        }
    }
}

/// One reply for a command every primary answered, the one that matters most to on-call: the weakest
/// persistence setting, the fullest memory, the oldest version (`WAITAOF` only where every primary has it).
enum ClusterReplies {
    /// Reads the replies of the primaries (at least one) to `arguments` as one.
    static func combine(_ arguments: [String], _ replies: [RedisConnection.Reply]) -> RedisConnection.Reply {
        precondition(!replies.isEmpty, "no reply to combine")
        let name = arguments.first?.uppercased() ?? ""
        switch name {
        case "PING":
            return replies.first(where: isAnswer) ?? replies[0]
        case "CONFIG" where arguments.count >= 3:
            return replies.min { configRank(arguments[2], $0) < configRank(arguments[2], $1) }!
        case "INFO" where arguments.count >= 2 && arguments[1].lowercased() == "memory":
            let answered = replies.filter { if case .string = $0 { true } else { false } }
            return answered.max { memoryFill($0) < memoryFill($1) } ?? replies[0]
        case "INFO" where arguments.count >= 2 && arguments[1].lowercased() == "server":
            let answered = replies.filter { if case .string = $0 { true } else { false } }
            return answered.min { version($0).lexicographicallyPrecedes(version($1)) } ?? replies[0]
        case "CLIENT":
            return replies.first(where: isAnswer) ?? replies[0]
        default:
            return replies[0]
        }
    }

    /// Anything but an error reply (`PONG`, `OK`).
    static func isAnswer(_ reply: RedisConnection.Reply) -> Bool {
        if case .error = reply { false } else { true }
    }

    /// How weak a `CONFIG GET <parameter>` answer is for the promise (lower: weaker; a refusal, which
    /// reads as "unknown", ranks below a good setting and above a bad one).
    static func configRank(_ parameter: String, _ reply: RedisConnection.Reply) -> Int {
        guard case .array(let pair) = reply, pair.count == 2, case .string(let value) = pair[1] else { return 1 }
        switch (parameter.lowercased(), value.lowercased()) {
        case ("appendonly", "no"): return 0
        case ("appendonly", "yes"): return 2
        case ("appendfsync", "no"): return 0
        case ("appendfsync", "everysec"): return 1
        case ("appendfsync", "always"): return 3
        case ("maxmemory-policy", let policy): return RedisDurability.policyEvictsStreams(policy) ? 0 : 2
        default: return 2
        }
    }

    /// `used_memory / maxmemory` of an `INFO memory` answer (no limit: 0), then `used_memory` to break ties.
    static func memoryFill(_ reply: RedisConnection.Reply) -> (Double, Int64) {
        let used = infoField(reply, "used_memory").flatMap { Int64($0) } ?? 0
        let limit = infoField(reply, "maxmemory").flatMap { Int64($0) } ?? 0
        return (limit > 0 ? Double(used) / Double(limit) : 0, used)
    }

    /// `redis_version` of an `INFO server` answer as numbers (unknown: 0).
    static func version(_ reply: RedisConnection.Reply) -> [Int] {
        (infoField(reply, "redis_version") ?? "0").split(separator: ".").map { Int($0) ?? 0 }
    }

    static func infoField(_ reply: RedisConnection.Reply, _ field: String) -> String? {
        guard case .string(let info) = reply else { return nil }
        let prefix = field + ":"
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix(prefix) {
            return String(line.dropFirst(prefix.count))
        }
        return nil
    }
}
