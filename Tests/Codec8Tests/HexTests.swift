import Codec8
import FixtureSupport
import Testing

/// `Hex.decode` into a caller's buffer (the table decoder `decode` and `replay` read captures with),
/// against `HexReference`, written from the definition.
struct HexTests {
    static func decodeIntoBuffer(_ text: [UInt8]) -> [UInt8]? {
        var out = [UInt8](repeating: 0xEE, count: text.count / 2)
        let count = text.withUnsafeBytes { raw in out.withUnsafeMutableBytes { Hex.decode(raw, into: $0) } }
        return count.map { Array(out[..<$0]) }
    }

    @Test func testEveryByteBesideADigit() {
        for byte in UInt8.min...UInt8.max {
            for text in [[byte, UInt8(ascii: "7")], [UInt8(ascii: "7"), byte], [UInt8(ascii: "a"), byte, UInt8(ascii: "F")]] {
                #expect(Self.decodeIntoBuffer(text) == HexReference.decode(text), "\(text)")
                #expect(Hex.decode(String(decoding: text, as: UTF8.self)) == HexReference.decode(text), "\(text)")
            }
        }
    }

    @Test(
        arguments: [
            ("000F3335", [0x00, 0x0F, 0x33, 0x35] as [UInt8]?),
            ("00 0f\t33\r\n35\n", [0x00, 0x0F, 0x33, 0x35]),
            ("aBcDeF", [0xAB, 0xCD, 0xEF]),
            ("0 0", [0x00]),
            ("", []),
            (" \t\r\n", []),
            ("000", nil),
            ("0", nil),
            ("0g", nil),
            ("00#", nil),
            ("00\u{0B}", nil),
            ("00\u{0C}", nil),
            ("00\u{00A0}", nil),
            ("\u{00E9}00", nil),
        ] as [(String, [UInt8]?)]
    )
    func testDecodes(_ text: String, _ expected: [UInt8]?) {
        #expect(Self.decodeIntoBuffer(Array(text.utf8)) == expected)
        #expect(Hex.decode(text) == expected)
    }

    @Test func testRandomTextAgainstTheReference() {
        var g = SeededGenerator(seed: 19)
        let alphabet = Array("0123456789abcdefABCDEF \t\r\n#gG\u{0}".utf8) + [0x80, 0xC3, 0xFF]
        for _ in 0..<20_000 {
            let text = (0..<Int.random(in: 0...24, using: &g)).map { _ in alphabet.randomElement(using: &g)! }
            #expect(Self.decodeIntoBuffer(text) == HexReference.decode(text), "\(text)")
        }
    }

    @Test func testLongInputRoundTrips() {
        var g = SeededGenerator(seed: 7)
        let bytes = (0..<1_000_000).map { _ in UInt8.random(in: .min ... .max, using: &g) }
        let text = Hex.encode(bytes)
        #expect(Self.decodeIntoBuffer(Array(text.utf8)) == bytes)
        #expect(Self.decodeIntoBuffer(Array(text.uppercased().utf8)) == bytes)
    }
}
