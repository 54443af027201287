import Ingest
import Testing

/// What Redis' persistence settings mean for ACKed records.
struct RedisDurabilityTests {
    @Test(
        arguments: [
            ("yes", "always", RedisDurability.aofAlways),
            ("yes", "everysec", .aofEverysec),
            ("YES", "EverySec", .aofEverysec),
            ("yes", "no", .aofNo),
            ("no", "always", .none),
            ("no", nil, .none),
            ("yes", nil, .unknown),
            (nil, "always", .unknown),
            (nil, nil, .unknown),
            ("maybe", "always", .unknown),
        ] as [(String?, String?, RedisDurability)]
    )
    func testModeFromSettings(appendonly: String?, appendfsync: String?, expected: RedisDurability) {
        #expect(RedisDurability(appendonly: appendonly, appendfsync: appendfsync) == expected)
    }

    @Test(
        arguments: [
            ("allkeys-lru", true), ("allkeys-lfu", true), ("allkeys-random", true), ("noeviction", false),
            ("volatile-lru", false), ("volatile-ttl", false), (nil, false),
        ] as [(String?, Bool)]
    )
    func testWhichPoliciesEvictStreams(policy: String?, evicts: Bool) {
        #expect(RedisDurability.policyEvictsStreams(policy) == evicts)
    }
}
