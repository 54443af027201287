import Codec8
import FixtureSupport
import Foundation
import Testing

/// Every single-byte mutation and every truncation of every fixture gives an error or a valid decode:
/// never a crash, never a hang.
struct RobustnessTests {
    /// Decodes and, when valid, walks everything a consumer would touch.
    static func exercise(_ bytes: [UInt8], encoder: inout RecordJSONEncoder, out: inout [UInt8]) -> Codec8Error? {
        do {
            try StandaloneFrame.withDecoded(bytes) { frame in
                guard case .frame(.avl(let packet)) = frame else { return }
                var seen = 0
                for record in packet.records {
                    encoder.append(record, deviceID: nil, to: &out)
                    _ = record.materialize()
                    seen += 1
                }
                precondition(seen == packet.recordCount)
            }
            return nil
        } catch {
            return error
        }
    }

    @Test(arguments: Fixtures.frames)
    func testEverySingleByteMutationIsHandled(_ fixture: FixtureFrame) {
        var encoder = RecordJSONEncoder()
        var out: [UInt8] = []
        var errors = 0
        var mutated = fixture.bytes
        for i in mutated.indices {
            let original = mutated[i]
            for v in 0...255 where UInt8(v) != original {
                mutated[i] = UInt8(v)
                if RobustnessTests.exercise(mutated, encoder: &encoder, out: &out) != nil { errors += 1 }
                out.removeAll(keepingCapacity: true)
            }
            mutated[i] = original
        }
        // The CRC catches nearly every mutation of a packet; the test mostly proves nothing crashed.
        #expect(errors > 0)
    }

    @Test(arguments: Fixtures.frames)
    func testEveryTruncationIsHandled(_ fixture: FixtureFrame) {
        var encoder = RecordJSONEncoder()
        var out: [UInt8] = []
        for n in 0..<fixture.bytes.count {
            let error = RobustnessTests.exercise(Array(fixture.bytes[..<n]), encoder: &encoder, out: &out)
            if !fixture.expect.hasPrefix("error") && fixture.expect != "ping" {
                // A strict prefix of a valid frame is always "truncated", never a valid decode.
                #expect(error?.category == "truncated", "\(fixture.id) cut to \(n) bytes: \(String(describing: error))")
            }
        }
    }

    @Test func testAbsurdButWellFormedValuesAreData() throws {
        let record = AVLRecord(timestampMs: .max, priority: 200, satellites: 0, speedKmh: .max)
        let frame = try AVLPacketEncoder.encode([record], codec: .codec8)
        let objects = try payloadObjects(frame)
        #expect(objects.count == 1)
        #expect(objects[0]["timestamp"] is NSNull)
        #expect((objects[0]["timestamp_ms"] as? NSNumber)?.uint64Value == .max)
        #expect((objects[0]["priority"] as? NSNumber)?.intValue == 200)
    }
}
