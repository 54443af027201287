/// The process's file-descriptor limit (`RLIMIT_NOFILE`): raised to the hard limit at start.
#if canImport(Glibc)
import Glibc
#endif

/// Device connections are file descriptors: a soft limit below the hard one (1,024 is a common default
/// for services started outside systemd) would refuse devices that the machine allows. The server raises
/// the soft limit to the hard one at start, as nginx and Redis do.
public enum FileDescriptorLimit {
    /// The limit before and after the raise.
    public struct Outcome: Equatable, Sendable {
        public var softBefore: Int
        public var soft: Int
        public var hard: Int
    }

    /// Sets the soft limit to the hard limit (capped at `nr_open`-safe 1,048,576 when the hard limit is
    /// unlimited). Nil when the limits cannot be read.
    public static func raiseSoftToHard() -> Outcome? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
        let before = limit.rlim_cur
        let target = limit.rlim_max == rlim_t.max ? 1_048_576 : limit.rlim_max  // rlim_t.max: RLIM_INFINITY
        if before < target {
            var raised = limit
            raised.rlim_cur = target
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return Outcome(softBefore: Int(clamping: before), soft: Int(clamping: limit.rlim_cur), hard: Int(clamping: limit.rlim_max))
    }
}
