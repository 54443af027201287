/// Writes records as the payload JSON of `docs/record-schema.md`, the contract with downstream consumers.
///
/// ```
/// {"device_id":"356307042441013","codec":"8","timestamp":"2019-06-10T10:04:46.000Z",
///  "timestamp_ms":1560161086000,"priority":1,"longitude":0,"latitude":0,"altitude":0,"angle":0,
///  "satellites":0,"speed":0,"event_io_id":1,"attributes":{"21":3,"1":1,"78":{"__bigint":"0"}}}
/// ```
/// One encoder is reused for many records: it owns an 8 KiB bitmap of IO IDs used to find duplicate
/// IDs within a record without allocating. A record that repeats an ID keeps the last value (as a
/// JavaScript object assignment did in the service this replaces); that rare path allocates.
public struct RecordJSONEncoder {
    /// One bit per possible IO ID; all zero between calls.
    private var seen: [UInt64]

    public init() {
        seen = [UInt64](repeating: 0, count: 65_536 / 64)
    }

    /// Appends the JSON object for `record` to `out`. `deviceID` nil writes `"device_id":null`.
    public mutating func append(_ record: AVLRecordView, deviceID: IMEI?, to out: inout [UInt8]) {
        JSONText.appendRaw("{\"device_id\":", to: &out)
        if let deviceID {
            out.append(UInt8(ascii: "\""))
            deviceID.appendDigits(to: &out)
            out.append(UInt8(ascii: "\""))
        } else {
            JSONText.appendRaw("null", to: &out)
        }
        switch record.codec {
        case .codec8: JSONText.appendRaw(",\"codec\":\"8\",\"timestamp\":", to: &out)
        case .codec8Extended: JSONText.appendRaw(",\"codec\":\"8E\",\"timestamp\":", to: &out)
        case .codec16: JSONText.appendRaw(",\"codec\":\"16\",\"timestamp\":", to: &out)
        }
        JSONText.appendISO8601(milliseconds: record.timestampMs, to: &out)
        JSONText.appendRaw(",\"timestamp_ms\":", to: &out)
        JSONText.appendDecimal(record.timestampMs, to: &out)
        JSONText.appendRaw(",\"priority\":", to: &out)
        JSONText.appendDecimal(UInt64(record.priority), to: &out)
        JSONText.appendRaw(",\"longitude\":", to: &out)
        JSONText.appendE7(record.longitudeE7, to: &out)
        JSONText.appendRaw(",\"latitude\":", to: &out)
        JSONText.appendE7(record.latitudeE7, to: &out)
        JSONText.appendRaw(",\"altitude\":", to: &out)
        JSONText.appendDecimal(Int64(record.altitudeMeters), to: &out)
        JSONText.appendRaw(",\"angle\":", to: &out)
        JSONText.appendDecimal(UInt64(record.angleDegrees), to: &out)
        JSONText.appendRaw(",\"satellites\":", to: &out)
        JSONText.appendDecimal(UInt64(record.satellites), to: &out)
        JSONText.appendRaw(",\"speed\":", to: &out)
        JSONText.appendDecimal(UInt64(record.speedKmh), to: &out)
        JSONText.appendRaw(",\"event_io_id\":", to: &out)
        JSONText.appendDecimal(UInt64(record.eventIOID), to: &out)
        if let generationType = record.generationType {
            JSONText.appendRaw(",\"generation_type\":", to: &out)
            JSONText.appendDecimal(UInt64(generationType), to: &out)
        }
        JSONText.appendRaw(",\"attributes\":{", to: &out)
        appendAttributes(record.ioElements, to: &out)
        JSONText.appendRaw("}}", to: &out)
    }

    private mutating func appendAttributes(_ elements: IOElements, to out: inout [UInt8]) {
        var duplicate = false
        seen.withUnsafeMutableBufferPointer { bits in
            for element in elements {
                let word = Int(element.id >> 6)
                let mask = UInt64(1) << UInt64(element.id & 63)
                if bits[word] & mask != 0 { duplicate = true }
                bits[word] |= mask
            }
        }
        if !duplicate {
            var first = true
            seen.withUnsafeMutableBufferPointer { bits in
                for element in elements {
                    bits[Int(element.id >> 6)] = 0
                    RecordJSONEncoder.appendElement(element, first: first, to: &out)
                    first = false
                }
            }
            return
        }
        // Rare: an ID repeats. Keep each ID's last occurrence; a reverse walk clears the bits as it goes.
        let all = Array(elements)
        var keep = [Bool](repeating: false, count: all.count)
        seen.withUnsafeMutableBufferPointer { bits in
            for i in all.indices.reversed() {
                let word = Int(all[i].id >> 6)
                let mask = UInt64(1) << UInt64(all[i].id & 63)
                if bits[word] & mask != 0 {
                    keep[i] = true
                    bits[word] &= ~mask
                }
            }
        }
        var first = true
        for i in all.indices where keep[i] {
            RecordJSONEncoder.appendElement(all[i], first: first, to: &out)
            first = false
        }
    }

    @inline(__always)
    private static func appendElement(_ element: IOElementView, first: Bool, to out: inout [UInt8]) {
        if !first { out.append(UInt8(ascii: ",")) }
        out.append(UInt8(ascii: "\""))
        JSONText.appendDecimal(UInt64(element.id), to: &out)
        JSONText.appendRaw("\":", to: &out)
        switch element.value {
        case .u8(let v): JSONText.appendDecimal(UInt64(v), to: &out)
        case .u16(let v): JSONText.appendDecimal(UInt64(v), to: &out)
        case .u32(let v): JSONText.appendDecimal(UInt64(v), to: &out)
        case .u64(let v):
            JSONText.appendRaw("{\"__bigint\":\"", to: &out)
            JSONText.appendDecimal(v, to: &out)
            JSONText.appendRaw("\"}", to: &out)
        case .bytes(let v):
            JSONText.appendRaw("{\"__buffer_b64\":\"", to: &out)
            JSONText.appendBase64(v, to: &out)
            JSONText.appendRaw("\"}", to: &out)
        }
    }
}
