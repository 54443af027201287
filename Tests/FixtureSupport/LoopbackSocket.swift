/// A blocking TCP socket to 127.0.0.1, for the tests that talk to a server over real loopback.
#if canImport(Glibc)
import Glibc
#endif

/// Why a loopback connect failed.
public struct LoopbackConnectError: Error, CustomStringConvertible {
    public var description: String
}

/// A blocking TCP socket connected to `host` (an IPv4 address, 127.0.0.1 by default):`port`; `receiveBuffer` (bytes) is set before the
/// handshake, so it bounds the window the server sees.
public func connectLoopback(port: Int, host: String = "127.0.0.1", receiveBuffer: Int32? = nil) throws(LoopbackConnectError) -> Int32 {
    try connectSocket(type: SOCK_STREAM, port: port, host: host, receiveBuffer: receiveBuffer)
}

/// A socket of `type` (stream or datagram) connected to `host`:`port`; a datagram socket then takes
/// datagrams from that peer only.
/// With `source` (an IPv4 address such as 127.0.0.2), the socket is bound to it first, so the server sees
/// that address as the peer.
public func connectSocket(
    type: __socket_type,
    port: Int,
    host: String = "127.0.0.1",
    source: String? = nil,
    receiveBuffer: Int32? = nil
) throws(LoopbackConnectError) -> Int32 {
    let fd = socket(AF_INET, Int32(type.rawValue), 0)
    if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
    if let source {
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_addr.s_addr = inet_addr(source)
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            let error = errno
            close(fd)
            throw LoopbackConnectError(description: "bind to \(source) failed: errno \(error)")
        }
    }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr(host)
    addr.sin_port = UInt16(port).bigEndian
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        let error = errno
        close(fd)
        throw LoopbackConnectError(description: "connect to \(port) failed: errno \(error)")
    }
    return fd
}

/// A port nothing listens on now: bind 127.0.0.1:0, read the port, close.
public func freeLoopbackPort() throws -> Int {
    let (fd, port) = try bindLoopback(type: Int32(SOCK_STREAM.rawValue))
    close(fd)
    return port
}

/// A socket of `type` (stream or datagram) bound to 127.0.0.1 on a port the kernel picks, and that port.
public func bindLoopback(type: Int32) throws(LoopbackConnectError) -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, type, 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else {
        let error = errno
        close(fd)
        throw LoopbackConnectError(description: "cannot bind 127.0.0.1:0: errno \(error)")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
