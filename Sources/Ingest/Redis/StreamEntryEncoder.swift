/// Encodes records and device messages as `XADD` commands in the stream entry shape consumers read.
import Codec8
import RedisWire

/// Writes the `XADD` commands for records and device messages, in the entry shape the consumers of
/// the replaced TypeScript service read:
///
/// `XADD <stream> MAXLEN ~ <maxlen> * ts <ISO-8601 record time> device_id <IMEI> codec <8|8E|16> payload <record JSON> record_id <16 hex digits>`
///
/// `ts` is empty when the record time cannot be written in ISO-8601 (see docs/record-schema.md). `record_id`
/// is ``AVLRecordView/recordID(imei:)``: the same for every copy of a record a device resends.
/// Records that arrived over UDP carry two more fields, `transport udp`; TCP entries keep the shape above.
/// Device messages go to the responses stream with its own, smaller cap (`REDIS_RESPONSES_MAXLEN`).
///
/// With `REDIS_STREAM_SHARDS` > 1 each stream is that many keys, `<stream>:{k}`, each capped at its share of
/// the cap; a device's entries (records and messages) all go to its shard, ``StreamShards/shard(of:count:)``.
struct StreamEntryEncoder {
    /// `*16 XADD <telemetry stream> MAXLEN ~ <maxlen> *` for each shard, formatted once: a record's command
    /// starts with its device's.
    private let telemetryPrefixes: [[UInt8]]
    /// `*18 XADD <telemetry stream> MAXLEN ~ <maxlen> *` for each shard: a UDP record's command starts with it.
    private let telemetryUDPPrefixes: [[UInt8]]
    /// `*16 XADD <responses stream> MAXLEN ~ <maxlen> *` for each shard.
    private let responsesPrefixes: [[UInt8]]
    /// `*18 XADD <responses stream> MAXLEN ~ <maxlen> *` for each shard: a response that answers a command (`cmd_id`).
    private let responsesCorrelatedPrefixes: [[UInt8]]
    private let shards: Int
    private var json = RecordJSONEncoder()
    private var payload: [UInt8] = []
    private var time: [UInt8] = []
    private var recordID: [UInt8] = []

    init(telemetryStream: String, responsesStream: String, maxLength: Int, responsesMaxLength: Int, shards: Int = 1) {
        func prefixes(_ stream: String, fields: Int, maxLength: Int) -> [[UInt8]] {
            let cap = Array(String(StreamShards.maxLength(maxLength, count: shards)).utf8)
            return StreamShards.keys(stream, count: shards).map { key in
                RESPWriter.formatted(
                    arguments: 6 + 2 * fields,
                    leading: [Array("XADD".utf8), Array(key.utf8), Array("MAXLEN".utf8), [UInt8(ascii: "~")], cap, [UInt8(ascii: "*")]]
                )
            }
        }
        self.shards = shards
        telemetryPrefixes = prefixes(telemetryStream, fields: 5, maxLength: maxLength)
        telemetryUDPPrefixes = prefixes(telemetryStream, fields: 6, maxLength: maxLength)
        responsesPrefixes = prefixes(responsesStream, fields: 5, maxLength: responsesMaxLength)
        responsesCorrelatedPrefixes = prefixes(responsesStream, fields: 6, maxLength: responsesMaxLength)
    }

    /// One `XADD` per record of the packet, with its `record_id`; `udp` adds the `transport udp` field.
    mutating func appendRecords(of packet: AVLPacketView, imei: IMEI, udp: Bool = false, to writer: inout RESPWriter) {
        var digits: [UInt8] = []
        imei.appendDigits(to: &digits)
        let shard = StreamShards.shard(of: imei, count: shards)
        let prefix = udp ? telemetryUDPPrefixes[shard] : telemetryPrefixes[shard]
        let recordIDPrefix = XXH64.recordIDPrefix(imei: imei, codec: packet.codec)
        writer.bytes.reserveCapacity(writer.bytes.count + packet.recordCount * (prefix.count + 512))
        for record in packet.records {
            payload.removeAll(keepingCapacity: true)
            json.append(record, deviceID: imei, to: &payload)
            time.removeAll(keepingCapacity: true)
            JSONText.appendISO8601(milliseconds: record.timestampMs, to: &time)
            let ts = time.first == UInt8(ascii: "\"") ? time[1..<(time.count - 1)] : time[0..<0]
            writer.beginCommand(prefix: prefix)
            writer.bulk("ts")
            writer.bulk(ts)
            writer.bulk("device_id")
            writer.bulk(digits)
            writer.bulk("codec")
            switch packet.codec {
            case .codec8: writer.bulk("8")
            case .codec8Extended: writer.bulk("8E")
            case .codec16: writer.bulk("16")
            }
            writer.bulk("payload")
            writer.bulk(payload)
            recordID.removeAll(keepingCapacity: true)
            XXH64.appendHex(record.recordID(prefix: recordIDPrefix), to: &recordID)
            writer.bulk("record_id")
            writer.bulk(recordID)
            if udp {
                writer.bulk("transport")
                writer.bulk("udp")
            }
        }
    }

    /// One `XADD` for a Codec 12/13/14/15 frame from a device, to the responses stream:
    /// `ts <receive time> device_id <IMEI> codec <12..15> type <n> payload <JSON>`, where the JSON holds
    /// `type`, `imei`/`timestamp` where present, `text` when printable and `payload_hex`.
    /// `commandID`: the downlink command this response answers (the entry gets a `cmd_id` field).
    mutating func appendMessage(
        _ message: DeviceMessage,
        imei: IMEI,
        receivedMs: UInt64,
        commandID: String? = nil,
        to writer: inout RESPWriter
    ) {
        payload.removeAll(keepingCapacity: true)
        JSONText.appendRaw("{\"device_id\":", to: &payload)
        JSONText.appendString(imei.description, to: &payload)
        payload.append(UInt8(ascii: ","))
        message.appendJSONMembers(to: &payload)
        payload.append(UInt8(ascii: "}"))
        time.removeAll(keepingCapacity: true)
        JSONText.appendISO8601(milliseconds: receivedMs, to: &time)
        let shard = StreamShards.shard(of: imei, count: shards)
        writer.beginCommand(prefix: commandID == nil ? responsesPrefixes[shard] : responsesCorrelatedPrefixes[shard])
        writer.bulk("ts")
        writer.bulk(time.dropFirst().dropLast())
        writer.bulk("device_id")
        writer.bulk(imei.digits)
        writer.bulk("codec")
        writer.bulk(string: message.codec.name)
        writer.bulk("type")
        writer.bulk(string: String(message.type))
        writer.bulk("payload")
        writer.bulk(payload)
        if let commandID {
            writer.bulk("cmd_id")
            writer.bulk(string: commandID)
        }
    }
}
