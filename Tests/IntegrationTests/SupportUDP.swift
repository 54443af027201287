/// Test support: a UDP server of the test's own that answers datagrams as the test says.
import Codec8
import FixtureSupport
import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// A UDP socket on 127.0.0.1 that answers each datagram, from a thread of its own, with the datagrams
/// `answer` returns for it (none: silence). `answer` also gets how many times the same bytes came
/// before, so a test can stay silent to a first copy and answer its resend.
final class ScriptedUDPServer: Sendable {
    let port: Int
    private let running = NIOLockedValueBox(true)
    private let seen = NIOLockedValueBox<[[UInt8]: Int]>([:])
    private let log = NIOLockedValueBox<[[UInt8]]>([])

    init(answer: @escaping @Sendable (_ datagram: [UInt8], _ earlierCopies: Int) -> [[UInt8]]) throws {
        let (fd, port) = try bindLoopback(type: Int32(SOCK_DGRAM.rawValue))
        self.port = port
        // Wakes every 100 ms to see whether the server was stopped; the thread closes the socket itself.
        var wake = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wake, socklen_t(MemoryLayout<timeval>.size))
        let (running, seen, log) = (running, seen, log)
        Thread.detachNewThread {
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while running.withLockedValue({ $0 }) {
                var peer = sockaddr_storage()
                var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
                let n = withUnsafeMutablePointer(to: &peer) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buffer, buffer.count, 0, $0, &peerLength) }
                }
                guard n >= 0 else { continue }
                let datagram = Array(buffer[0..<n])
                log.withLockedValue { $0.append(datagram) }
                let copies = seen.withLockedValue { seen in
                    defer { seen[datagram, default: 0] += 1 }
                    return seen[datagram, default: 0]
                }
                for reply in answer(datagram, copies) {
                    _ = withUnsafePointer(to: &peer) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { to in
                            reply.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, to, peerLength) }
                        }
                    }
                }
            }
        }
    }

    /// Datagrams received so far, every copy counted.
    var received: Int { seen.withLockedValue { $0.values.reduce(0, +) } }

    /// Each distinct datagram received so far, with how many times it came.
    var datagrams: [[UInt8]: Int] { seen.withLockedValue { $0 } }

    /// Every datagram received so far, in arrival order.
    var arrivals: [[UInt8]] { log.withLockedValue { $0 } }

    deinit { running.withLockedValue { $0 = false } }

    /// The ACK a correct server sends for `datagram` (every record accepted), with `change` applied to
    /// it; none when the codec refuses the datagram.
    static func ack(for datagram: [UInt8], _ change: (inout UDPAck) -> Void = { _ in }) -> [[UInt8]] {
        guard
            var ack = try? UDPDatagramView.withDecoded(
                datagram,
                { view in
                    UDPAck(packetID: view.packetID, avlPacketID: view.avlPacketID, acceptedRecords: UInt8(view.packet.recordCount))
                }
            )
        else { return [] }
        change(&ack)
        return [ack.bytes]
    }
}
