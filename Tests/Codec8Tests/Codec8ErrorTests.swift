import Codec8
import FixtureSupport
import Testing

/// Each error past the envelope, from a hand-built frame with a valid length and CRC, reported with its
/// exact evidence (index, offset, reason). Frames come from the package's encoders, are patched at the
/// byte the test is about, then resealed (``FrameSurgery``).
struct Codec8ErrorTests {
    /// A Codec 8 record of 35 bytes. From its start `s`: event ID at s+24, N of Total IO (2) at s+25,
    /// N1 (1) at s+26, N2 (1) at s+29, N4 (0) at s+33, N8 (0) at s+34.
    static let codec8Record = AVLRecord(
        timestampMs: 1_560_161_086_000,
        ioElements: [IOElement(id: 1, value: .u8(5)), IOElement(id: 2, value: .u16(700))]
    )

    /// Two ``codec8Record``s: record 0 at byte 10, record 1 at 45, Number of Data 2 at 80 (L = 73).
    static func twoCodec8Records() throws -> [UInt8] {
        try AVLPacketEncoder.encode([codec8Record, codec8Record], codec: .codec8)
    }

    @Test func testRecordCountMismatchIsReported() throws {
        var trailer = try Codec8ErrorTests.twoCodec8Records()
        trailer[80] = 3
        FrameSurgery.recomputeCRC(&trailer)
        #expect(throws: Codec8Error.recordCountMismatch(header: 2, trailer: 3)) { try FrameSurgery.decode(trailer) }

        var header = try Codec8ErrorTests.twoCodec8Records()
        header[9] = 1
        FrameSurgery.recomputeCRC(&header)
        #expect(throws: Codec8Error.recordCountMismatch(header: 1, trailer: 2)) { try FrameSurgery.decode(header) }
    }

    @Test func testGroupCountPastTheDataFieldIsAnOverrun() throws {
        // Record 1's N8 count says one 9-byte element, where only Number of Data 2 follows.
        var frame = try Codec8ErrorTests.twoCodec8Records()
        frame[45 + 34] = 1
        FrameSurgery.recomputeCRC(&frame)
        #expect(throws: Codec8Error.malformedRecord(index: 1, offset: 45, reason: .overrun)) { try FrameSurgery.decode(frame) }
    }

    @Test func testMoreRecordsCountedThanPresentIsAnOverrun() throws {
        // Both counts say 3; the third record would start at Number of Data 2.
        var frame = try Codec8ErrorTests.twoCodec8Records()
        frame[9] = 3
        frame[80] = 3
        FrameSurgery.recomputeCRC(&frame)
        #expect(throws: Codec8Error.malformedRecord(index: 2, offset: 80, reason: .overrun)) { try FrameSurgery.decode(frame) }
    }

    @Test func testVariableLengthValuePastTheDataFieldIsAnOverrun() throws {
        // Codec 8E, one record at 10: counts are 2 bytes, N of Total IO at 36, N1/N2/N4/N8 at 38...45,
        // NX count at 46, the NX element's ID at 48, its length (3) at 50, value 52...54, Number of Data 2 at 55.
        let record = AVLRecord(timestampMs: 0, ioElements: [IOElement(id: 385, value: .bytes([1, 2, 3]))])
        var frame = try AVLPacketEncoder.encode([record], codec: .codec8Extended)
        #expect(frame[50...51] == [0, 3])
        frame[51] = 4
        FrameSurgery.recomputeCRC(&frame)
        #expect(throws: Codec8Error.malformedRecord(index: 0, offset: 10, reason: .overrun)) { try FrameSurgery.decode(frame) }
    }

    @Test func testDataFieldTooShortForTheCountsIsAnOverrun() {
        // L = 2: codec ID and Number of Data 1, no room for Number of Data 2.
        var frame: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 2, AVLCodec.codec8.rawValue, 0, 0, 0, 0, 0]
        FrameSurgery.recomputeCRC(&frame)
        #expect(throws: Codec8Error.malformedRecord(index: 0, offset: 8, reason: .overrun)) { try FrameSurgery.decode(frame) }
    }

    @Test func testBytesAfterTheLastRecordAreTrailingBytes() throws {
        // Three junk bytes between the only record (10..<45) and Number of Data 2; length and CRC made valid.
        var junk = try AVLPacketEncoder.encode([Codec8ErrorTests.codec8Record], codec: .codec8)
        junk.insert(contentsOf: [0xAA, 0xBB, 0xCC], at: 45)
        FrameSurgery.reseal(&junk)
        #expect(throws: Codec8Error.malformedRecord(index: 1, offset: 45, reason: .trailingBytes(3))) { try FrameSurgery.decode(junk) }

        // Both counts say 1 while two records are present: the second is 35 unused bytes.
        var uncounted = try Codec8ErrorTests.twoCodec8Records()
        uncounted[9] = 1
        uncounted[80] = 1
        FrameSurgery.recomputeCRC(&uncounted)
        #expect(throws: Codec8Error.malformedRecord(index: 1, offset: 45, reason: .trailingBytes(35))) {
            try FrameSurgery.decode(uncounted)
        }
    }

    @Test func testCodec8TotalIOCountDisagreeingWithItsGroupsIsReported() throws {
        // Record 1's N of Total IO (1 byte, at 45 + 25) says 3; its groups hold 2.
        var frame = try Codec8ErrorTests.twoCodec8Records()
        #expect(frame[45 + 25] == 2)
        frame[45 + 25] = 3
        FrameSurgery.recomputeCRC(&frame)
        #expect(throws: Codec8Error.malformedRecord(index: 1, offset: 45, reason: .ioCountMismatch(declared: 3, counted: 2))) {
            try FrameSurgery.decode(frame)
        }
    }

    @Test func testCodec8ExtendedTotalIOCountDisagreeingWithItsGroupsIsReported() throws {
        // Codec 8E: N of Total IO is 2 bytes (at 10 + 26) and counts the variable-length group too (1 + 1 + 1).
        let record = AVLRecord(
            timestampMs: 0,
            eventIOID: 385,
            ioElements: [
                IOElement(id: 300, value: .u8(1)), IOElement(id: 301, value: .u16(2)), IOElement(id: 385, value: .bytes([0xBE, 0xEF])),
            ]
        )
        var frame = try AVLPacketEncoder.encode([record], codec: .codec8Extended)
        #expect(frame[36...37] == [0, 3])
        frame[36] = 1
        FrameSurgery.recomputeCRC(&frame)
        #expect(throws: Codec8Error.malformedRecord(index: 0, offset: 10, reason: .ioCountMismatch(declared: 0x103, counted: 3))) {
            try FrameSurgery.decode(frame)
        }
    }

    @Test func testCodec16TotalIOCountDisagreeingWithItsGroupsIsReported() throws {
        // Codec 16: 2-byte event ID and a generation type put N of Total IO (1 byte) at 10 + 27.
        let record = AVLRecord(timestampMs: 0, generationType: 7, ioElements: Codec8ErrorTests.codec8Record.ioElements)
        var frame = try AVLPacketEncoder.encode([record], codec: .codec16)
        #expect(frame[37] == 2)
        frame[37] = 5
        FrameSurgery.recomputeCRC(&frame)
        #expect(throws: Codec8Error.malformedRecord(index: 0, offset: 10, reason: .ioCountMismatch(declared: 5, counted: 2))) {
            try FrameSurgery.decode(frame)
        }
    }

    /// A Codec 12 frame (no fixed fields) with a payload of `size` bytes, relabelled as `codec`, CRC recomputed.
    static func relabelledCodec12(payloadSize size: Int, as codec: DeviceMessage.Codec) -> [UInt8] {
        let payload = [UInt8](repeating: 0x41, count: size)
        var frame = DeviceMessage(codec: .codec12, type: DeviceMessage.typeResponse, payload: payload).encoded()
        frame[8] = codec.rawValue
        FrameSurgery.recomputeCRC(&frame)
        return frame
    }

    @Test(arguments: [(DeviceMessage.Codec.codec13, 3), (.codec14, 7), (.codec15, 11)])
    func testMessagePayloadShorterThanItsFixedFieldsIsReported(_ codec: DeviceMessage.Codec, size: Int) {
        // The timestamp and/or IMEI need 4 bytes (Codec 13), 8 (14) or 12 (15); the payload is one short.
        let short = Codec8ErrorTests.relabelledCodec12(payloadSize: size, as: codec)
        #expect(throws: Codec8Error.malformedRecord(index: 0, offset: 15, reason: .payloadTooShort(codec: codec.rawValue, size: size))) {
            try FrameSurgery.decode(short)
        }
        // One byte more is exactly the fixed fields with an empty payload: valid.
        let exact = Codec8ErrorTests.relabelledCodec12(payloadSize: size + 1, as: codec)
        #expect(throws: Never.self) { try FrameSurgery.decode(exact) }
    }
}
