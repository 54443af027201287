/// The stream keys the publisher watches (length, consumer lag, cap), every shard of both streams.
import Codec8

extension IngestConfiguration {
    /// The telemetry and responses streams, one entry per key: the stream itself, or with
    /// `REDIS_STREAM_SHARDS` > 1 each `<stream>:{k}` with its share of the cap.
    public var watchedStreams: [WatchedStream] {
        let streams = [("telemetry", telemetryStream, streamMaxLength), ("responses", responsesStream, responsesMaxLength)]
        return streams.flatMap { role, stream, cap in
            (0..<streamShards).map { shard in
                WatchedStream(
                    role: role,
                    key: StreamShards.key(stream, shard: shard, count: streamShards),
                    maxLength: StreamShards.maxLength(cap, count: streamShards),
                    shard: streamShards > 1 ? shard : nil
                )
            }
        }
    }
}
