import Codec8
import FixtureSupport
import Foundation
import Testing

struct JSONTextTests {
    static func text(_ body: (inout [UInt8]) -> Void) -> String {
        var out: [UInt8] = []
        body(&out)
        return String(decoding: out, as: UTF8.self)
    }

    @Test func testISO8601Edges() {
        let cases: [(UInt64, String)] = [
            (0, "\"1970-01-01T00:00:00.000Z\""),
            (1_560_161_086_000, "\"2019-06-10T10:04:46.000Z\""),
            (951_782_400_000, "\"2000-02-29T00:00:00.000Z\""),
            (253_402_300_799_999, "\"9999-12-31T23:59:59.999Z\""),
            (253_402_300_800_000, "\"+010000-01-01T00:00:00.000Z\""),
            (8_640_000_000_000_000, "\"+275760-09-13T00:00:00.000Z\""),
            (8_640_000_000_000_001, "null"),
            (.max, "null"),
        ]
        for (ms, want) in cases {
            #expect(JSONTextTests.text { JSONText.appendISO8601(milliseconds: ms, to: &$0) } == want, "\(ms)")
        }
    }

    @Test func testISO8601AgreesWithFoundation() {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        formatter.timeZone = TimeZone(identifier: "UTC")
        var g = SeededGenerator(seed: 8601)
        for _ in 0..<2000 {
            let ms = UInt64.random(in: 0...253_402_300_799_999, using: &g)
            let date = Date(timeIntervalSince1970: Double(ms / 1000))
            let whole = formatter.string(from: date)  // …SS.000Z
            let want = "\"" + whole.dropLast(4) + String(format: "%03d", Int(ms % 1000)) + "Z\""
            #expect(JSONTextTests.text { JSONText.appendISO8601(milliseconds: ms, to: &$0) } == want, "\(ms)")
        }
    }

    @Test func testCoordinatesAreExactDecimals() {
        let cases: [(Int32, String)] = [
            (0, "0"), (547_146_368, "54.7146368"), (252_562_916, "25.2562916"), (-5, "-0.0000005"),
            (10_000_000, "1"), (15_000_000, "1.5"), (-67_688_900, "-6.76889"), (.min, "-214.7483648"),
            (.max, "214.7483647"), (1_000, "0.0001"),
        ]
        for (e7, want) in cases {
            #expect(JSONTextTests.text { JSONText.appendE7(e7, to: &$0) } == want)
        }
        var g = SeededGenerator(seed: 7)
        for _ in 0..<5000 {
            let e7 = Int32.random(in: .min ... .max, using: &g)
            let written = JSONTextTests.text { JSONText.appendE7(e7, to: &$0) }
            #expect(Double(written) == Double(e7) / 1e7, "\(e7) -> \(written)")
        }
    }

    @Test func testDecimalsAndBase64() {
        var g = SeededGenerator(seed: 10)
        for v in [UInt64(0), 9, 10, 99, 100, .max]
            + (0..<1000).map({ _ in UInt64.random(in: .min ... .max, using: &g) >> UInt64.random(in: 0...63, using: &g) })
        {
            #expect(JSONTextTests.text { JSONText.appendDecimal(v, to: &$0) } == String(v))
        }
        #expect(JSONTextTests.text { JSONText.appendDecimal(Int64.min, to: &$0) } == String(Int64.min))
        for (plain, want) in [
            ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy"),
        ] {
            #expect(JSONTextTests.text { out in Array(plain.utf8).withUnsafeBytes { JSONText.appendBase64($0, to: &out) } } == want)
        }
        for n in 0..<100 {
            let bytes = (0..<n).map { _ in UInt8.random(in: .min ... .max, using: &g) }
            #expect(
                JSONTextTests.text { out in bytes.withUnsafeBytes { JSONText.appendBase64($0, to: &out) } }
                    == Data(bytes).base64EncodedString()
            )
        }
    }

    @Test func testStringsAreEscaped() throws {
        let s = "a\"b\\c\n\r\t\u{1}é"
        let written = JSONTextTests.text { JSONText.appendString(s, to: &$0) }
        #expect(try JSONSerialization.jsonObject(with: Data(written.utf8), options: .fragmentsAllowed) as? String == s)
    }

    @Test func testDuplicateIOIDsKeepTheLastValue() throws {
        let record = AVLRecord(
            timestampMs: 0,
            ioElements: [
                IOElement(id: 1, value: .u8(5)), IOElement(id: 2, value: .u8(6)),
                IOElement(id: 1, value: .u16(700)), IOElement(id: 1, value: .u32(80_000)),
            ]
        )
        let objects = try payloadObjects(try AVLPacketEncoder.encode([record], codec: .codec8))
        let attributes = try #require(objects.first?["attributes"] as? [String: Any])
        #expect(attributes.count == 2)
        #expect((attributes["1"] as? NSNumber)?.intValue == 80_000)
        #expect((attributes["2"] as? NSNumber)?.intValue == 6)
        // The encoder's scratch state is clean afterwards: the same record encodes the same again.
        #expect(jsonEqual(try payloadObjects(try AVLPacketEncoder.encode([record], codec: .codec8)), objects))
    }

    @Test func testJSONComparisonCanFail() {
        #expect(!jsonEqual(["a": 1], ["a": 2]))
        #expect(!jsonEqual(["a": 1], ["a": 1, "b": 1]))
        #expect(!jsonEqual(["x"], ["y"]))
        #expect(!jsonEqual(NSNumber(value: 25.2562916), NSNumber(value: 25.2562917)))
        #expect(jsonEqual(NSNumber(value: 0), NSNumber(value: 0.0)))
    }
}

struct CRC16Tests {
    @Test func testCheckValueAndWorkedExample() {
        #expect(CRC16IBM.checksum(Array("123456789".utf8)) == 0xBB3D)
        let frame = Hex.decode(
            "000000000000003608010000016B40D8EA30010000000000000000000000000000000105021503010101425E0F01F10000601A014E0000000000000000010000C7CF"
        )!
        #expect(CRC16IBM.checksum(frame[8..<(frame.count - 4)]) == 0xC7CF)
    }

    @Test func testSlicedTablesAgreeWithTheBitwiseDefinition() {
        var g = SeededGenerator(seed: 0xA001)
        for n in 0..<300 {
            let bytes = (0..<n).map { _ in UInt8.random(in: .min ... .max, using: &g) }
            #expect(CRC16IBM.checksum(bytes) == CRC16IBM.reference(bytes), "length \(n)")
        }
    }
}

/// The range `RecordJSONEncoder.append` returns: the `timestamp` member's value in the caller's buffer, which
/// the stream entry reuses as its `ts`.
struct RecordJSONTimestampRangeTests {
    @Test(arguments: [0, 1_560_161_086_000, JSONText.maxISO8601Milliseconds, JSONText.maxISO8601Milliseconds + 1, UInt64.max])
    func testTheRangeIsTheTimestampValue(_ milliseconds: UInt64) throws {
        let frame = try AVLPacketEncoder.encode([AVLRecord(timestampMs: milliseconds, ioElements: [])], codec: .codec8Extended)
        var expected: [UInt8] = []
        JSONText.appendISO8601(milliseconds: milliseconds, to: &expected)
        var encoder = RecordJSONEncoder()
        try StandaloneFrame.withDecoded(frame) { decoded in
            guard case .frame(.avl(let packet)) = decoded else {
                Issue.record("not an AVL packet")
                return
            }
            for record in packet.records {
                var out = Array("earlier bytes".utf8)
                let range = encoder.append(record, deviceID: IMEI("356307042441013"), to: &out)
                #expect(Array(out[range]) == expected)
                #expect(Array(out[(range.lowerBound - 12)..<range.lowerBound]) == Array("\"timestamp\":".utf8))
            }
        }
    }
}
