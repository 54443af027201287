/// How much of what Redis confirmed survives a crash, from its persistence settings. ACKs promise
/// "stored"; this says what "stored" is worth (OPERATIONS.md, "the configuration the promise assumes").
public enum RedisDurability: String, CaseIterable, Sendable {
    /// `appendonly yes`, `appendfsync always`: survives a Redis crash and a host power loss.
    case aofAlways = "aof_always"
    /// `appendonly yes`, `appendfsync everysec`: survives a Redis crash; up to ~1 s lost on power loss.
    case aofEverysec = "aof_everysec"
    /// `appendonly yes`, `appendfsync no`: survives a Redis crash; the kernel's ~30 s lost on power loss.
    case aofNo = "aof_no"
    /// `appendonly no`: at best RDB snapshots; a Redis restart loses everything since the last one.
    case none
    /// Not known: `CONFIG GET` refused (managed Redis, or an ACL user without `+config`).
    case unknown

    /// The mode from the values of `CONFIG GET appendonly` and `CONFIG GET appendfsync` (nil when refused).
    public init(appendonly: String?, appendfsync: String?) {
        switch (appendonly?.lowercased(), appendfsync?.lowercased()) {
        case ("no", _): self = .none
        case ("yes", "always"): self = .aofAlways
        case ("yes", "everysec"): self = .aofEverysec
        case ("yes", "no"): self = .aofNo
        default: self = .unknown
        }
    }

    /// What the on-call person should know, for the log line.
    public var meaning: String {
        switch self {
        case .aofAlways: "ACKed records survive a Redis crash and a host power loss"
        case .aofEverysec: "ACKed records survive a Redis crash; up to ~1 s of them can be lost on a host power loss"
        case .aofNo: "ACKed records survive a Redis crash; up to ~30 s of them can be lost on a host power loss"
        case .none: "no AOF: a Redis restart loses every ACKed record since its last snapshot (devices will not resend them)"
        case .unknown: "Redis refused CONFIG GET; check its persistence by hand"
        }
    }

    /// `maxmemory-policy` values that can delete a stream key under memory pressure (`allkeys-*`);
    /// `volatile-*` only evicts keys with a TTL, which the streams do not have.
    public static func policyEvictsStreams(_ policy: String?) -> Bool {
        policy?.lowercased().hasPrefix("allkeys-") ?? false
    }
}
