import Codec8
import FixtureSupport
import Testing

/// XXH64 and `record_id` against values computed outside this code base.
///
/// XXH64 vectors: the reference implementation, `xxhsum -H1` (xxhsum 0.8.1, Debian package `xxhash`), on
/// bytes `i % 251` for i in 0..<n:
/// `python3 -c 'import sys; sys.stdout.buffer.write(bytes(i % 251 for i in range(N)))' | xxhsum -H1 -`.
/// record_id vectors: the same tool on IMEI digits + codec byte + the record's bytes cut by hand from a
/// one-record frame (`frame[10 : 8 + L - 1]`, L the data field length), e.g. for w-c8-1:
/// `python3 -c 'import sys; f = bytes.fromhex(HEX); sys.stdout.buffer.write(b"356307042441013" + f[8:9] + f[10:8 + int.from_bytes(f[4:8], "big") - 1])' | xxhsum -H1 -`,
/// and for every record of the multi-record frames with `scripts/record-id.py IMEI HEX` (a standalone Python
/// XXH64 and record walk, itself checked against xxhsum on random inputs of 0 to 1,000 bytes).
struct RecordIDTests {
    static func pattern(_ n: Int) -> [UInt8] { (0..<n).map { UInt8($0 % 251) } }

    @Test(
        arguments: [
            (0, 0xef46_db37_51d8_e999), (1, 0xe934_a84a_db05_2768), (3, 0xe5c7_bb45_33bc_65dd), (4, 0xffce_d860_4453_cc1e),
            (7, 0x14cc_643f_630c_72d2), (8, 0x884a_1736_14b8_1b8d), (15, 0xa948_f5f0_f6ab_ac2d), (16, 0x44b6_ef2f_b841_69f7),
            (31, 0xc346_d2b5_9b4d_8ee1), (32, 0xcbf5_9c51_16ff_32b4), (33, 0x0c53_5d1a_cafb_8ead), (63, 0xe26a_a9e2_a95f_8e4f),
            (64, 0xf7c6_7301_db67_13f0), (100, 0x6ac1_e580_3216_6597), (1000, 0xf306_f04a_a88b_54d3),
        ] as [(Int, UInt64)]
    )
    func testXXH64MatchesTheReferenceImplementation(_ length: Int, _ expected: UInt64) {
        #expect(XXH64.hash(Self.pattern(length)) == expected)
    }

    /// Fed in two pieces split anywhere, or a byte at a time, the hash is the one-shot hash.
    @Test func testXXH64FedInPiecesEqualsOneShot() {
        for length in [0, 1, 31, 32, 33, 64, 65, 100] {
            let bytes = Self.pattern(length)
            let whole = XXH64.hash(bytes)
            for split in 0...length {
                var hasher = XXH64()
                bytes.withUnsafeBytes { raw in
                    hasher.update(UnsafeRawBufferPointer(rebasing: raw[0..<split]))
                    hasher.update(UnsafeRawBufferPointer(rebasing: raw[split...]))
                }
                #expect(hasher.finalize() == whole, "length \(length) split \(split)")
            }
            var bytewise = XXH64()
            for byte in bytes { bytewise.update(byte: byte) }
            #expect(bytewise.finalize() == whole, "length \(length) byte by byte")
        }
    }

    static func recordIDs(_ id: String, imei: String = "356307042441013") throws -> [String] {
        try FixtureCorpus.frame(id).recordIDs(imei: imei)
    }

    @Test func testRecordIDVectors() throws {
        // Codec 8, one record (xxhsum on the bytes cut by hand), and with a 16-digit IMEI.
        #expect(try Self.recordIDs("w-c8-1") == ["d8961f926a0bf0cb"])
        #expect(try Self.recordIDs("w-c8-1", imei: "3563070424410131") == ["a92447655728f4d2"])
        // Codec 8 Extended with NX elements, one record of 111 bytes (xxhsum).
        #expect(try Self.recordIDs("t002") == ["c5f326dcb2302306"])
        // Codec 16, two records; Codec 8, 14 records (scripts/record-id.py).
        #expect(try Self.recordIDs("w-c16-1") == ["5ed47f18a86ebb6a", "024400a09fe276c3"])
        let fourteen = try Self.recordIDs("t025")
        #expect(fourteen.count == 14)
        #expect(fourteen.first == "81e0aa588faf39c2")
        #expect(fourteen.last == "e5ccb32b7a0b7e98")
    }

    /// Every record of every fixture gets an id of its own (no two records of the corpus share one), always
    /// 16 hex digits.
    @Test func testRecordIDsAreDistinctAndFixedWidth() throws {
        var seen: Set<String> = []
        var count = 0
        for fixture in FixtureCorpus.avl {
            for id in try Self.recordIDs(fixture.id) {
                #expect(id.utf8.count == 16 && id.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }, "\(id)")
                seen.insert(id)
                count += 1
            }
        }
        #expect(count == 55)
        #expect(seen.count == 55)
    }

    @Test func testHexIsZeroPadded() {
        var out: [UInt8] = []
        XXH64.appendHex(0x00ab_0000_0000_0001, to: &out)
        XXH64.appendHex(0, to: &out)
        #expect(String(decoding: out, as: UTF8.self) == "00ab000000000001" + "0000000000000000")
    }
}
