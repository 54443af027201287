import Codec8

/// Writes the `XADD` commands for records and device messages, in the entry shape the consumers of
/// the replaced TypeScript service read:
///
/// `XADD <stream> MAXLEN ~ <maxlen> * ts <ISO-8601 record time> device_id <IMEI> codec <8|8E|16> payload <record JSON>`
///
/// `ts` is empty when the record time cannot be written in ISO-8601 (see docs/record-schema.md).
struct StreamEntryEncoder {
    private let telemetryStream: [UInt8]
    private let responsesStream: [UInt8]
    private let maxLength: [UInt8]
    private var json = RecordJSONEncoder()
    private var payload: [UInt8] = []
    private var time: [UInt8] = []

    init(telemetryStream: String, responsesStream: String, maxLength: Int) {
        self.telemetryStream = Array(telemetryStream.utf8)
        self.responsesStream = Array(responsesStream.utf8)
        self.maxLength = Array(String(maxLength).utf8)
    }

    /// One `XADD` per record of the packet.
    mutating func appendRecords(of packet: AVLPacketView, imei: IMEI, to writer: inout RESPWriter) {
        var digits: [UInt8] = []
        imei.appendDigits(to: &digits)
        for record in packet.records {
            payload.removeAll(keepingCapacity: true)
            json.append(record, deviceID: imei, to: &payload)
            time.removeAll(keepingCapacity: true)
            JSONText.appendISO8601(milliseconds: record.timestampMs, to: &time)
            let ts = time.first == UInt8(ascii: "\"") ? time[1..<(time.count - 1)] : time[0..<0]
            beginXADD(stream: telemetryStream, fields: 4, writer: &writer)
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
        }
    }

    /// One `XADD` for a Codec 12/13/14/15 frame from a device, to the responses stream:
    /// `ts <receive time> device_id <IMEI> codec <12..15> type <n> payload <JSON>`, where the JSON holds
    /// `type`, `imei`/`timestamp` where present, `text` when printable and `payload_hex`.
    mutating func appendMessage(_ message: DeviceMessage, imei: IMEI, receivedMs: UInt64, to writer: inout RESPWriter) {
        payload.removeAll(keepingCapacity: true)
        JSONText.appendRaw("{\"device_id\":", to: &payload)
        JSONText.appendString(imei.description, to: &payload)
        payload.append(UInt8(ascii: ","))
        message.appendJSONMembers(to: &payload)
        payload.append(UInt8(ascii: "}"))
        time.removeAll(keepingCapacity: true)
        JSONText.appendISO8601(milliseconds: receivedMs, to: &time)
        beginXADD(stream: responsesStream, fields: 5, writer: &writer)
        writer.bulk("ts")
        writer.bulk(time.dropFirst().dropLast())
        writer.bulk("device_id")
        writer.bulk(imei.digits)
        writer.bulk("codec")
        writer.bulk(message.codec.name)
        writer.bulk("type")
        writer.bulk(String(message.type))
        writer.bulk("payload")
        writer.bulk(payload)
    }

    private func beginXADD(stream: [UInt8], fields: Int, writer: inout RESPWriter) {
        writer.beginCommand(arguments: 6 + 2 * fields)
        writer.bulk("XADD")
        writer.bulk(stream)
        writer.bulk("MAXLEN")
        writer.bulk("~")
        writer.bulk(maxLength)
        writer.bulk("*")
    }
}
