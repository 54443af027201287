import Codec8
import FixtureSupport
import RedisWire
import Testing

@testable import Ingest

/// The `XADD` commands the encoder writes, read back argument by argument.
struct StreamEntryEncoderTests {
    static let imei = IMEI("356307042441013")!

    /// Splits pipelined RESP commands (`*N` then N bulk strings each) into their arguments.
    static func commands(_ bytes: [UInt8]) -> [[String]] {
        var out: [[String]] = []
        var i = 0
        func line() -> String {
            var end = i
            while bytes[end] != 0x0D { end += 1 }
            defer { i = end + 2 }
            return String(decoding: bytes[i..<end], as: UTF8.self)
        }
        while i < bytes.count {
            let header = line()
            precondition(header.hasPrefix("*"))
            var arguments: [String] = []
            for _ in 0..<Int(header.dropFirst())! {
                let length = Int(line().dropFirst())!
                arguments.append(String(decoding: bytes[i..<(i + length)], as: UTF8.self))
                i += length + 2
            }
            out.append(arguments)
        }
        return out
    }

    static func encode(
        _ fixture: String,
        udp: Bool = false,
        encoder: inout StreamEntryEncoder
    ) throws -> [[String]] {
        var buffer = RESPBuffer()
        try StandaloneFrame.withDecoded(FixtureCorpus.frame(fixture).bytes) { decoded in
            guard case .frame(.avl(let packet)) = decoded else { return }
            buffer = encoder.records(of: packet, imei: imei, udp: udp)
        }
        return commands(buffer.array)
    }

    static func plainEncoder() -> StreamEntryEncoder {
        StreamEntryEncoder(telemetryStream: "t", responsesStream: "r", maxLength: 1000, responsesMaxLength: 10)
    }

    /// `record_id` follows `payload` (TCP) and comes before `transport udp` (UDP): 16 hex digits, the value
    /// pinned in `RecordIDTests` against xxhsum.
    @Test func testEveryRecordEntryCarriesItsRecordID() throws {
        var encoder = Self.plainEncoder()
        let tcp = try Self.encode("w-c8-1", encoder: &encoder)
        #expect(tcp.count == 1)
        #expect(Array(tcp[0][0..<6]) == ["XADD", "t", "MAXLEN", "~", "1000", "*"])
        #expect(
            tcp[0].enumerated().filter { $0.offset >= 6 && $0.offset % 2 == 0 }.map(\.element) == [
                "ts", "device_id", "codec", "payload", "record_id",
            ]
        )
        #expect(tcp[0].last == "d8961f926a0bf0cb")
        let udp = try Self.encode("w-c8-1", udp: true, encoder: &encoder)
        #expect(Array(udp[0].suffix(4)) == ["record_id", "d8961f926a0bf0cb", "transport", "udp"])
        let two = try Self.encode("w-c16-1", encoder: &encoder)
        #expect(two.map { $0[15] } == ["5ed47f18a86ebb6a", "024400a09fe276c3"])
    }

    /// Four shards: the device's records and messages go to its key (356307042441013: shard 3, pinned in
    /// `StreamShardsTests`), each key capped at a quarter of the cap, rounded up.
    @Test func testShardedEntriesGoToTheDevicesKey() throws {
        var encoder = StreamEntryEncoder(telemetryStream: "t", responsesStream: "r", maxLength: 1000, responsesMaxLength: 10, shards: 4)
        #expect(Array(try Self.encode("w-c8-1", encoder: &encoder)[0][0..<6]) == ["XADD", "t:{3}", "MAXLEN", "~", "250", "*"])
        #expect(Array(try Self.encode("w-c8-1", udp: true, encoder: &encoder)[0][0..<6]) == ["XADD", "t:{3}", "MAXLEN", "~", "250", "*"])
        var writer = RESPWriter()
        let message = DeviceMessage(codec: .codec12, type: 6, payload: Array("OK".utf8))
        encoder.appendMessage(message, imei: Self.imei, receivedMs: 0, to: &writer)
        encoder.appendMessage(message, imei: IMEI("350000000000000")!, receivedMs: 0, to: &writer)
        #expect(
            Self.commands(writer.bytes).map { Array($0[0..<6]) } == [
                ["XADD", "r:{3}", "MAXLEN", "~", "3", "*"], ["XADD", "r:{0}", "MAXLEN", "~", "3", "*"],
            ]
        )
    }

    /// Every record of every AVL fixture, over TCP and UDP: the whole entry, argument by argument, from the
    /// parts it is made of (the record's JSON, its time, its id), one command per record and nothing more.
    @Test(arguments: FixtureCorpus.avl)
    func testEveryFixtureRecordsEntryIsExact(_ fixture: FixtureFrame) throws {
        for udp in [false, true] {
            var encoder = Self.plainEncoder()
            var buffer = RESPBuffer()
            var expected: [[String]] = []
            try StandaloneFrame.withDecoded(fixture.bytes) { decoded in
                guard case .frame(.avl(let packet)) = decoded else { return }
                buffer = encoder.records(of: packet, imei: Self.imei, udp: udp)
                var json = RecordJSONEncoder()
                for record in packet.records {
                    var payload: [UInt8] = []
                    json.append(record, deviceID: Self.imei, to: &payload)
                    var time: [UInt8] = []
                    JSONText.appendISO8601(milliseconds: record.timestampMs, to: &time)
                    var id: [UInt8] = []
                    XXH64.appendHex(record.recordID(imei: Self.imei), to: &id)
                    let ts = time.first == UInt8(ascii: "\"") ? String(decoding: time.dropFirst().dropLast(), as: UTF8.self) : ""
                    expected.append(
                        ["XADD", "t", "MAXLEN", "~", "1000", "*", "ts", ts, "device_id", "356307042441013", "codec", packet.codec.name]
                            + ["payload", String(decoding: payload, as: UTF8.self), "record_id", String(decoding: id, as: UTF8.self)]
                            + (udp ? ["transport", "udp"] : [])
                    )
                }
            }
            #expect(!expected.isEmpty)
            #expect(buffer.commandCount == expected.count)
            #expect(Self.commands(buffer.array) == expected)
        }
    }

    /// One encoder for every AVL fixture in turn, forwards and backwards (its reservation per record follows the
    /// packets: too small after small records, too large after big ones): every packet's commands are byte for
    /// byte those of a fresh encoder, and no buffer keeps more than a quarter of its size spare.
    @Test func testOneEncoderForEveryPacketWritesWhatAFreshOneWrites() throws {
        var packets: [[UInt8]] = []
        for fixture in FixtureCorpus.avl {
            try StandaloneFrame.withDecoded(fixture.bytes) { decoded in
                guard case .frame(.avl) = decoded else { return }
                packets.append(fixture.bytes)
            }
        }
        #expect(packets.count > 10)
        var shared = Self.plainEncoder()
        for bytes in packets + packets.reversed() {
            try StandaloneFrame.withDecoded(bytes) { decoded in
                guard case .frame(.avl(let packet)) = decoded else { return }
                var fresh = Self.plainEncoder()
                let expected = fresh.records(of: packet, imei: Self.imei)
                let buffer = shared.records(of: packet, imei: Self.imei)
                #expect(buffer.array == expected.array)
                #expect(buffer.commandCount == packet.recordCount)
                #expect(buffer.capacity - buffer.count <= buffer.count / 4)
            }
        }
    }
}
