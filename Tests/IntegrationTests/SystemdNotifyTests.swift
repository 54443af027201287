import FixtureSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real binary under a stand-in for systemd (a `Type=notify` unit with `WatchdogSec=`): `READY=1`
/// once the listener is bound, `WATCHDOG=1` at half of `WATCHDOG_USEC` while it lives, `STOPPING=1`
/// when the drain begins.
@Suite(.serialized, .blocking, .timeLimit(.minutes(2)))
struct SystemdNotifyTests {
    @Test func testReadyWatchdogPingsAndStoppingReachSystemd() throws {
        let systemd = try NotifySocket()
        // WatchdogSec=0.4s: a ping every 200 ms.
        let server = try ServerProcess(environment: ["NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "400000"])
        let ready = systemd.receive(timeout: 10)
        #expect(ready == "READY=1\nSTATUS=serving devices", "the first message: \(ready ?? "none")")
        let line = try server.waitForLog(event: "process.systemd_ready", timeout: 5)
        #expect(line["watchdog_ms"] as? Int == 400 && line["notify_socket"] as? String == systemd.name, "\(line)")

        var pings: [Date] = []
        while pings.count < 5, let message = systemd.receive(timeout: 5) {
            #expect(message == "WATCHDOG=1", "\(message)")
            pings.append(Date())
        }
        #expect(pings.count == 5, "pings: \(pings.count)")
        // Half the interval apart (200 ms), never the whole of it: systemd would kill the process at 400 ms.
        let gaps = zip(pings, pings.dropFirst()).map { $1.timeIntervalSince($0) }
        #expect(gaps.allSatisfy { $0 > 0.1 && $0 < 0.4 }, "gaps between pings: \(gaps)")

        server.signal(SIGTERM)
        var afterSignal: [String] = []
        while let message = systemd.receive(timeout: 10) {
            afterSignal.append(message)
            if message.hasPrefix("STOPPING=1") { break }
        }
        #expect(afterSignal.last == "STOPPING=1\nSTATUS=draining", "\(afterSignal)")
        let exit = try #require(server.waitForExit(timeout: 20))
        #expect(exit.status == 0 && !exit.bySignal, "\(exit)")
    }

    /// `WATCHDOG_PID` naming another process (systemd meant the watchdog for it): ready, but no pings.
    @Test func testTheWatchdogOfAnotherProcessIsNotFed() throws {
        let systemd = try NotifySocket(abstract: true)
        let server = try ServerProcess(environment: ["NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"])
        #expect(systemd.receive(timeout: 10) == "READY=1\nSTATUS=serving devices", "over the abstract namespace too")
        let line = try server.waitForLog(event: "process.systemd_ready", timeout: 5)
        #expect(line["watchdog_ms"] as? Int == 0, "\(line)")
        server.signal(SIGTERM)
        #expect(systemd.receive(timeout: 10) == "STOPPING=1\nSTATUS=draining", "no WATCHDOG=1 before it")
        _ = server.waitForExit(timeout: 20)
    }
}
