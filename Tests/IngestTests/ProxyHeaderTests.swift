import Testing

@testable import Ingest

/// The PROXY v2 header parser, on byte vectors laid out as in HAProxy's spec ("The PROXY protocol", 2.2).
struct ProxyHeaderTests {
    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// PROXY, TCP over IPv4: 127.0.0.2:54321 to 127.0.0.1:5027.
    static let ipv4: [UInt8] =
        signature + [0x21, 0x11, 0x00, 0x0C] + [127, 0, 0, 2] + [127, 0, 0, 1] + [0xD4, 0x31] + [0x13, 0xA3]
    /// PROXY, TCP over IPv6: [2001:db8::1]:443 to [::1]:5027.
    static let ipv6: [UInt8] =
        signature + [0x21, 0x21, 0x00, 0x24] + [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1]
        + [UInt8](repeating: 0, count: 15) + [1] + [0x01, 0xBB] + [0x13, 0xA3]
    /// LOCAL (a health check), family UNSPEC, no addresses.
    static let local: [UInt8] = signature + [0x20, 0x00, 0x00, 0x00]
    /// The IPv4 header with two TLVs: PP2_TYPE_AUTHORITY "example.com" and PP2_TYPE_NOOP of 3 bytes.
    static let ipv4WithTLVs: [UInt8] =
        signature + [0x21, 0x11, 0x00, 0x20] + Array(ipv4[16..<28]) + [0x02, 0x00, 0x0B] + Array("example.com".utf8)
        + [0x04, 0x00, 0x03, 0, 0, 0]

    static func parse(_ bytes: [UInt8], maximumBytes: Int = ProxyHeader.defaultMaximumBytes) throws(ProxyHeader.ParseError)
        -> ProxyHeader.Parsed
    {
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(ProxyHeader.ParseError) in try ProxyHeader.parse(raw, maximumBytes: maximumBytes) }
        }
        return try result.get()
    }

    @Test func testIPv4() throws {
        let device: [UInt8] = [0x00, 0x0F]  // a login right behind the header is not part of it
        let parsed = try Self.parse(Self.ipv4 + device)
        #expect(parsed == .header(ProxyHeader(command: .proxy, source: .ipv4(address: 0x7F00_0002, port: 54321), byteCount: 28)))
        #expect(ProxyHeader.Source.ipv4(address: 0x7F00_0002, port: 54321).addressText == "127.0.0.2")
    }

    @Test func testIPv6() throws {
        guard case .header(let header) = try Self.parse(Self.ipv6) else {
            Issue.record("not a header")
            return
        }
        #expect(header.byteCount == 52)
        #expect(header.source == .ipv6(high: 0x2001_0DB8_0000_0000, low: 1, port: 443))
        #expect(header.source?.addressText == "2001:db8::1")
        #expect(ProxyHeader.Source.ipv6(high: 0, low: 1, port: 1).addressText == "::1")
        // RFC 5952: the first of two equal runs of zeros is the one shortened.
        #expect(ProxyHeader.Source.ipv6(high: 0xFE80_0000_0000_0001, low: 0x0002_0000_0000_0003, port: 1).addressText == "fe80::1:2:0:0:3")
    }

    @Test func testLocalKeepsTheConnectionsOwnAddress() throws {
        #expect(try Self.parse(Self.local) == .header(ProxyHeader(command: .local, source: nil, byteCount: 16)))
        // LOCAL with an address block (allowed: the receiver skips it).
        let withBlock = Self.signature + [0x20, 0x11, 0x00, 0x0C] + Array(Self.ipv4[16..<28])
        #expect(try Self.parse(withBlock) == .header(ProxyHeader(command: .local, source: nil, byteCount: 28)))
        // PROXY with UNSPEC: the proxy does not know the client; the connection's address stands.
        #expect(
            try Self.parse(Self.signature + [0x21, 0x00, 0x00, 0x00]) == .header(ProxyHeader(command: .proxy, source: nil, byteCount: 16))
        )
    }

    @Test func testTLVsAreSkipped() throws {
        guard case .header(let header) = try Self.parse(Self.ipv4WithTLVs) else {
            Issue.record("not a header")
            return
        }
        #expect(header.byteCount == 48)
        #expect(header.source == .ipv4(address: 0x7F00_0002, port: 54321))
    }

    /// Every proper prefix of each header asks for more; nothing is wrong with it yet.
    @Test(arguments: [ipv4, ipv6, local, ipv4WithTLVs])
    func testEveryTruncationNeedsMore(_ header: [UInt8]) throws {
        for length in 0..<header.count {
            #expect(try Self.parse(Array(header[0..<length])) == .needMore, "\(length) of \(header.count) bytes")
        }
    }

    /// A difference anywhere in the signature: not a PROXY header, decided as soon as that byte is in.
    @Test func testWrongSignatureIsNotProxy() throws {
        for index in 0..<12 {
            var bytes = Self.ipv4
            bytes[index] ^= 0x40
            #expect(try Self.parse(Array(bytes[0...index])) == .notProxy, "byte \(index)")
            #expect(try Self.parse(bytes) == .notProxy, "byte \(index)")
        }
        #expect(try Self.parse([0x00, 0x0F] + Array("356307042441013".utf8)) == .notProxy)  // a device's login
        #expect(try Self.parse(Array("PROXY TCP4 127.0.0.2 127.0.0.1 1 2\r\n".utf8)) == .notProxy)  // version 1 (text)
    }

    @Test func testBadVersionAndCommand() {
        for version: UInt8 in [0x0, 0x1, 0x3, 0xF] {
            #expect(throws: ProxyHeader.ParseError.badVersion(version)) {
                try Self.parse(Self.signature + [version << 4 | 1, 0x11, 0, 12])
            }
        }
        #expect(throws: ProxyHeader.ParseError.badCommand(2)) { try Self.parse(Self.signature + [0x22, 0x11, 0, 12]) }
    }

    @Test func testUnsupportedFamilyAndShortAddresses() {
        for family: UInt8 in [0x12, 0x22, 0x31, 0x32, 0x10, 0x41] {
            #expect(throws: ProxyHeader.ParseError.unsupportedFamily(family)) {
                try Self.parse(Self.signature + [0x21, family, 0x00, 0x0C] + [UInt8](repeating: 0, count: 12))
            }
        }
        #expect(throws: ProxyHeader.ParseError.addressesTruncated(family: 0x11, length: 11)) {
            try Self.parse(Self.signature + [0x21, 0x11, 0x00, 0x0B] + [UInt8](repeating: 0, count: 11))
        }
        #expect(throws: ProxyHeader.ParseError.addressesTruncated(family: 0x21, length: 12)) {
            try Self.parse(Self.signature + [0x21, 0x21, 0x00, 0x0C] + [UInt8](repeating: 0, count: 12))
        }
    }

    /// A TLV whose length runs past the header, or a stray byte or two after the last TLV.
    @Test func testTLVPastTheEndIsMalformed() {
        var long = Self.ipv4WithTLVs
        long[30] = 0x20  // "example.com" declared 32 bytes: past the header's end
        #expect(throws: ProxyHeader.ParseError.badTLV(offset: 28)) { try Self.parse(long) }
        let stray = Self.signature + [0x21, 0x11, 0x00, 0x0E] + Array(Self.ipv4[16..<28]) + [0x04, 0x00]
        #expect(throws: ProxyHeader.ParseError.badTLV(offset: 28)) { try Self.parse(stray) }
    }

    /// The declared length alone decides: the 16 fixed bytes of a 65,551-byte header are refused at once.
    @Test func testOversizedIsRefusedFromTheFixedBytes() throws {
        #expect(throws: ProxyHeader.ParseError.tooLarge(declared: 65_551, limit: 1024)) {
            try Self.parse(Self.signature + [0x21, 0x11, 0xFF, 0xFF])
        }
        let atLimit =
            Self.signature + [0x21, 0x11, 0x03, 0xF0] + Array(Self.ipv4[16..<28]) + [0x04, 0x03, 0xE1]
            + [UInt8](repeating: 0, count: 0x3E1)
        #expect(atLimit.count == 1024)
        #expect(
            try Self.parse(atLimit)
                == .header(ProxyHeader(command: .proxy, source: .ipv4(address: 0x7F00_0002, port: 54321), byteCount: 1024))
        )
        #expect(throws: ProxyHeader.ParseError.tooLarge(declared: 1025, limit: 1024)) {
            try Self.parse(Self.signature + [0x21, 0x11, 0x03, 0xF1])
        }
    }
}
