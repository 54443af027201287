import NIOCore
import Testing

@testable import Ingest

/// `PROXY_TRUSTED_CIDRS`: parsing, matching peers, and the settings' checks.
struct CIDRTests {
    static func address(_ text: String) -> SocketAddress { try! SocketAddress(ipAddress: text, port: 1) }

    @Test func testParsingAndMatching() throws {
        let v4 = try #require(CIDR("10.1.2.3/8"))
        #expect(v4.description == "10.0.0.0/8")
        #expect(v4.contains(Self.address("10.255.0.1")))
        #expect(!v4.contains(Self.address("11.0.0.1")))
        #expect(v4.contains(Self.address("::ffff:10.9.9.9")))  // an IPv4 client seen by a dual-stack listener
        let host = try #require(CIDR("127.0.0.1"))
        #expect(host.description == "127.0.0.1/32")
        #expect(host.contains(Self.address("127.0.0.1")) && !host.contains(Self.address("127.0.0.2")))
        let v6 = try #require(CIDR("2001:db8::/32"))
        #expect(v6.contains(Self.address("2001:db8:ffff::1")) && !v6.contains(Self.address("2001:db9::1")))
        #expect(!v6.contains(Self.address("10.0.0.1")))
        #expect(try #require(CIDR("0.0.0.0/0")).contains(Self.address("192.0.2.1")))
        #expect(try #require(CIDR("10.0.0.0/9")).contains(Self.address("10.127.0.1")))
        #expect(!(try #require(CIDR("10.0.0.0/9")).contains(Self.address("10.128.0.1"))))
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/-1", "host/8", "10.0.0.0/8/1", "10.0.0.0/ 8"] {
            #expect(CIDR(bad) == nil, "\(bad)")
        }
    }

    @Test func testSettingsNeedEachOther() throws {
        let c = try IngestConfiguration.load(
            environment: ["PROXY_PROTOCOL": "v2", "PROXY_TRUSTED_CIDRS": "10.0.0.0/8, fd00::/8"],
            flags: [:]
        )
        #expect(c.proxyProtocol == .v2)
        #expect(c.proxyTrustedCIDRs.map(\.description) == ["10.0.0.0/8", "fd00::/8"])
        for (environment, key) in [
            (["PROXY_PROTOCOL": "v2"], "PROXY_TRUSTED_CIDRS"), (["PROXY_TRUSTED_CIDRS": "10.0.0.0/8"], "PROXY_TRUSTED_CIDRS"),
            (["PROXY_PROTOCOL": "v1", "PROXY_TRUSTED_CIDRS": "10.0.0.0/8"], "PROXY_PROTOCOL"),
            (["PROXY_PROTOCOL": "optional", "PROXY_TRUSTED_CIDRS": "10.0.0.0/8,nonsense"], "PROXY_TRUSTED_CIDRS"),
        ] {
            #expect(throws: ConfigurationError.self, "\(environment)") {
                try IngestConfiguration.load(environment: environment, flags: [:])
            }
            do {
                _ = try IngestConfiguration.load(environment: environment, flags: [:])
            } catch {
                #expect(error.key == key, "\(environment)")
            }
        }
    }
}
