/// The process exit statuses, one meaning each, shared by every subcommand.
///
/// The table in OPERATIONS.md ("Exit codes") is the operator's copy of this enum.
public enum ExitStatus: Int32, Sendable, CaseIterable {
    /// Everything asked for was done; for `decode`, no input line was an error.
    case success = 0
    /// The work ran and found a problem: for `decode`, at least one line was an error.
    case failure = 1
    /// The command line or an input could not be used (unknown flag, bad value, unreadable file).
    case usage = 2
}
