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
    /// `*16 XADD <telemetry stream> MAXLEN ~ <maxlen> * ts` for each shard, formatted once: a record's command
    /// starts with its device's.
    private let telemetryPrefixes: [[UInt8]]
    /// `*18 XADD <telemetry stream> MAXLEN ~ <maxlen> * ts` for each shard: a UDP record's command starts with it.
    private let telemetryUDPPrefixes: [[UInt8]]
    /// `*16 XADD <responses stream> MAXLEN ~ <maxlen> * ts` for each shard.
    private let responsesPrefixes: [[UInt8]]
    /// `*18 XADD <responses stream> MAXLEN ~ <maxlen> * ts` for each shard: a response that answers a command (`cmd_id`).
    private let responsesCorrelatedPrefixes: [[UInt8]]
    private let shards: Int
    private var json = RecordJSONEncoder()
    private var payload: [UInt8] = []
    private var time: [UInt8] = []

    init(telemetryStream: String, responsesStream: String, maxLength: Int, responsesMaxLength: Int, shards: Int = 1) {
        func prefixes(_ stream: String, fields: Int, maxLength: Int) -> [[UInt8]] {
            let cap = Array(String(StreamShards.maxLength(maxLength, count: shards)).utf8)
            return StreamShards.keys(stream, count: shards).map { key in
                RESPWriter.formatted(
                    arguments: 6 + 2 * fields,
                    leading: [
                        Array("XADD".utf8), Array(key.utf8), Array("MAXLEN".utf8), [UInt8(ascii: "~")], cap, [UInt8(ascii: "*")],
                        Array("ts".utf8),
                    ]
                )
            }
        }
        self.shards = shards
        telemetryPrefixes = prefixes(telemetryStream, fields: 5, maxLength: maxLength)
        telemetryUDPPrefixes = prefixes(telemetryStream, fields: 6, maxLength: maxLength)
        responsesPrefixes = prefixes(responsesStream, fields: 5, maxLength: responsesMaxLength)
        responsesCorrelatedPrefixes = prefixes(responsesStream, fields: 6, maxLength: responsesMaxLength)
    }

    /// One `XADD` per record of the packet, with its `record_id`, written into a new buffer (a publish job's);
    /// `udp` adds the `transport udp` field.
    ///
    /// Each record's command is written through a ``RESPBufferWriter`` straight into the buffer (see
    /// ``RESPBufferWriter`` for why; ``RESPBuffer`` for why not an array). The buffer is reserved for the packet
    /// at the largest size per record seen so far, so it is rarely grown, and trimmed after. What is the same
    /// for every record is formatted once: the command's start up to the `ts` name (per shard, at init), and
    /// `device_id <IMEI> codec <codec> payload` (per packet).
    mutating func records(of packet: AVLPacketView, imei: IMEI, udp: Bool = false) -> RESPBuffer {
        let shard = StreamShards.shard(of: imei, count: shards)
        let prefix = udp ? telemetryUDPPrefixes[shard] : telemetryPrefixes[shard]
        let recordIDPrefix = XXH64.recordIDPrefix(imei: imei, codec: packet.codec)
        let codec: StaticString =
            switch packet.codec {
            case .codec8: "8"
            case .codec8Extended: "8E"
            case .codec16: "16"
            }
        let reserved = min(packet.recordCount * bytesPerRecord, Self.maxReservation)
        let out = RESPBuffer(capacity: reserved + prefix.count + Self.fieldsBound + 32)
        // Taken out of `self` while it is written, so the closures below need no access to `self` (the
        // encoder keeps its capacity for the next packet).
        var payload = self.payload
        self.payload = []
        defer { self.payload = payload }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: Self.deviceFieldsBound) { deviceFieldsBuffer in
            var fields = RESPBufferWriter(deviceFieldsBuffer.baseAddress!)
            fields.bulk("device_id")
            imei.withDigits { fields.bulk($0) }
            fields.bulk("codec")
            fields.bulk(codec)
            fields.bulk("payload")
            let deviceFields = UnsafeRawBufferPointer(fields.written)
            for record in packet.records {
                payload.removeAll(keepingCapacity: true)
                // `ts` is the payload's `timestamp` without its quotes (empty for `null`): formatted once.
                let timestamp = json.append(record, deviceID: imei, to: &payload)
                let ts = payload[timestamp.lowerBound] == UInt8(ascii: "\"") ? timestamp.dropFirst().dropLast() : timestamp.prefix(0)
                let recordID = record.recordID(prefix: recordIDPrefix)
                let bound = prefix.count + RESPBufferWriter.bulkBound(payload.count) + Self.fieldsBound
                out.write(commands: 1, bound: bound) { w in
                    prefix.withUnsafeBytes { w.raw($0) }
                    payload[ts].withUnsafeBytes { w.bulk($0) }
                    w.raw(deviceFields)
                    w.bulk(payload)
                    w.bulk("record_id")
                    XXH64.withHex(recordID) { w.bulk($0) }
                    if udp {
                        w.bulk("transport")
                        w.bulk("udp")
                    }
                }
            }
        }
        if packet.recordCount > 0 {
            let average = (out.count + packet.recordCount - 1) / packet.recordCount
            bytesPerRecord = max(average, (7 * bytesPerRecord + average) / 8)
        }
        out.trim()
        return out
    }

    /// What ``records(of:imei:udp:)`` reserves per record (and one record's slack besides): a packet's average
    /// at once when it is larger, an eighth of the way down per packet after (so a packet's buffer is
    /// allocated once and rarely grown). A device sending a few huge records (`NX` elements) raises it for the
    /// packets after it on its event loop, by at most ``maxReservation`` per packet, and not for long.
    private var bytesPerRecord = 768

    /// The most reserved for a packet's commands before they are written (they grow past it when they must).
    private static var maxReservation: Int { 256 * 1024 }

    /// The most bytes `device_id <IMEI> codec <codec> payload` takes: 5 bulk strings of at most 25 bytes of
    /// framing each (``RESPBufferWriter/bulkBound(_:)``) and 43 bytes of values (at most 20 IMEI digits).
    private static var deviceFieldsBound: Int { 5 * 25 + 43 }

    /// The most bytes a record's command takes besides its prefix and its payload's bulk string: the `ts`
    /// value (at most 27 bytes), the device fields (``deviceFieldsBound``), `record_id` and its 16 digits,
    /// `transport udp`: 9 bulk strings of at most 25 bytes of framing each, 168 bytes of values, 393 in all,
    /// rounded up.
    private static var fieldsBound: Int { 512 }

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
