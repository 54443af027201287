import Codec8
import FixtureSupport
import Foundation
import Testing

extension UDPFixture: CustomTestStringConvertible {
    public var testDescription: String { id }
}

/// The UDP channel (PROTOCOL.md §5): the documentation's datagrams decode to their records and ACK,
/// and every malformed datagram is refused with its category, never a crash.
struct UDPDatagramTests {
    static func outcome(of bytes: [UInt8]) -> String {
        do {
            return try UDPDatagramView.withDecoded(bytes) { "avl:\($0.packet.recordCount)" }
        } catch {
            return "error:\(error.category)"
        }
    }

    @Test func testCorpusIsComplete() {
        #expect(Fixtures.udpDatagrams.count == 2)
        #expect(Fixtures.udpDatagrams.filter { $0.expect.hasPrefix("avl:") }.count == Fixtures.udpExpectedRecords.count)
    }

    @Test(arguments: Fixtures.udpDatagrams)
    func testEveryDatagramGivesItsOutcomeAndACK(_ fixture: UDPFixture) throws {
        #expect(Self.outcome(of: fixture.bytes) == fixture.expect)
        let ack = try UDPDatagramView.withDecoded(fixture.bytes) { datagram in
            UDPAck(packetID: datagram.packetID, avlPacketID: datagram.avlPacketID, acceptedRecords: UInt8(datagram.packet.recordCount))
        }
        #expect(ack.bytes == fixture.ack)
        #expect(UDPAck(fixture.ack) == ack)
    }

    @Test(arguments: Fixtures.udpDatagrams)
    func testRecordsEqualExpectedRecords(_ fixture: UDPFixture) throws {
        let expected = try #require(Fixtures.udpExpectedRecords[fixture.id])
        var encoder = RecordJSONEncoder()
        let lines: [[UInt8]] = try UDPDatagramView.withDecoded(fixture.bytes) { datagram in
            datagram.packet.records.map { record in
                var out: [UInt8] = []
                encoder.append(record, deviceID: datagram.imei, to: &out)
                return out
            }
        }
        let actual = try lines.map { try JSONSerialization.jsonObject(with: Data($0)) as! [String: Any] }
        try #require(actual.count == expected.count)
        for (index, (got, want)) in zip(actual, expected).enumerated() {
            #expect(Set(got.keys) == Set(want.keys), "record \(index) keys")
            for key in want.keys {
                #expect(jsonEqual(got[key], want[key]), "record \(index) field \(key): \(String(describing: got[key]))")
            }
        }
    }

    @Test func testHeaderFieldsOfTheCodec8Example() throws {
        let fixture = try #require(Fixtures.udpDatagrams.first { $0.id == "u-c8" })
        let fields = try UDPDatagramView.withDecoded(fixture.bytes) {
            ($0.packetID, $0.notUsable, $0.avlPacketID, $0.imei.description, $0.dataOffset, $0.packet.codec)
        }
        #expect(fields.0 == 0xCAFE)
        #expect(fields.1 == 0x01)
        #expect(fields.2 == 0x05)
        #expect(fields.3 == "352093086403655")
        #expect(fields.4 == 23)
        #expect(fields.5 == .codec8)
    }

    /// Every prefix of a valid datagram, and the empty datagram, is refused; none crashes.
    @Test func testEveryTruncationIsRefused() throws {
        let whole = try #require(Fixtures.udpDatagrams.first).bytes
        for length in 0..<whole.count {
            let outcome = Self.outcome(of: Array(whole.prefix(length)))
            #expect(outcome == "error:truncated", "length \(length): \(outcome)")
        }
    }

    @Test func testMalformedDatagramsAreRefusedWithTheirCategory() throws {
        let whole = try #require(Fixtures.udpDatagrams.first).bytes
        func edited(_ change: (inout [UInt8]) -> Void) -> [UInt8] {
            var b = whole
            change(&b)
            return b
        }
        // A byte more than the length field counts.
        #expect(Self.outcome(of: whole + [0]) == "error:length_mismatch")
        // The length field fixed up around an extra byte: the records no longer fill the array.
        #expect(
            Self.outcome(
                of: edited { b in
                    b.insert(0, at: b.count - 1)
                    b[1] &+= 1
                }
            ) == "error:malformed_record"
        )
        #expect(Self.outcome(of: edited { $0[7] = 14 }) == "error:bad_imei")
        #expect(Self.outcome(of: edited { $0[10] = UInt8(ascii: "x") }) == "error:bad_imei")
        #expect(Self.outcome(of: edited { $0[23] = 0x0C }) == "error:unsupported_codec")
        #expect(Self.outcome(of: edited { $0[24] = 2 }) == "error:record_count_mismatch")
        // Packet ID, not-usable byte and AVL packet ID carry no rule.
        #expect(
            Self.outcome(
                of: edited {
                    $0[2] = 0
                    $0[3] = 0
                    $0[4] = 0
                    $0[5] = 0xFF
                }
            ) == "avl:1"
        )
    }

    @Test func testDataArrayAboveTheLimitIsTooLarge() throws {
        let imei = try #require(IMEI("352093086403655"))
        let datagram = UDPDatagramView.encode(packetID: 1, avlPacketID: 1, imei: imei, avlData: [UInt8](repeating: 0, count: 65_480))
        #expect(datagram.count == 65_503)
        #expect(Self.outcome(of: datagram) == "error:too_large")
        // 65,507 bytes (the largest IPv4 UDP payload), with a true length field, and all 0xFF (it claims 65,537).
        let largest = UDPDatagramView.encode(packetID: 1, avlPacketID: 1, imei: imei, avlData: [UInt8](repeating: 0, count: 65_484))
        #expect(largest.count == UDPDatagramView.maxDatagramBytes)
        #expect(Self.outcome(of: largest) == "error:too_large")
        #expect(Self.outcome(of: [UInt8](repeating: 0xFF, count: UDPDatagramView.maxDatagramBytes)) == "error:truncated")
        #expect(Self.outcome(of: [UInt8](repeating: 0x00, count: UDPDatagramView.maxDatagramBytes)) == "error:length_mismatch")
    }

    @Test func testEncodeWrapsATCPFramesDataFieldAndDecodesToTheSameRecords() throws {
        let frame = Fixtures.frame("w-c8e-1").bytes
        let imei = try #require(IMEI("356307042441013"))
        let dataField = frame[8..<(frame.count - 4)]
        let datagram = UDPDatagramView.encode(packetID: 0xBEEF, avlPacketID: 200, imei: imei, avlData: dataField)
        #expect(UDPDatagramView.withDecodedRaw(datagram) == true)
        let decoded = try UDPDatagramView.withDecoded(datagram) { d in
            (d.packetID, d.avlPacketID, d.imei, d.packet.records.map { $0.materialize() })
        }
        let tcpRecords = try StandaloneFrame.withDecoded(frame) { f -> [AVLRecord] in
            guard case .frame(.avl(let packet)) = f else { return [] }
            return packet.records.map { $0.materialize() }
        }
        #expect(decoded.0 == 0xBEEF)
        #expect(decoded.1 == 200)
        #expect(decoded.2 == imei)
        #expect(decoded.3 == tcpRecords)
        #expect(!tcpRecords.isEmpty)
    }

    @Test func testDetectionTellsDatagramsFromFramesAndLogins() throws {
        for fixture in Fixtures.udpDatagrams {
            #expect(fixture.bytes.withUnsafeBytes(UDPDatagramView.looksLikeDatagram))
        }
        for fixture in Fixtures.frames {
            #expect(!fixture.bytes.withUnsafeBytes(UDPDatagramView.looksLikeDatagram), "\(fixture.id)")
        }
    }

    @Test func testACKParsing() {
        #expect(UDPAck([0x00, 0x05, 0xCA, 0xFE, 0x01, 0x05, 0x01]) == UDPAck(packetID: 0xCAFE, avlPacketID: 5, acceptedRecords: 1))
        #expect(UDPAck([0x00, 0x05, 0xCA, 0xFE, 0x01, 0x05]) == nil)
        #expect(UDPAck([0x00, 0x04, 0xCA, 0xFE, 0x01, 0x05, 0x01]) == nil)
    }
}

extension UDPDatagramView {
    /// Whether `bytes` decode (for tests).
    static func withDecodedRaw(_ bytes: [UInt8]) -> Bool { (try? withDecoded(bytes) { _ in true }) ?? false }
}
