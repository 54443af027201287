import Codec8
import FixtureSupport
import Foundation
import Testing

/// `RecordJSONEncoder` against a plain reference written with `String` interpolation, byte for byte, on
/// values at every decimal digit-count boundary (the encoder writes small numbers and IO-ID keys from
/// tables and larger ones two digits at a time: each boundary is where such a path changes).
struct RecordJSONReferenceTests {
    /// 0, 9, 10, 99, 100, ... 10^19 - 1, 10^19 and UInt64.max, each with its neighbours, cut to `max`.
    static func boundaries(upTo max: UInt64) -> [UInt64] {
        var values: Set<UInt64> = [0, 1, 2, max, max - 1]
        var p: UInt64 = 1
        for _ in 0..<20 {
            for v in [p - 1, p, p + 1] where v <= max { values.insert(v) }
            if p > UInt64.max / 10 { break }
            p *= 10
        }
        return values.sorted()
    }

    /// The payload JSON as docs/record-schema.md describes it, the obvious way.
    static func reference(_ r: AVLRecord, codec: AVLCodec, deviceID: String) -> String {
        func e7(_ v: Int32) -> String {
            let m = v.magnitude
            var s = (v < 0 ? "-" : "") + String(m / 10_000_000)
            var fraction = String(m % 10_000_000)
            if fraction != "0" {
                fraction = String(repeating: "0", count: 7 - fraction.count) + fraction
                while fraction.hasSuffix("0") { fraction.removeLast() }
                s += "." + fraction
            }
            return s
        }
        var time: [UInt8] = []
        JSONText.appendISO8601(milliseconds: r.timestampMs, to: &time)
        var s = "{\"device_id\":\"\(deviceID)\",\"codec\":\"\(codec.name)\",\"timestamp\":\(String(decoding: time, as: UTF8.self))"
        s += ",\"timestamp_ms\":\(r.timestampMs),\"priority\":\(r.priority),\"longitude\":\(e7(r.longitudeE7))"
        s += ",\"latitude\":\(e7(r.latitudeE7)),\"altitude\":\(r.altitudeMeters),\"angle\":\(r.angleDegrees)"
        s += ",\"satellites\":\(r.satellites),\"speed\":\(r.speedKmh),\"event_io_id\":\(r.eventIOID)"
        if codec == .codec16 { s += ",\"generation_type\":\(r.generationType ?? 0)" }
        // Wire order (grouped by width), each ID at its last occurrence.
        let wire = [1, 2, 4, 8, -1].flatMap { width in r.ioElements.filter { $0.value.widthForTest == width } }
        var last: [UInt16: Int] = [:]
        for (i, e) in wire.enumerated() { last[e.id] = i }
        let members = wire.enumerated().filter { last[$0.element.id] == $0.offset }.map { _, e in
            let value: String
            switch e.value {
            case .u8(let v): value = String(v)
            case .u16(let v): value = String(v)
            case .u32(let v): value = String(v)
            case .u64(let v): value = "{\"__bigint\":\"\(v)\"}"
            case .bytes(let v): value = "{\"__buffer_b64\":\"\(Data(v).base64EncodedString())\"}"
            }
            return "\"\(e.id)\":\(value)"
        }
        return s + ",\"attributes\":{" + members.joined(separator: ",") + "}}"
    }

    static func encoded(_ records: [AVLRecord], codec: AVLCodec, encoder: inout RecordJSONEncoder) throws -> [String] {
        let frame = try AVLPacketEncoder.encode(records, codec: codec)
        return try frame.withUnsafeBytes { raw in
            let packet = try AVLPacketView(frame: raw, maxDataLength: 1 << 24)
            return packet.records.map { view in
                var out = Array("before".utf8)
                encoder.append(view, deviceID: IMEI("356307042441013"), to: &out)
                return String(decoding: out.dropFirst(6), as: UTF8.self)
            }
        }
    }

    @Test(arguments: AVLCodec.allCases)
    func testBoundaryValuesMatchTheReference(_ codec: AVLCodec) throws {
        let maxID: UInt64 = codec == .codec8 ? 255 : 65_535
        let ids = Set(Self.boundaries(upTo: maxID) + [239, 240, 256, 65_534]).filter { $0 <= maxID }.sorted().map { UInt16($0) }
        let values = Self.boundaries(upTo: UInt64.max)
        var records: [AVLRecord] = []
        // Every value boundary in every width, under a rotating ID (each record's IDs distinct).
        for (i, v) in values.enumerated() {
            var elements: [IOElement] = []
            if v <= UInt8.max { elements.append(IOElement(id: ids[i % ids.count], value: .u8(UInt8(v)))) }
            if v <= UInt16.max { elements.append(IOElement(id: ids[(i + 1) % ids.count], value: .u16(UInt16(v)))) }
            if v <= UInt32.max { elements.append(IOElement(id: ids[(i + 2) % ids.count], value: .u32(UInt32(v)))) }
            elements.append(IOElement(id: ids[(i + 3) % ids.count], value: .u64(v)))
            let small16 = UInt16(truncatingIfNeeded: v)
            records.append(
                AVLRecord(
                    timestampMs: v,
                    priority: UInt8(truncatingIfNeeded: v),
                    longitudeE7: Int32(truncatingIfNeeded: v),
                    latitudeE7: Int32(truncatingIfNeeded: 0 &- v),
                    altitudeMeters: Int16(truncatingIfNeeded: v),
                    angleDegrees: small16,
                    satellites: UInt8(truncatingIfNeeded: v),
                    speedKmh: small16,
                    eventIOID: codec == .codec8 ? small16 & 0xFF : small16,
                    generationType: codec == .codec16 ? UInt8(truncatingIfNeeded: v) : nil,
                    ioElements: elements
                )
            )
        }
        // Every ID boundary as a key in every width, and repeated (the last value is kept).
        for id in ids.map({ min($0, UInt16(maxID) - 5) }) {
            var elements = [
                IOElement(id: id, value: .u8(7)), IOElement(id: id &+ 1, value: .u16(1_000)),
                IOElement(id: id &+ 2, value: .u32(100_000)), IOElement(id: id &+ 3, value: .u64(1)),
            ]
            if codec == .codec8Extended {
                elements.append(IOElement(id: id &+ 4, value: .bytes([])))
                elements.append(IOElement(id: id &+ 5, value: .bytes(Array(0..<17))))
            }
            records.append(AVLRecord(timestampMs: 1_560_161_086_000, altitudeMeters: -32_768, ioElements: elements))
            records.append(AVLRecord(timestampMs: 1, altitudeMeters: -1, ioElements: elements + elements.reversed()))
        }
        var encoder = RecordJSONEncoder()
        for chunk in stride(from: 0, to: records.count, by: 50) {
            let some = Array(records[chunk..<min(chunk + 50, records.count)])
            let written = try Self.encoded(some, codec: codec, encoder: &encoder)
            for (record, json) in zip(some, written) {
                #expect(json == Self.reference(record, codec: codec, deviceID: "356307042441013"))
            }
        }
    }

    @Test(arguments: AVLCodec.allCases)
    func testRandomRecordsMatchTheReference(_ codec: AVLCodec) throws {
        var g = SeededGenerator(seed: 0x15_0419 ^ UInt64(codec.rawValue))
        var encoder = RecordJSONEncoder()
        for _ in 0..<300 {
            let records = (0..<5).map { _ in RandomRecords.record(codec: codec, using: &g) }
            for (record, json) in zip(records, try Self.encoded(records, codec: codec, encoder: &encoder)) {
                #expect(json == Self.reference(record, codec: codec, deviceID: "356307042441013"))
            }
        }
    }
}
