/// Test support: loopback sockets and a blocking device client.
import Codec8
import FixtureSupport
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Writes all of `bytes` to the socket (waiting out a send timeout, if the socket has one).
func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
        if n < 0 && (errno == EAGAIN || errno == EINTR) { continue }
        guard n > 0 else { throw TestFailure("send failed: errno \(errno)") }
        offset += n
    }
}

/// A device: one blocking TCP socket with receive timeouts.
final class DeviceClient {
    /// -1 once ``reset()`` closed it.
    private var fd: Int32

    /// - Parameter source: the local address to connect from (127.0.0.2, ...: another device address).
    init(port: Int, host: String = "127.0.0.1", source: String? = nil) throws {
        fd = try connectSocket(type: SOCK_STREAM, port: port, host: host, source: source)
    }

    deinit { if fd >= 0 { close(fd) } }

    func send(_ bytes: [UInt8]) throws { try sendAll(fd, bytes) }

    /// Closes the sending side (FIN), as a device that gives up does.
    func shutdownWrite() { _ = shutdown(fd, Int32(SHUT_WR)) }

    /// Aborts the connection: the peer gets a RST, not a FIN (SO_LINGER 0, then close).
    func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(fd)
        fd = -1
    }

    /// Sends one byte at a time.
    func dribble(_ bytes: [UInt8]) throws {
        for b in bytes { try send([b]) }
    }

    /// What came back within `timeout` seconds: `count` bytes, fewer with `.closed` when the peer
    /// closed, or `.timeout` with what arrived.
    enum Received: Equatable {
        case bytes([UInt8])
        case closed([UInt8])
        case timeout([UInt8])
    }

    func receive(_ count: Int, timeout: Double) -> Received {
        var out: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        while out.count < count {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { return .timeout(out) }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, Int32(left * 1000) + 1)
            if ready <= 0 { continue }
            var buf = [UInt8](repeating: 0, count: count - out.count)
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { return .closed(out) }
            out += buf[0..<n]
        }
        return .bytes(out)
    }

    /// Logs in with `imei`; true when the server answered 0x01.
    func login(_ imei: String) throws -> Bool {
        try send(IMEI(imei)!.loginFrame)
        return receive(1, timeout: 5) == .bytes([1])
    }
}

/// A device on UDP: one socket connected to the server's UDP port (so it receives only the server's
/// datagrams), blocking sends, receives with a timeout.
final class UDPDeviceClient {
    private let fd: Int32

    init(port: Int, host: String = "127.0.0.1") throws {
        fd = try connectSocket(type: SOCK_DGRAM, port: port, host: host)
    }

    deinit { close(fd) }

    /// Sends one datagram.
    func send(_ bytes: [UInt8]) throws {
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, bytes.count, 0) }
        guard n == bytes.count else { throw TestFailure("UDP send of \(bytes.count) bytes failed: errno \(errno)") }
    }

    /// The next datagram within `timeout` seconds, or nil.
    func receive(timeout: Double) -> [UInt8]? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, Int32(timeout * 1000)) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n >= 0 ? Array(buffer[0..<n]) : nil
    }

    /// Sends `datagram` and resends it every `interval` seconds until an ACK arrives or `timeout`
    /// seconds pass, as a device does; returns the ACK.
    func sendUntilAcknowledged(_ datagram: [UInt8], interval: Double = 0.5, timeout: Double = 20) throws -> [UInt8]? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            try send(datagram)
            if let ack = receive(timeout: interval) { return ack }
        }
        return nil
    }
}
