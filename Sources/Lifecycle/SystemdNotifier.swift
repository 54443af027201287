/// systemd's notification protocol (sd_notify(3)), written out: one datagram per state to `$NOTIFY_SOCKET`.
#if canImport(Glibc)
import Glibc
#endif

/// Tells systemd (a `Type=notify` unit) that the process is ready, alive and stopping.
///
/// The protocol is one `AF_UNIX` datagram of `KEY=value` lines sent to the socket named by
/// `NOTIFY_SOCKET`: a path, or a name in the abstract namespace when it starts with `@`. With
/// `WatchdogSec=` systemd also sets `WATCHDOG_USEC` (and `WATCHDOG_PID`, the process meant); the process
/// must send `WATCHDOG=1` more often than that, or systemd kills it with SIGABRT. libsystemd pings at
/// half the interval, and so does ``SystemdNotifyService``. Outside systemd `NOTIFY_SOCKET` is unset
/// and there is no notifier.
public struct SystemdNotifier: Sendable {
    /// Where the datagrams go (`@` first: the abstract namespace).
    public let socketPath: String
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    public let watchdogInterval: Duration?

    /// The notifier systemd asked for in `environment`; nil without a usable `NOTIFY_SOCKET`.
    public init?(environment: [String: String], pid: Int32 = getpid()) {
        guard let path = environment["NOTIFY_SOCKET"], path.hasPrefix("/") || path.hasPrefix("@"),
            path.utf8.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path)
        else { return nil }
        socketPath = path
        let meant = environment["WATCHDOG_PID"].map { Int32($0) == pid } ?? true
        if meant, let usec = environment["WATCHDOG_USEC"].flatMap(Int64.init), usec > 0 {
            watchdogInterval = .microseconds(usec / 2)
        } else {
            watchdogInterval = nil
        }
    }

    /// Sends `state` (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`, newline-separated) in one
    /// datagram. False when it could not be sent (systemd gone): the caller goes on either way.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var name = Array(socketPath.utf8)
        let abstract = name.first == UInt8(ascii: "@")
        if abstract { name[0] = 0 }  // the abstract namespace: a leading NUL, no terminating one
        withUnsafeMutableBytes(of: &address.sun_path) { path in
            for (i, byte) in name.enumerated() { path[i] = byte }
        }
        let length = MemoryLayout.offset(of: \sockaddr_un.sun_path)! + name.count + (abstract ? 0 : 1)
        let bytes = Array(state.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
                bytes.withUnsafeBytes { body in
                    sendto(fd, body.baseAddress, body.count, Int32(MSG_NOSIGNAL), sockaddrPointer, socklen_t(length))
                }
            }
        }
        return sent == bytes.count
    }
}
