import Codec8
import FixtureSupport
import Foundation
import Testing

/// Every row of the shared fixture corpus gives the outcome it states, and every AVL row's records
/// equal `expected-records.jsonl` field by field.
struct FixtureTests {
    /// The outcome as frames.tsv spells it: `avl:N`, `message:C`, `imei`, `ping`, `error:KIND`.
    static func outcome(of bytes: [UInt8]) -> String {
        do {
            return try StandaloneFrame.withDecoded(bytes) { frame -> String in
                switch frame {
                case .keepAlive: "ping"
                case .login: "imei"
                case .frame(.avl(let packet)): "avl:\(packet.recordCount)"
                case .frame(.message(let message)): "message:\(message.codec.name)"
                }
            }
        } catch {
            return "error:\(error.category)"
        }
    }

    @Test func testCorpusIsComplete() {
        #expect(Fixtures.frames.count == 44)
        #expect(Fixtures.avl.count == Fixtures.expectedRecords.count)
    }

    @Test(arguments: Fixtures.frames)
    func testEveryFixtureGivesItsExpectedOutcome(_ fixture: FixtureFrame) {
        #expect(FixtureTests.outcome(of: fixture.bytes) == fixture.expect)
    }

    @Test(arguments: Fixtures.avl)
    func testRecordsEqualExpectedRecords(_ fixture: FixtureFrame) throws {
        let expected = try #require(Fixtures.expectedRecords[fixture.id])
        let actual = try payloadObjects(fixture.bytes)
        try #require(actual.count == expected.count)
        for (index, (got, want)) in zip(actual, expected).enumerated() {
            // device_id is absent from the expectations (a bare frame has no IMEI) and null here.
            #expect(got["device_id"] is NSNull, "record \(index)")
            var rest = got
            rest["device_id"] = nil
            #expect(Set(rest.keys) == Set(want.keys), "record \(index) keys")
            for key in want.keys {
                #expect(
                    jsonEqual(rest[key], want[key]),
                    "record \(index) field \(key): \(String(describing: rest[key])) != \(String(describing: want[key]))"
                )
            }
        }
    }

    @Test(arguments: Fixtures.avl)
    func testDeviceIDIsWrittenWhenKnown(_ fixture: FixtureFrame) throws {
        let imei = try #require(IMEI("356307042441013"))
        for record in try payloadObjects(fixture.bytes, deviceID: imei) {
            #expect(record["device_id"] as? String == "356307042441013")
        }
    }

    @Test(arguments: Fixtures.avl)
    func testACKCountMatchesRecordsIterated(_ fixture: FixtureFrame) throws {
        let counts = try StandaloneFrame.withDecoded(fixture.bytes) { frame -> (Int, Int) in
            guard case .frame(.avl(let packet)) = frame else { return (-1, -2) }
            return (packet.recordCount, packet.records.reduce(0) { n, _ in n + 1 })
        }
        #expect(counts.0 == counts.1)
        #expect("avl:\(counts.0)" == fixture.expect)
    }
}
