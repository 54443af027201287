import Codec8
import Testing

/// `REDIS_STREAM_SHARDS`: a device's shard and the keys. Shards pinned with the reference XXH64:
/// `printf 356307042441013 | xxhsum -H1 -` is 86a221b9db0e9de3, which is 3 modulo 4.
struct StreamShardsTests {
    @Test func testShardOfAnIMEI() {
        let cases: [(String, Int)] = [
            ("356307042441013", 3), ("356307042441014", 1), ("356307042441015", 2), ("356307042441016", 1),
            ("350000000000000", 0), ("350000000000001", 1), ("350000000000002", 3), ("350000000000003", 0),
        ]
        for (imei, shard) in cases {
            #expect(StreamShards.shard(of: IMEI(imei)!, count: 4) == shard, "\(imei)")
            #expect(StreamShards.shard(of: IMEI(imei)!, count: 1) == 0)
        }
        #expect(XXH64.hash(Array("356307042441013".utf8)) == 0x86a2_21b9_db0e_9de3)
    }

    @Test func testKeysAndCaps() {
        #expect(StreamShards.keys("telemetry:teltonika", count: 1) == ["telemetry:teltonika"])
        #expect(StreamShards.keys("t", count: 3) == ["t:{0}", "t:{1}", "t:{2}"])
        #expect(StreamShards.maxLength(1_000_000, count: 1) == 1_000_000)
        #expect(StreamShards.maxLength(1000, count: 4) == 250)
        #expect(StreamShards.maxLength(10, count: 4) == 3)
    }

    /// 10,000 consecutive IMEIs spread evenly: each of 8 shards holds 1,250 ± 10 %.
    @Test func testSpread() {
        var counts = [Int](repeating: 0, count: 8)
        for i in 0..<10_000 { counts[StreamShards.shard(of: IMEI(String(350_000_000_000_000 + i))!, count: 8)] += 1 }
        #expect(counts.allSatisfy { (1125...1375).contains($0) }, "\(counts)")
    }
}
