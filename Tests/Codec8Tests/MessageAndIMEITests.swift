import Codec8
import FixtureSupport
import Testing

struct IMEITests {
    @Test func testLoginOfTheDocumentationExample() throws {
        let imei = try IMEI.parseLogin(Hex.decode("000F333536333037303432343431303133")!)
        #expect(imei.description == "356307042441013")
        #expect(imei.loginFrame == Hex.decode("000F333536333037303432343431303133")!)
    }

    @Test func testSixteenDigitsAndLeadingZerosAreKept() throws {
        let imei = try #require(IMEI("0352093081452251"))
        #expect(imei.description == "0352093081452251")
        #expect(try IMEI.parseLogin(imei.loginFrame) == imei)
    }

    @Test func testMalformedLoginsAreTyped() {
        #expect(throws: Codec8Error.badIMEI(.length(14))) { try IMEI.parseLogin([0, 14] + Array("35630704244101".utf8)) }
        #expect(throws: Codec8Error.badIMEI(.nonDigit(offset: 5, byte: 0x41))) {
            try IMEI.parseLogin([0, 15] + Array("356A07042441013".utf8))
        }
        #expect(throws: Codec8Error.truncated(needed: 17, available: 10)) { try IMEI.parseLogin([0, 15] + Array("35630704".utf8)) }
        #expect(throws: Codec8Error.lengthMismatch(declared: 17, actual: 18)) {
            try IMEI.parseLogin([0, 15] + Array("3563070424410139".utf8))
        }
        #expect(IMEI("35630704244101") == nil)
        #expect(IMEI("3563070424410131234") == nil)
        #expect(IMEI("35630704244101x") == nil)
    }
}

struct DeviceMessageTests {
    static func fixture(_ id: String) -> [UInt8] { Fixtures.frames.first { $0.id == id }!.bytes }

    static func message(_ bytes: [UInt8]) throws -> DeviceMessage? {
        try StandaloneFrame.withDecoded(bytes) { frame -> DeviceMessage? in
            guard case .frame(.message(let m)) = frame else { return nil }
            return m
        }
    }

    @Test func testCodec12CommandEncodesAsDocumented() {
        #expect(DeviceMessage.codec12Command("getinfo") == DeviceMessageTests.fixture("w-c12-cmd"))
    }

    @Test func testCodec14CommandEncodesAsDocumented() throws {
        let imei = try #require(IMEI("352093081452251"))
        #expect(DeviceMessage.codec14Command("getver", imei: imei) == DeviceMessageTests.fixture("w-c14-cmd"))
    }

    @Test func testCodec12ResponseDecodes() throws {
        let m = try #require(try DeviceMessageTests.message(DeviceMessageTests.fixture("w-c12-rsp")))
        #expect(m.codec == .codec12)
        #expect(m.type == DeviceMessage.typeResponse)
        #expect(m.text?.hasPrefix("INI:2019/7/22 7:22 RTC:2019/7/22 7:53") == true)
        #expect(m.payload.count == 136)
    }

    @Test func testCodec14ACKCarriesIMEIAndText() throws {
        let m = try #require(try DeviceMessageTests.message(DeviceMessageTests.fixture("w-c14-ack")))
        #expect(m.imei == "352093081452251")
        #expect(m.type == DeviceMessage.typeResponse)
        #expect(m.text?.hasPrefix("Ver:03.18.14_04 GPS:AXN_5.10_3333 Hw:FMB120") == true)
    }

    @Test func testCodec14NotAcknowledgedErratum() throws {
        // The documentation's nACK example prints CRC 0x32AC; the bytes give 0x635E.
        let printed = Hex.decode("00000000000000100E011100000008035209308145246801000032AC")!
        #expect(throws: Codec8Error.crcMismatch(received: 0x32AC, computed: 0x635E)) {
            try DeviceMessageTests.message(printed)
        }
        let corrected = Array(printed.dropLast(2)) + [0x63, 0x5E]
        let m = try #require(try DeviceMessageTests.message(corrected))
        #expect(m.type == DeviceMessage.typeNotAcknowledged)
        #expect(m.imei == "352093081452468")
        #expect(m.payload.isEmpty)
    }

    @Test func testCodec15CarriesTimeIMEIAndData() throws {
        let m = try #require(try DeviceMessageTests.message(DeviceMessageTests.fixture("w-c15")))
        #expect(m.timestampSeconds == 1_699_440_036)
        #expect(m.imei == "123456789123456")
        #expect(m.text == "Hello!\n")
    }

    @Test(arguments: DeviceMessage.Codec.allCases)
    func testMessagesRoundTrip(_ codec: DeviceMessage.Codec) throws {
        var g = SeededGenerator(seed: UInt64(codec.rawValue))
        for _ in 0..<100 {
            let hasTime = codec == .codec13 || codec == .codec15
            let hasIMEI = codec == .codec14 || codec == .codec15
            let original = DeviceMessage(
                codec: codec,
                type: .random(in: .min ... .max, using: &g),
                imei: hasIMEI ? "35209308145\(Int.random(in: 1000...9999, using: &g))" : nil,
                timestampSeconds: hasTime ? .random(in: .min ... .max, using: &g) : nil,
                payload: (0..<Int.random(in: 0...300, using: &g)).map { _ in .random(in: .min ... .max, using: &g) }
            )
            #expect(try DeviceMessageTests.message(original.encoded()) == original)
        }
    }

    @Test func testMessageSizeFieldMustMatchTheFrame() {
        // Codec 12 frame whose inner size says 8 while the data field holds 7 bytes of text.
        var frame = DeviceMessage.codec12Command("getinfo")
        frame[14] = 8
        let crc = CRC16IBM.checksum(frame[8..<(frame.count - 4)])
        frame.replaceSubrange((frame.count - 2)..., with: [UInt8(crc >> 8), UInt8(crc & 0xFF)])
        #expect(throws: Codec8Error.lengthMismatch(declared: 16, actual: 15)) { try DeviceMessageTests.message(frame) }
    }

    @Test func testUnknownCodecWithGoodCRCIsUnsupported() {
        var frame = DeviceMessage.codec12Command("getinfo")
        frame[8] = 0x07
        let crc = CRC16IBM.checksum(frame[8..<(frame.count - 4)])
        frame.replaceSubrange((frame.count - 2)..., with: [UInt8(crc >> 8), UInt8(crc & 0xFF)])
        #expect(throws: Codec8Error.unsupportedCodec(0x07)) { try DeviceMessageTests.message(frame) }
    }
}
