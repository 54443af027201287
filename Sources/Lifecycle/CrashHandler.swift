/// Installs the fatal-signal handler: one `process.crashed` line, the backtrace, death by the signal.
import CCrashHandler

/// The fatal-signal policy: crash-only. On SIGSEGV, SIGBUS, SIGILL (Swift runtime traps), SIGFPE,
/// SIGABRT or SIGTRAP the process writes one `process.crashed` log line (async-signal-safe, in C),
/// lets the handler installed before it run (the Swift backtracer prints the backtrace), then dies by
/// the same signal, so the exit status, `systemctl status` and core dumps tell the truth. The
/// supervisor restarts it; devices reconnect and resend what was not ACKed.
public enum CrashHandler {
    /// Installs the handler; call once, early, after logging is configured.
    public static func install(json: Bool, instanceID: String) {
        let escaped = jsonEscaped(instanceID)
        let status = teltonika_crash_handler_install(json ? 1 : 0, escaped)
        precondition(status == 0, "sigaction failed while installing the crash handler")
    }

    /// Test-only: crashes now, the way `kind` names (`segv`, `abort`, `trap`, `bus`, `fatal` for a
    /// Swift `fatalError`). Unknown kinds return.
    public static func crashForTesting(_ kind: String) {
        if kind == "fatal" { fatalError("crash requested for testing (TELTONIKA_CRASH_TEST=fatal)") }
        teltonika_crash_now(kind)
    }

    static func jsonEscaped(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20: out += "?"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
