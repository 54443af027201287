/// Test support: loopback sockets and a blocking device client.
import Codec8
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

/// A blocking TCP socket connected to 127.0.0.1:`port`; `receiveBuffer` (bytes) is set before the
/// handshake, so it bounds the window the server sees.
func connectLoopback(port: Int, receiveBuffer: Int32? = nil) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        let error = errno
        close(fd)
        throw TestFailure("connect to \(port) failed: errno \(error)")
    }
    return fd
}

/// A device: one blocking TCP socket with receive timeouts.
final class DeviceClient {
    private let fd: Int32

    init(port: Int) throws {
        fd = try connectLoopback(port: port)
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) throws { try sendAll(fd, bytes) }

    /// Closes the sending side (FIN), as a device that gives up does.
    func shutdownWrite() { _ = shutdown(fd, Int32(SHUT_WR)) }

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
