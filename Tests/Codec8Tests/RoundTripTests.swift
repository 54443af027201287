import Codec8
import FixtureSupport
import Foundation
import Testing

/// Encode then decode gives back exactly what went in, for random records of every codec.
struct RoundTripTests {
    @Test(arguments: AVLCodec.allCases)
    func testRandomPacketsRoundTrip(_ codec: AVLCodec) throws {
        var g = SeededGenerator(seed: 0xC0DEC8 ^ UInt64(codec.rawValue))
        var widthsSeen = Set<Int>()
        for _ in 0..<400 {
            let count = Int.random(in: 0..<20, using: &g) == 0 ? Int.random(in: 0...255, using: &g) : Int.random(in: 1...6, using: &g)
            let records = (0..<count).map { _ in RandomRecords.record(codec: codec, small: count > 6, using: &g) }
            let frame = try AVLPacketEncoder.encode(records, codec: codec)
            let decoded = try frame.withUnsafeBytes { raw in
                let packet = try AVLPacketView(frame: raw, maxDataLength: 1 << 24)
                #expect(packet.codec == codec)
                #expect(packet.recordCount == count)
                return packet.records.map { $0.materialize() }
            }
            #expect(decoded == records)
            for r in records { for e in r.ioElements { widthsSeen.insert(e.value.widthForTest) } }
        }
        #expect(widthsSeen == (codec.hasVariableGroup ? [1, 2, 4, 8, -1] : [1, 2, 4, 8]))
    }

    @Test(arguments: AVLCodec.allCases)
    func testRandomRecordsGiveValidPayloadJSON(_ codec: AVLCodec) throws {
        var g = SeededGenerator(seed: 42 ^ UInt64(codec.rawValue))
        var encoder = RecordJSONEncoder()
        for _ in 0..<200 {
            let record = RandomRecords.record(codec: codec, using: &g)
            let frame = try AVLPacketEncoder.encode([record], codec: codec)
            var out: [UInt8] = []
            try frame.withUnsafeBytes { raw in
                let packet = try AVLPacketView(frame: raw, maxDataLength: 1 << 24)
                for view in packet.records { encoder.append(view, deviceID: IMEI("352093081452251"), to: &out) }
            }
            let object = try #require(try JSONSerialization.jsonObject(with: Data(out)) as? [String: Any])
            let attributes = try #require(object["attributes"] as? [String: Any])
            #expect(attributes.count == Set(record.ioElements.map(\.id)).count)
            #expect((object["timestamp_ms"] as? NSNumber)?.uint64Value == record.timestampMs)
            #expect(object["codec"] as? String == codec.name)
            #expect((object["generation_type"] != nil) == (codec == .codec16))
            // The last value of each ID is the one written.
            var last: [UInt16: IOElementValue] = [:]
            for e in record.ioElements { last[e.id] = e.value }
            for (id, value) in last {
                let written = attributes[String(id)]
                switch value {
                case .u8(let v): #expect((written as? NSNumber)?.uint64Value == UInt64(v))
                case .u16(let v): #expect((written as? NSNumber)?.uint64Value == UInt64(v))
                case .u32(let v): #expect((written as? NSNumber)?.uint64Value == UInt64(v))
                case .u64(let v): #expect((written as? [String: String])?["__bigint"] == String(v))
                case .bytes(let v): #expect((written as? [String: String])?["__buffer_b64"] == Data(v).base64EncodedString())
                }
            }
        }
    }

    @Test func testEncoderRefusesWhatTheCodecCannotCarry() {
        let wideID = AVLRecord(timestampMs: 0, ioElements: [IOElement(id: 256, value: .u8(1))])
        #expect(throws: AVLEncodingError.idTooWide(256)) { try AVLPacketEncoder.encode([wideID], codec: .codec8) }
        let variable = AVLRecord(timestampMs: 0, ioElements: [IOElement(id: 5, value: .bytes([1]))])
        #expect(throws: AVLEncodingError.variableValueNotEncodable(id: 5)) {
            try AVLPacketEncoder.encode([variable], codec: .codec16)
        }
        #expect(throws: AVLEncodingError.tooManyRecords(256)) {
            try AVLPacketEncoder.encode(Array(repeating: AVLRecord(timestampMs: 0), count: 256), codec: .codec8)
        }
    }

    @Test func testAckIsTheRecordCountBigEndian() {
        #expect(AVLAck.bytes(count: 2) == [0, 0, 0, 2])
        #expect(AVLAck.bytes(count: 0x0102_0304) == [1, 2, 3, 4])
        #expect(AVLAck.parse([0, 0, 0, 14]) == 14)
        #expect(AVLAck.parse([0, 0, 14]) == nil)
    }
}

extension IOElementValue {
    var widthForTest: Int {
        switch self {
        case .u8: 1
        case .u16: 2
        case .u32: 4
        case .u64: 8
        case .bytes: -1
        }
    }
}
