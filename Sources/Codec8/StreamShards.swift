/// Which Redis stream key a device's entries go to when the streams are sharded (`REDIS_STREAM_SHARDS`).
///
/// With one shard the key is the stream's name, as it always was. With `count` > 1 it is `<stream>:{k}`,
/// `k` = XXH64 (seed 0) of the IMEI's ASCII digits, modulo `count`: every entry of one device lands in one
/// key (so its records stay in order there), devices spread evenly over the keys, and the `{k}` hash tag puts
/// each key in a Redis Cluster slot of its own choosing. The server, `simulate --verify` and consumers that
/// want one device's shard all compute it this way.
public enum StreamShards {
    /// The shard (0..<count) of `imei`'s entries.
    public static func shard(of imei: IMEI, count: Int) -> Int {
        precondition(count >= 1, "a stream has at least one shard")
        guard count > 1 else { return 0 }
        return Int(imei.withDigits { XXH64.hash($0) } % UInt64(count))
    }

    /// The key of shard `shard` of `stream` split into `count` shards.
    public static func key(_ stream: String, shard: Int, count: Int) -> String {
        count > 1 ? "\(stream):{\(shard)}" : stream
    }

    /// Every key of `stream` split into `count` shards, shard 0 first.
    public static func keys(_ stream: String, count: Int) -> [String] {
        (0..<count).map { key(stream, shard: $0, count: count) }
    }

    /// The `MAXLEN ~` of each shard when the whole stream is capped at `maxLength`: the cap divided evenly,
    /// rounded up, so that the shards together hold what one stream held.
    public static func maxLength(_ maxLength: Int, count: Int) -> Int {
        (maxLength + count - 1) / count
    }
}
