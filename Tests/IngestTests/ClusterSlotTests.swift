import RedisWire
import Testing

@testable import Ingest

/// The pure parts of cluster routing: the slot of a key, the key of a pre-formatted job, the slot map,
/// redirects, where a single command goes and how the primaries' replies read as one.
struct ClusterSlotTests {
    /// CRC16-XMODEM's check value, as the Redis Cluster specification gives it.
    @Test func testCRC16CheckValue() {
        let crc = Array("123456789".utf8).withUnsafeBytes { ClusterSlot.crc16($0) }
        #expect(crc == 0x31C3)
        #expect(ClusterSlot.of("123456789") == 0x31C3)
    }

    /// Slots as a real `redis-cli -p 7100 CLUSTER KEYSLOT <key>` (Redis 7.0.15) gave them, hash tags
    /// included: the first `{`, the first `}` after it, not empty; else the whole key.
    @Test(arguments: [
        ("", 0), ("foo", 12182), ("bar", 5061), ("{user1000}.following", 3443), ("{user1000}.followers", 3443),
        ("foo{}{bar}", 8363), ("foo{{bar}}zap", 4015), ("foo{bar}{zap}", 5061), ("{}foo", 9500), ("{", 4092), ("}", 12090),
        ("a{b", 13340), ("telemetry:teltonika", 1830), ("telemetry:teltonika:responses", 10197),
        ("telemetry:teltonika:{0}", 13907), ("telemetry:teltonika:{1}", 9842), ("telemetry:teltonika:{2}", 5649),
        ("test:a", 12814), ("test:b", 621), ("test:c", 4684), ("telemetry:teltonika:commands:{356307042441013}:queue", 3277),
        ("éü", 11813),
    ])
    func testSlotsMatchRedis(key: String, slot: Int) {
        #expect(ClusterSlot.of(key) == slot, "\(key)")
        #expect(ClusterSlot.of(Array(key.utf8)[...]) == slot, "\(key) as bytes")
    }

    /// The key of a job read back from the bytes `RESPWriter` wrote, and each command's range.
    @Test func testTheScannerReadsBackWhatTheWriterWrote() throws {
        var writer = RESPWriter()
        for value in ["1", "22"] {
            writer.beginCommand(arguments: 5)
            for argument in ["XADD", "telemetry:{7}", "*", "v", value] { writer.bulk(string: argument) }
        }
        let bytes = writer.bytes
        let commands = try #require(RESPCommandScanner.commands(in: bytes))
        #expect(commands.count == 2)
        #expect(commands.first?.lowerBound == 0 && commands.last?.upperBound == bytes.count)
        let first = try #require(RESPCommandScanner.arguments(in: bytes, command: 0, limit: 2))
        #expect(first.map { String(decoding: bytes[$0], as: UTF8.self) } == ["XADD", "telemetry:{7}"])
        let second = try #require(RESPCommandScanner.arguments(in: bytes, command: commands[1].lowerBound))
        #expect(second.map { String(decoding: bytes[$0], as: UTF8.self) } == ["XADD", "telemetry:{7}", "*", "v", "22"])
        #expect(Array(bytes[commands[1]]) == Array(bytes[commands[1].lowerBound...]))
    }

    /// Bytes that are not whole commands are refused, never guessed at.
    @Test(arguments: [
        "", "*1\r\n$4\r\nPINGxx", "*1\r\n", "*1\r\n$4\r\nPIN", "*1\r\n$4\r\nPINGG\r\n", "PING\r\n", "*x\r\n", "*1\r\n$99999999999\r\n",
        "*0\r\n",
    ])
    func testMalformedCommandsAreRefused(text: String) {
        let bytes = Array(text.utf8)
        if text.isEmpty {
            #expect(RESPCommandScanner.commands(in: bytes) == [], "no commands")
        } else {
            #expect(RESPCommandScanner.commands(in: bytes) == nil, "\(text.debugDescription)")
        }
    }

    /// A `CLUSTER SLOTS` reply as Redis 7.0 gives it (a metadata map after the node id), an empty host
    /// (the node asked) and an unknown one (`?`).
    @Test func testTheSlotMapFromClusterSlots() throws {
        func range(_ first: Int, _ last: Int, _ host: String, _ port: Int) -> RedisConnection.Reply {
            .array([
                .integer(Int64(first)), .integer(Int64(last)), .array([.string(host), .integer(Int64(port)), .string("id"), .array([])]),
                .array([.string("127.0.0.1"), .integer(7999), .string("replica"), .array([])]),
            ])
        }
        let asked = ClusterNode(host: "127.0.0.1", port: 7100)
        let map = try ClusterSlotMap.parse(
            slots: .array([range(0, 5460, "127.0.0.1", 7100), range(5461, 10922, "", 7101), range(10923, 16383, "?", 7102)]),
            askedNode: asked
        )
        #expect(map.primary(of: 0) == asked && map.primary(of: 5460) == asked)
        #expect(map.primary(of: 5461) == ClusterNode(host: "127.0.0.1", port: 7101), "an empty host is the node asked")
        #expect(map.primary(of: 10923) == nil, "an unknown endpoint serves nothing yet")
        #expect(map.coveredSlots == 10923)
        #expect(map.primaries == [asked, ClusterNode(host: "127.0.0.1", port: 7101)])
        var moved = map
        moved.assign(slot: 17, to: ClusterNode(host: "127.0.0.0", port: 1))
        #expect(moved.primary(of: 17) == ClusterNode(host: "127.0.0.0", port: 1) && moved.primary(of: 16) == asked)
        #expect(moved.primaries.first == ClusterNode(host: "127.0.0.0", port: 1), "kept in address order")
        #expect(moved.changedSlots(from: map) == 1)
        #expect(moved.primary(of: 5461) == ClusterNode(host: "127.0.0.1", port: 7101), "other slots keep their owner")
        for bad: RedisConnection.Reply in [
            .error("ERR This instance has cluster support disabled"), .array([]), .array([.array([.integer(5), .integer(2)])]),
            .array([.array([.integer(0), .integer(16384), .array([.string("h"), .integer(1)])])]),
        ] {
            #expect(throws: ClusterSlotMap.ParseError.self, "\(bad)") { try ClusterSlotMap.parse(slots: bad, askedNode: asked) }
        }
    }

    @Test func testRedirects() {
        let node = ClusterNode(host: "10.0.0.9", port: 7000)
        #expect(
            ClusterRedirect(error: "MOVED 3999 127.0.0.1:6381", replying: node)
                == .moved(slot: 3999, to: .init(host: "127.0.0.1", port: 6381))
        )
        #expect(
            ClusterRedirect(error: "ASK 3999 127.0.0.1:6381", replying: node) == .ask(slot: 3999, to: .init(host: "127.0.0.1", port: 6381))
        )
        #expect(ClusterRedirect(error: "MOVED 1 :6380", replying: node) == .moved(slot: 1, to: .init(host: "10.0.0.9", port: 6380)))
        #expect(ClusterRedirect(error: "MOVED 1 ::1:6380", replying: node) == .moved(slot: 1, to: .init(host: "::1", port: 6380)))
        #expect(ClusterRedirect(error: "MOVED 1 [::1]:6380", replying: node)?.node.description == "[::1]:6380")
        for other in [
            "TRYAGAIN Multiple keys request during rehashing of slot", "CLUSTERDOWN The cluster is down", "MOVED 16384 h:1", "MOVED x h:1",
        ] {
            #expect(ClusterRedirect(error: other, replying: node) == nil, "\(other)")
        }
    }

    /// Where `command(_:)` sends each command the server uses.
    @Test func testCommandRoutes() {
        typealias Route = ClusterCommandRoute
        #expect(Route(["XLEN", "s"]) == .key("s"))
        #expect(Route(["XADD", "s", "*", "a", "b"]) == .key("s"))
        #expect(Route(["SSCAN", "allow", "0", "COUNT", "1000"]) == .key("allow"))
        #expect(Route(["EVAL", "return 1", "2", "q:{1}", "l:{1}", "arg"]) == .key("q:{1}"))
        #expect(Route(["EVALSHA", "abc", "0", "arg"]) == .anyPrimary)
        #expect(Route(["XREAD", "COUNT", "1000", "BLOCK", "500", "STREAMS", "wake", "$"]) == .key("wake"))
        #expect(Route(["XREADGROUP", "GROUP", "g", "c", "streams", "s", ">"]) == .key("s"))
        #expect(Route(["XINFO", "GROUPS", "s"]) == .key("s"))
        #expect(Route(["PING"]) == .everyPrimary)
        #expect(Route(["CONFIG", "GET", "appendonly"]) == .everyPrimary)
        #expect(Route(["INFO", "memory"]) == .everyPrimary)
        #expect(Route(["CLIENT", "SETNAME", "teltonika-ingest-wake"]) == .everyPrimary)
        #expect(Route(["CLIENT", "LIST"]) == .anyPrimary)
        #expect(Route(["SCRIPT", "LOAD", "return 1"]) == .anyPrimary)
        #expect(Route(["DBSIZE"]) == .anyPrimary)
    }

    /// The primaries' answers read as one: the weakest persistence, the fullest memory, the oldest version.
    @Test func testRepliesOfEveryPrimaryReadAsOne() {
        func config(_ name: String, _ value: String) -> RedisConnection.Reply { .array([.string(name), .string(value)]) }
        let combine = ClusterReplies.combine
        #expect(
            combine(["CONFIG", "GET", "appendonly"], [config("appendonly", "yes"), config("appendonly", "no")])
                == config("appendonly", "no")
        )
        #expect(
            combine(["CONFIG", "GET", "appendfsync"], [config("appendfsync", "always"), config("appendfsync", "everysec")])
                == config("appendfsync", "everysec")
        )
        let refused = RedisConnection.Reply.error("ERR unknown command 'CONFIG'")
        #expect(combine(["CONFIG", "GET", "appendonly"], [config("appendonly", "yes"), refused]) == refused, "unknown beats a good one")
        #expect(combine(["CONFIG", "GET", "appendonly"], [refused, config("appendonly", "no")]) == config("appendonly", "no"))
        #expect(
            combine(
                ["CONFIG", "GET", "maxmemory-policy"],
                [config("maxmemory-policy", "noeviction"), config("maxmemory-policy", "allkeys-lru")]
            )
                == config("maxmemory-policy", "allkeys-lru")
        )
        let roomy = RedisConnection.Reply.string("used_memory:900\r\nmaxmemory:10000\r\n")
        let full = RedisConnection.Reply.string("used_memory:100\r\nmaxmemory:110\r\n")
        let unlimited = RedisConnection.Reply.string("used_memory:5000\r\nmaxmemory:0\r\n")
        #expect(combine(["INFO", "memory"], [roomy, full, unlimited]) == full)
        #expect(
            combine(["INFO", "memory"], [unlimited, .string("used_memory:9000\r\nmaxmemory:0\r\n")])
                == .string("used_memory:9000\r\nmaxmemory:0\r\n")
        )
        let new = RedisConnection.Reply.string("redis_version:7.2.4\r\n")
        let old = RedisConnection.Reply.string("redis_version:7.0.15\r\n")
        #expect(combine(["INFO", "server"], [new, old, new]) == old)
        #expect(combine(["PING"], [.error("LOADING"), .string("PONG")]) == .string("PONG"))
    }

    /// Held jobs and a batch's written jobs, sorted by their connections' `WAIT`s.
    @Test func testSpreadWaitsSortJobsByTheirOwnConnections() {
        let waits = SpreadWaits(written: [], confirmed: [1, 3], open: [1, 2, 3])
        let sorted = waits.sort(
            held: [(job: "held-on-1", on: [1]), (job: "held-on-2", on: [2]), (job: "held-on-closed-9", on: [9])],
            written: [
                (job: "new-on-3", on: [3]), (job: "new-on-2", on: [2]), (job: "new-on-1-and-2", on: [1, 2]), (job: "nowhere", on: []),
            ]
        )
        #expect(sorted.confirmed == ["held-on-1", "new-on-3"])
        #expect(sorted.held.map(\.job) == ["held-on-2", "new-on-2", "new-on-1-and-2"])
        #expect(sorted.held.map(\.on) == [[2], [2], [1, 2]])
        #expect(sorted.lost == ["held-on-closed-9", "nowhere"])
        #expect(sorted.newlyHeld == 2)
    }
}
