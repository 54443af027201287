/// `PROXY_PROTOCOL` and `PROXY_TRUSTED_CIDRS`: whether a PROXY v2 header is read before the login, and from whom.
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `PROXY_PROTOCOL`.
public enum ProxyProtocolMode: String, Sendable, Equatable, CaseIterable {
    /// No header is read: every connection is a device (today's behaviour).
    case off
    /// Every connection must come from `PROXY_TRUSTED_CIDRS` and start with a PROXY v2 header.
    case v2
    /// A connection from `PROXY_TRUSTED_CIDRS` may start with a header; one that does not is a plain device.
    /// Anyone else is a plain device, and is refused if it sends a header.
    case optional
}

/// An IPv4 or IPv6 network, `address/prefix` (a bare address is a /32 or /128).
public struct CIDR: Sendable, Equatable, CustomStringConvertible {
    /// 4 (IPv4) or 16 (IPv6) bytes, network order, bits past the prefix cleared.
    let network: [UInt8]
    let prefix: Int

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let host = String(parts[0])
        let v6 = host.contains(":")
        var bytes = [UInt8](repeating: 0, count: v6 ? 16 : 4)
        guard inet_pton(v6 ? AF_INET6 : AF_INET, host, &bytes) == 1 else { return nil }
        let bits = bytes.count * 8
        if parts.count == 2 {
            guard let n = Int(parts[1]), (0...bits).contains(n), parts[1].allSatisfy(\.isASCII) else { return nil }
            prefix = n
        } else {
            prefix = bits
        }
        network = Self.masked(bytes, prefix: prefix)
    }

    /// The canonical text: the network address (host bits cleared) and the prefix.
    public var description: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        network.withUnsafeBytes { raw in
            _ = inet_ntop(network.count == 4 ? AF_INET : AF_INET6, raw.baseAddress, &text, socklen_t(text.count))
        }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/\(prefix)"
    }

    /// Whether `address` lies in this network. An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`, a dual-stack
    /// listener's view of an IPv4 client) is matched as its IPv4 address.
    func contains(_ address: SocketAddress?) -> Bool {
        guard var bytes = address.flatMap(Self.bytes(of:)) else { return false }
        if bytes.count == 16, network.count == 4, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
            bytes = Array(bytes[12...])
        }
        return bytes.count == network.count && Self.masked(bytes, prefix: prefix) == network
    }

    /// The address bytes of an IP socket address: `sin_addr` at offset 4 of a `sockaddr_in`, `sin6_addr` at 8
    /// of a `sockaddr_in6` (the layouts POSIX fixes).
    private static func bytes(of address: SocketAddress) -> [UInt8]? {
        let range: Range<Int>
        switch address {
        case .v4: range = 4..<8
        case .v6: range = 8..<24
        case .unixDomainSocket: return nil
        }
        return address.withSockAddr { pointer, size in
            guard size >= range.upperBound else { return nil }
            return Array(UnsafeRawBufferPointer(start: pointer, count: size)[range])
        }
    }

    private static func masked(_ bytes: [UInt8], prefix: Int) -> [UInt8] {
        bytes.enumerated().map { index, byte in
            let keep = min(8, max(0, prefix - index * 8))
            return keep == 8 ? byte : byte & ~(0xFF >> UInt8(keep))
        }
    }
}

extension Array where Element == CIDR {
    /// Whether any of the networks holds `address`.
    func contains(_ address: SocketAddress?) -> Bool { contains { $0.contains(address) } }
}
