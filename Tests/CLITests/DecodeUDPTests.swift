import Codec8
import FixtureSupport
import Foundation
import Lifecycle
import Testing

/// `decode` of UDP datagrams, through the real binary: detected per line, or every line with `--udp`.
@Suite(.serialized, .blocking)
struct DecodeUDPTests {
    static let rows = FixtureCorpus.udpDatagrams

    /// Every datagram of udp-datagrams.tsv gives its header, its records (udp-expected-records.jsonl,
    /// device_id the datagram's IMEI even against --imei) and the ACK the fixture names.
    @Test(arguments: [[], ["--udp"], ["--udp", "--imei", "352093081452251"]])
    func testEveryDatagramGivesItsRecordsAndACK(_ flags: [String]) throws {
        try #require(!Self.rows.isEmpty)
        let path = try CLIFixtures.writeTemporary(Self.rows.map { Hex.encode($0.bytes) })
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try Binary.run(["decode"] + flags + [path])
        #expect(result.status == ExitStatus.success.rawValue, "\(result.stderr)")
        let objects = try CLIFixtures.objects(result.stdout)
        try #require(objects.count == Self.rows.count, "\(result.stdout)")
        for (object, row) in zip(objects, Self.rows) {
            #expect(object["kind"] as? String == "udp", "\(row.id): \(object)")
            #expect(object["packet_id"] as? Int == Int(row.bytes[2]) << 8 | Int(row.bytes[3]), "\(row.id)")
            #expect(object["avl_packet_id"] as? Int == Int(row.bytes[5]), "\(row.id)")
            #expect(object["imei"] as? String == String(decoding: row.bytes[8..<23], as: UTF8.self), "\(row.id)")
            #expect(object["ack"] as? String == Hex.encode(row.ack), "\(row.id)")
            let expected = try #require(FixtureCorpus.udpExpectedRecords[row.id], "\(row.id) has expected records")
            #expect(jsonEqual(object["records"], expected), "\(row.id): \(object["records"] ?? "none")")
            #expect("avl:\((object["records"] as? [Any])?.count ?? -1)" == row.expect, "\(row.id)")
        }
    }

    /// Datagrams the codec refuses, each with the category (and evidence) it must be reported with. With
    /// `--udp` the line is read as a datagram whatever it looks like (read as TCP, the IMEI-length case
    /// is a login of length 61 and the TCP frame decodes); the NoD2 case also looks like one without it.
    @Test(
        arguments: [
            ("u-c8", "nod2", ["--udp"], "record_count_mismatch", "Number of Data 2 is 2"),
            ("u-c8", "nod2", [], "record_count_mismatch", "Number of Data 2 is 2"),
            ("u-c8e", "short", ["--udp"], "truncated", "needs 97 bytes, 96 present"),
            ("u-c8", "imei14", ["--udp"], "bad_imei", "length 14"),
            ("u-c8", "tcp", ["--udp"], "length_mismatch", "length mismatch"),
        ] as [(String, String, [String], String, String)]
    )
    func testMalformedDatagramIsAnErrorLineWithItsCategory(
        _ id: String,
        _ damage: String,
        _ flags: [String],
        _ category: String,
        _ evidence: String
    ) throws {
        let row = try #require(Self.rows.first { $0.id == id })
        var bytes = row.bytes
        switch damage {
        case "nod2": bytes[bytes.count - 1] = 2  // Number of Data 2 no longer matches Number of Data 1
        case "short": bytes.removeLast()  // the length field counts one byte more than there is
        case "imei14": bytes[7] = 14
        default: bytes = try #require(CLIFixtures.rows.first { $0.expect.hasPrefix("avl:") }).bytes  // a TCP frame
        }
        let result = try Binary.run(["decode"] + flags, stdin: Hex.encode(bytes))
        #expect(result.status == ExitStatus.failure.rawValue, "\(result)")
        let object = try #require(try CLIFixtures.objects(result.stdout).first, "\(result)")
        #expect(object["kind"] as? String == "error", "\(object)")
        #expect(object["error"] as? String == category, "\(object)")
        #expect((object["message"] as? String)?.contains(evidence) == true, "\(object)")
    }

    @Test func testHelpNamesTheUDPFlagAndOutput() throws {
        let result = try Binary.run(["decode", "--help"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("--udp"))
        #expect(result.stdout.contains("\"kind\":\"udp\""))
    }
}
