/// The PROXY protocol version 2 header (HAProxy's "The PROXY protocol", section 2.2): what a TCP load balancer
/// (HAProxy `send-proxy-v2`, AWS NLB, ...) sends before the client's bytes, naming the client.
///
/// Pure: bytes in, a value out; no NIO, no Foundation, no allocation (the fuzz target compiles this file alone).
///
/// ```
/// +------------------------------------+--------+--------+----------+-----------------------+--------+
/// | signature (12)                     | ver/cmd| fam/   | u16 len  | addresses             | TLVs   |
/// | 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A| 2x     | proto  | (BE)     | v4: 12, v6: 36 bytes  | ...    |
/// +------------------------------------+--------+--------+----------+-----------------------+--------+
///   ver/cmd: version 2 (high nibble), command 0 LOCAL or 1 PROXY (low nibble)
///   fam/proto: 0x11 TCP over IPv4, 0x21 TCP over IPv6, 0x00 UNSPEC (LOCAL)
///   addresses: source address, destination address, source port, destination port (network order)
///   TLVs: type (1), u16 length, value; skipped, but each must fit inside `len`
/// ```
///
/// The whole header is `16 + len` bytes; `len` is checked against a maximum as soon as the 16 fixed bytes are
/// in, before any more is awaited.
struct ProxyHeader: Sendable, Equatable {
    /// The 12 bytes every version 2 header starts with (never the start of a Teltonika login, `00 0F`/`00 10`).
    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// Signature, version/command, family/protocol, length.
    static let fixedBytes = 16
    /// The largest header accepted, TLVs included. HAProxy's TLVs (authority, unique ID up to 128 bytes, TLS
    /// details), AWS' (VPC endpoint ID) and Azure's (link ID) fit with room to spare; IPv6 addresses take 36.
    static let defaultMaximumBytes = 1024

    enum Command: Sendable, Equatable {
        /// Sent by the proxy on its own behalf (health checks): the connection's own addresses stand.
        case local
        /// A relayed connection: the addresses are the client's.
        case proxy
    }

    /// The client's side of a relayed connection (the destination is the proxy's listener, and not kept).
    enum Source: Sendable, Equatable {
        /// IPv4 address in network order as a number (127.0.0.2 is 0x7F00_0002), and port.
        case ipv4(address: UInt32, port: UInt16)
        /// IPv6 address (16 bytes, network order, high then low half), and port.
        case ipv6(high: UInt64, low: UInt64, port: UInt16)
    }

    let command: Command
    /// The client, for a PROXY command over TCP/IPv4 or TCP/IPv6; nil for LOCAL and for PROXY with the
    /// UNSPEC family (the proxy does not know: the connection's own address stands, as the spec allows).
    let source: Source?
    /// Bytes the header takes, TLVs included (the client's data starts there).
    let byteCount: Int

    /// What the bytes received so far are.
    enum Parsed: Sendable, Equatable {
        /// A complete header.
        case header(ProxyHeader)
        /// A prefix of a header: wait for more (nothing is wrong yet).
        case needMore
        /// Not the signature: not a PROXY header (a device speaking first, or garbage).
        case notProxy
    }

    /// Why bytes that start with the signature are not an acceptable header.
    enum ParseError: Error, Sendable, Equatable {
        /// The version nibble is not 2 (0x1 would be a binary v1, which does not exist; v1 is text).
        case badVersion(UInt8)
        /// The command nibble is neither LOCAL (0) nor PROXY (1).
        case badCommand(UInt8)
        /// A PROXY command for a family/protocol other than TCP over IPv4/IPv6 or UNSPEC (UDP, UNIX, unknown).
        case unsupportedFamily(UInt8)
        /// `16 + len` is above the maximum: refused before the rest is awaited.
        case tooLarge(declared: Int, limit: Int)
        /// `len` is shorter than the family's addresses.
        case addressesTruncated(family: UInt8, length: Int)
        /// A TLV at this offset (from the header's start) runs past the header's end.
        case badTLV(offset: Int)

        /// The `reason` label and log category: `too_large` for a length over the limit, else `malformed`.
        var isTooLarge: Bool {
            if case .tooLarge = self { return true }
            return false
        }
    }

    /// Reads a header from the start of `bytes` (the connection's first bytes, as far as they have arrived).
    static func parse(_ bytes: UnsafeRawBufferPointer, maximumBytes: Int = defaultMaximumBytes) throws(ParseError) -> Parsed {
        let prefix = min(bytes.count, signature.count)
        for i in 0..<prefix where bytes[i] != signature[i] { return .notProxy }
        guard bytes.count >= fixedBytes else { return .needMore }
        let versionCommand = bytes[12]
        guard versionCommand >> 4 == 2 else { throw .badVersion(versionCommand >> 4) }
        let command: Command
        switch versionCommand & 0x0F {
        case 0: command = .local
        case 1: command = .proxy
        case let other: throw .badCommand(other)
        }
        let family = bytes[13]
        let length = Int(bytes[14]) << 8 | Int(bytes[15])
        let total = fixedBytes + length
        guard total <= maximumBytes else { throw .tooLarge(declared: total, limit: maximumBytes) }
        guard bytes.count >= total else { return .needMore }
        // LOCAL: the receiver must ignore the address block and TLVs (spec 2.2), whatever the family says.
        guard command == .proxy else { return .header(ProxyHeader(command: .local, source: nil, byteCount: total)) }
        let source: Source?
        let addressBytes: Int
        switch family {
        case 0x00:
            source = nil
            addressBytes = 0
        case 0x11:
            addressBytes = 12
            guard length >= addressBytes else { throw .addressesTruncated(family: family, length: length) }
            source = .ipv4(address: load32(bytes, 16), port: load16(bytes, 24))
        case 0x21:
            addressBytes = 36
            guard length >= addressBytes else { throw .addressesTruncated(family: family, length: length) }
            source = .ipv6(
                high: UInt64(load32(bytes, 16)) << 32 | UInt64(load32(bytes, 20)),
                low: UInt64(load32(bytes, 24)) << 32 | UInt64(load32(bytes, 28)),
                port: load16(bytes, 48)
            )
        default:
            throw .unsupportedFamily(family)
        }
        var offset = fixedBytes + addressBytes
        while offset < total {
            guard total - offset >= 3 else { throw .badTLV(offset: offset) }
            let valueBytes = Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2])
            guard valueBytes <= total - offset - 3 else { throw .badTLV(offset: offset) }
            offset += 3 + valueBytes
        }
        return .header(ProxyHeader(command: .proxy, source: source, byteCount: total))
    }

    private static func load16(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt16 {
        UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    private static func load32(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
        UInt32(load16(bytes, offset)) << 16 | UInt32(load16(bytes, offset + 2))
    }
}

extension ProxyHeader.Source {
    /// The address as text: `127.0.0.2`, or the IPv6 form with `::` for the longest run of zero groups.
    var addressText: String {
        switch self {
        case .ipv4(let address, _):
            return "\(address >> 24).\(address >> 16 & 0xFF).\(address >> 8 & 0xFF).\(address & 0xFF)"
        case .ipv6(let high, let low, _):
            let groups = (0..<8).map { i in UInt16(truncatingIfNeeded: (i < 4 ? high : low) >> (48 - 16 * UInt64(i % 4))) }
            var best = (start: -1, count: 0)
            var run = (start: -1, count: 0)
            for (i, group) in groups.enumerated() {
                if group == 0 {
                    run = run.start < 0 ? (i, 1) : (run.start, run.count + 1)
                    if run.count > best.count { best = run }
                } else {
                    run = (-1, 0)
                }
            }
            func hex(_ range: Range<Int>) -> String { groups[range].map { String($0, radix: 16) }.joined(separator: ":") }
            guard best.count >= 2 else { return hex(0..<8) }
            return hex(0..<best.start) + "::" + hex((best.start + best.count)..<8)
        }
    }

    var port: UInt16 {
        switch self {
        case .ipv4(_, let port), .ipv6(_, _, let port): port
        }
    }
}
