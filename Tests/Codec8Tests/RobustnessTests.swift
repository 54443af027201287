import Codec8
import FixtureSupport
import Foundation
import Testing

/// Every single-byte mutation and every truncation of every fixture gives an error or a valid decode:
/// never a crash, never a hang. Mutations of the data field are also run with the CRC recomputed, so
/// they reach the record parser instead of stopping at the CRC check.
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
        var mutations = 0
        var mutated = fixture.bytes
        for i in mutated.indices {
            let original = mutated[i]
            for v in 0...255 where UInt8(v) != original {
                mutated[i] = UInt8(v)
                mutations += 1
                if RobustnessTests.exercise(mutated, encoder: &encoder, out: &out) != nil { errors += 1 }
                out.removeAll(keepingCapacity: true)
            }
            mutated[i] = original
        }
        if FrameSurgery.isSealedPacket(fixture.bytes) && !fixture.expect.hasPrefix("error") {
            // Envelope bytes are checked directly, and CRC-16 detects every error burst of up to 16 bits,
            // so no single-byte change of a valid packet frame may decode. Mutations past the CRC check
            // are the next test's business.
            #expect(errors == mutations)
        } else {
            #expect(errors > 0)
        }
    }

    /// The errors a frame with a valid envelope (preamble, length, CRC) can still give: its body's.
    static let bodyCategories: Set<String> = ["record_count_mismatch", "malformed_record", "unsupported_codec", "length_mismatch"]

    /// The reason's name as the tests count it.
    static func reasonName(_ reason: Codec8Error.MalformedReason) -> String {
        switch reason {
        case .overrun: "overrun"
        case .trailingBytes: "trailing_bytes"
        case .ioCountMismatch: "io_count_mismatch"
        case .payloadTooShort: "payload_too_short"
        }
    }

    /// The values tried at one data-field byte: every single-bit flip, the extremes, one up and one down,
    /// every codec ID, and four seeded random values; about 20 of the 255. All 255 values at every byte
    /// of every frame (1.45 million decodes) took 57 s in a debug build; this sample (113,383 decodes)
    /// takes under 5 s and still reaches every category and reason the full run reached.
    static func sampledValues(replacing original: UInt8, using g: inout SeededGenerator) -> [UInt8] {
        var values: Set<UInt8> = [0x00, 0xFF, original &+ 1, original &- 1]
        for bit in 0..<8 { values.insert(original ^ (1 << bit)) }
        values.formUnion(AVLCodec.allCases.map(\.rawValue) + DeviceMessage.Codec.allCases.map(\.rawValue))
        for _ in 0..<4 { values.insert(.random(in: .min ... .max, using: &g)) }
        values.remove(original)
        return values.sorted()
    }

    /// Sampled values (``sampledValues(replacing:using:)``) of every data-field byte (codec ID through
    /// Number of Data 2) of every complete packet frame in the corpus, with the CRC recomputed after each
    /// change so the decoder gets past the CRC. The length field stays consistent (the data field keeps
    /// its size). Each result must be a valid decode or a body error, and across the run every inner
    /// check must have fired.
    @Test func testDataFieldMutationsWithAValidCRCReachEveryInnerCheck() {
        var encoder = RecordJSONEncoder()
        var out: [UInt8] = []
        var outcomes: [String: Int] = [:]
        var reasons: [String: Int] = [:]
        var unexpected: [String] = []
        var mutations = 0
        var g = SeededGenerator(seed: 0xA001)
        let packets = Fixtures.frames.filter { FrameSurgery.isSealedPacket($0.bytes) }
        for fixture in packets {
            var frame = fixture.bytes
            for i in 8..<(frame.count - 4) {
                let original = frame[i]
                for v in RobustnessTests.sampledValues(replacing: original, using: &g) {
                    frame[i] = v
                    FrameSurgery.recomputeCRC(&frame)
                    mutations += 1
                    let error = RobustnessTests.exercise(frame, encoder: &encoder, out: &out)
                    out.removeAll(keepingCapacity: true)
                    outcomes[error?.category ?? "valid", default: 0] += 1
                    if case .malformedRecord(_, _, let reason) = error { reasons[RobustnessTests.reasonName(reason), default: 0] += 1 }
                    if let error, !RobustnessTests.bodyCategories.contains(error.category), unexpected.count < 5 {
                        unexpected.append("\(fixture.id) byte \(i) = \(v): \(error)")
                    }
                }
                frame[i] = original
            }
        }
        let line = (["valid"] + Codec8Error.allCategories).compactMap { name in outcomes[name].map { "\(name)=\($0)" } }
        let reasonLine = ["overrun", "trailing_bytes", "io_count_mismatch", "payload_too_short"].map { "\($0)=\(reasons[$0, default: 0])" }
        print(
            "data-field mutations with a valid CRC: \(mutations) over \(packets.count) frames: "
                + line.joined(separator: " ") + " (malformed_record: " + reasonLine.joined(separator: " ") + ")"
        )
        #expect(unexpected.isEmpty, "errors a valid envelope cannot give: \(unexpected)")
        #expect(outcomes["crc_mismatch", default: 0] == 0)
        #expect(outcomes["valid", default: 0] > 0)
        #expect(outcomes["record_count_mismatch", default: 0] > 0)
        #expect(outcomes["malformed_record", default: 0] > 0)
        for reason in ["overrun", "trailing_bytes", "io_count_mismatch", "payload_too_short"] {
            #expect(reasons[reason, default: 0] > 0, "malformed_record reason \(reason) never reached")
        }
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
