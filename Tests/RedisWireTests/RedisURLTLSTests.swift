import RedisWire
import Testing

/// `rediss://` parses like `redis://`, with `tls` set.
struct RedisURLTLSTests {
    @Test func testRedissSetsTLSAndKeepsTheGrammar() throws {
        let url = try RedisURL(parsing: "rediss://user:s%40cret@redis.example:6380/2")
        #expect(
            url == RedisURL(endpoint: .tcp(host: "redis.example", port: 6380), username: "user", password: "s@cret", database: 2, tls: true)
        )
        #expect(url.description == "rediss://user:***@redis.example:6380/2")
    }

    @Test func testRedissDefaultsToPort6379() throws {
        let url = try RedisURL(parsing: "rediss://:secret@redis.example")
        #expect(url.endpoint == .tcp(host: "redis.example", port: 6379))
        #expect(url.tls)
        #expect(url.password == "secret")
        #expect(url.description == "rediss://:***@redis.example:6379")
    }

    @Test func testRedissIPv6() throws {
        let url = try RedisURL(parsing: "rediss://[::1]:6380")
        #expect(url.endpoint == .tcp(host: "::1", port: 6380))
        #expect(url.tls)
        #expect(url.description == "rediss://[::1]:6380")
    }

    @Test func testRedisAndUnixStayPlain() throws {
        let plain = try RedisURL(parsing: "redis://:secret@127.0.0.1:6379/1")
        #expect(!plain.tls)
        #expect(plain.description == "redis://:***@127.0.0.1:6379/1")
        #expect(!(try RedisURL(parsing: "unix:///run/redis.sock?db=3")).tls)
        #expect(!RedisURL(endpoint: .tcp(host: "h", port: 1)).tls)
    }

    @Test(arguments: ["redisss://h:1", "https://h:1", "rediss://", "rediss://h:0", "rediss://h:1/x"])
    func testBadURLsNameRediss(_ text: String) {
        let error = #expect(throws: RedisURL.ParseError.self) { try RedisURL(parsing: text) }
        #expect(error?.description.contains("rediss://[user:password@]host:port[/db]") == true)
    }
}
