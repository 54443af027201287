import Codec8
import FixtureSupport
import Foundation
import IngestTools
import Testing

/// `HexLineReader`: lines cut on `\n` bytes from chunks of any size, the hex before `#` decoded; and
/// `FrameDecodeReport` giving the same JSON from its lines as from the `String` reading it replaced.
struct HexLineReaderTests {
    /// What the reader gave for one line, copied out of its buffers.
    struct Line: Equatable, CustomStringConvertible {
        var number: Int
        var bytes: [UInt8]
        var commentOffset: Int?
        var content: String  // "blank", "notHex" or the decoded bytes as hex

        var description: String { "\(number): \(String(decoding: bytes, as: UTF8.self).debugDescription) \(content)" }
    }

    /// Reads `input` handing over at most `pieces[i % count]` bytes per read, into a buffer of `chunk`.
    static func read(_ input: [UInt8], chunk: Int, pieces: [Int] = [Int.max]) -> [Line] {
        var offset = 0
        var reads = 0
        var reader = HexLineReader(chunkBytes: chunk) { buffer in
            let n = min(buffer.count, input.count - offset, pieces[reads % pieces.count])
            reads += 1
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: input.withUnsafeBytes { $0 }[offset..<offset + n]))
            offset += n
            return n
        }
        var lines: [Line] = []
        reader.forEachLine { line in
            let content =
                switch line.content {
                case .blank: "blank"
                case .notHex: "notHex"
                case .bytes(let b): Hex.encode(b)
                }
            lines.append(Line(number: line.number, bytes: Array(line.bytes), commentOffset: line.commentOffset, content: content))
        }
        return lines
    }

    /// The expected lines, from the definition: cut after each `\n`, a last line without one kept.
    static func expected(_ input: [UInt8]) -> [Line] {
        var lines: [[UInt8]] = []
        var current: [UInt8] = []
        for byte in input {
            current.append(byte)
            if byte == 0x0A {
                lines.append(current)
                current = []
            }
        }
        if !current.isEmpty { lines.append(current) }
        return lines.enumerated().map { i, bytes in
            let hash = bytes.firstIndex(of: UInt8(ascii: "#"))
            let decoded = HexReference.decode(Array(bytes[..<(hash ?? bytes.count)]))
            let content = decoded.map { $0.isEmpty ? "blank" : Hex.encode($0) } ?? "notHex"
            return Line(number: i + 1, bytes: bytes, commentOffset: hash, content: content)
        }
    }

    static let small = Array(
        (FixtureCorpus.frame("w-c8-1").hex + "\r\n\n# comment\r\n000F3335 # login?\n  \t\nabc\n0g\n"
            + FixtureCorpus.frame("w-c8e-1").hex.uppercased() + "\r\nFF").utf8
    )

    @Test func testChunkAndReadBoundariesAtEveryOffset() {
        let expected = Self.expected(Self.small)
        #expect(expected.count == 9)
        for chunk in 1...Self.small.count + 1 {
            #expect(Self.read(Self.small, chunk: chunk) == expected, "chunk \(chunk)")
        }
        for piece in 1...Self.small.count + 1 {
            #expect(Self.read(Self.small, chunk: 64, pieces: [piece]) == expected, "reads of \(piece)")
            #expect(Self.read(Self.small, chunk: 5, pieces: [piece, 1, 3]) == expected, "reads of \(piece), 1, 3")
        }
    }

    @Test(arguments: [
        ("", 0), ("\n", 1), ("\n\n", 2), ("00", 1), ("00\n", 1), ("00\r\n", 1), ("\r", 1), ("a\rb\n", 1), ("#\n#", 2),
    ])
    func testEdges(_ text: String, _ count: Int) {
        let input = Array(text.utf8)
        let lines = Self.read(input, chunk: 3, pieces: [1, 2])
        #expect(lines.count == count)
        #expect(lines == Self.expected(input))
        #expect(lines.flatMap(\.bytes) == input, "every byte in exactly one line")
    }

    @Test func testLinesLongerThanTheBuffer() {
        var g = SeededGenerator(seed: 3)
        let frame = (0..<400_000).map { _ in UInt8.random(in: .min ... .max, using: &g) }
        let input = Array((Hex.encode(frame) + " # a comment\n" + String(repeating: " ", count: 700_000) + "\n00").utf8)
        for (chunk, pieces) in [(HexLineReader.defaultChunkBytes, [Int.max]), (7, [4096, 1, 65_536])] {
            let lines = Self.read(input, chunk: chunk, pieces: pieces)
            #expect(lines.map(\.content) == [Hex.encode(frame), "blank", "00"])
            #expect(lines == Self.expected(input))
        }
    }

    @Test func testRandomInputsAgainstTheDefinition() {
        var g = SeededGenerator(seed: 23)
        let alphabet = Array("0123456789abcdefABCDEF    #\r\n\n\n\tg".utf8) + [0x00, 0xC3, 0xA9, 0xFF]
        for _ in 0..<300 {
            let input = (0..<Int.random(in: 0...200, using: &g)).map { _ in alphabet.randomElement(using: &g)! }
            let chunk = Int.random(in: 1...40, using: &g)
            let pieces = (0..<3).map { _ in Int.random(in: 1...50, using: &g) }
            #expect(Self.read(input, chunk: chunk, pieces: pieces) == Self.expected(input), "\(input)")
        }
    }

    @Test func testSourceErrorEndsTheInput() {
        var calls = 0
        var reader = HexLineReader(chunkBytes: 16) { buffer in
            calls += 1
            guard calls == 1 else { return -1 }
            Array("00\n11".utf8).withUnsafeBytes { buffer.copyMemory(from: $0) }
            return 5
        }
        var numbers: [Int] = []
        reader.forEachLine { numbers.append($0.number) }
        #expect(numbers == [1, 2])
        reader.forEachLine { numbers.append($0.number) }
        #expect(numbers == [1, 2] && calls == 2, "no read after the end")
    }

    @Test func testPathAndBytes() throws {
        var opened = false
        if HexLineReader(path: "/nonexistent/frames.hex") != nil { opened = true }
        #expect(!opened)
        let path = try CLIFixtures.writeTemporary(["00", "# c", "11"])
        defer { try? FileManager.default.removeItem(atPath: path) }
        var numbers: [Int] = []
        guard var reader = HexLineReader(path: path, chunkBytes: 2) else {
            Issue.record("cannot open \(path)")
            return
        }
        reader.forEachLine { numbers.append($0.number) }
        var fromBytes = HexLineReader(bytes: Array("00\n# c\n11\n".utf8), chunkBytes: 1)
        fromBytes.forEachLine { numbers.append($0.number) }
        #expect(numbers == [1, 2, 3, 1, 2, 3])
    }

    /// Lines full of what can tell a `Character` from a byte: `#` beside combining marks, prepended marks,
    /// variation selectors and joiners, invalid UTF-8, NUL, CR, and real frames.
    static func trickyLines(count: Int, seed: UInt64) -> [UInt8] {
        var g = SeededGenerator(seed: seed)
        let atoms: [String] =
            Array("0123456789abcdefABCDEF##  \t\r").map(String.init) + [
                "\u{0301}", "\u{0600}", "\u{FE0F}", "\u{200D}", "\u{20E3}", "\u{00E9}", "\u{00A0}", "\u{3000}", "\u{0B}", "g",
                "\u{0}", "\u{1F1E6}",
            ]
        let frames = FixtureCorpus.frames.map(\.hex) + FixtureCorpus.udpDatagrams.map { Hex.encode($0.bytes) }
        var out: [UInt8] = []
        for _ in 0..<count {
            let noise = (0..<Int.random(in: 0...4, using: &g)).map { _ in atoms.randomElement(using: &g)! }.joined()
            var line = Array(noise.utf8)
            if Bool.random(using: &g) {
                let frame = Array(frames.randomElement(using: &g)!.utf8)
                let at = Int.random(in: 0...frame.count, using: &g)
                line = Array(frame[..<at]) + line + Array(frame[at...])
            }
            if Int.random(in: 0..<10, using: &g) == 0 { line.insert([0xFF, 0xC3, 0x80, 0xCC].randomElement(using: &g)!, at: 0) }
            out += line + [0x0A]
        }
        return out
    }

    @Test func testReportGivesTheSameJSONAsTheStringReading() {
        let input = Self.trickyLines(count: 5_000, seed: 41)
        for udp in [false, true] {
            var byBytes = FrameDecodeReport(deviceID: nil, udp: udp)
            var byString = FrameDecodeReport(deviceID: nil, udp: udp)
            var reader = HexLineReader(bytes: input, chunkBytes: 100)
            var differences = 0
            reader.forEachLine { line in
                var a: [UInt8] = []
                var b: [UInt8] = []
                let outcomes = (
                    byBytes.process(line, to: &a),
                    byString.process(line: String(decoding: line.bytes, as: UTF8.self), number: line.number, to: &b)
                )
                if a != b || outcomes.0 != outcomes.1 {
                    differences += 1
                    if differences <= 3 {
                        Issue.record(
                            "line \(line.number) \(Array(line.bytes)): \(String(decoding: a, as: UTF8.self)) vs \(String(decoding: b, as: UTF8.self))"
                        )
                    }
                }
            }
            #expect(differences == 0)
        }
    }
}
