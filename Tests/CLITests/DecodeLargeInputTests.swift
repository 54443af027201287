import Codec8
import FixtureSupport
import Foundation
import Lifecycle
import Testing

/// `decode` on a multi-megabyte capture through the real binary, from a file and from standard input,
/// against what the test itself encoded line by line: kind, line number, record count, every record's
/// timestamp and device ID. Not a timing test: the speed is measured by scripts/bench-decode.sh.
@Suite(.serialized, .blocking)
struct DecodeLargeInputTests {
    /// What one output line must say.
    struct Expected {
        var line: Int
        var kind: String
        var timestamps: [UInt64] = []
        var deviceID: String? = nil
    }

    /// About 3 MB: comments, blank lines, logins, keep-alives, upper case, CRLF, trailing comments, a
    /// 300 KB comment line and a frame padded past the reader's 256 KiB buffer.
    static func capture() throws -> (text: [UInt8], expected: [Expected], records: Int) {
        var g = SeededGenerator(seed: 1919)
        var text: [UInt8] = []
        var expected: [Expected] = []
        var number = 0
        var imei: String? = nil
        var timestamp: UInt64 = 1_764_000_000_000
        var records = 0
        func add(_ line: String, ending: String = "\n") {
            text += Array((line + ending).utf8)
            number += 1
        }
        add("# a generated capture")
        for packet in 0..<2_800 {
            if packet % 400 == 0 {
                add("")
                imei = "35630704\(String(format: "%07d", packet))"
                add(Hex.encode(IMEI(imei!)!.loginFrame))
                expected.append(Expected(line: number, kind: "imei"))
            }
            if packet == 1_000 { add("# " + String(repeating: "x", count: 300_000)) }
            if packet % 97 == 0 {
                add("FF")
                expected.append(Expected(line: number, kind: "ping"))
            }
            let codec: AVLCodec = Int.random(in: 0..<3, using: &g) == 0 ? .codec8Extended : .codec8
            let batch = (0..<Int.random(in: 1...12, using: &g)).map { i in
                AVLRecord(
                    timestampMs: timestamp + UInt64(i),
                    latitudeE7: .random(in: -900_000_000...900_000_000, using: &g),
                    ioElements: (0..<Int.random(in: 5...15, using: &g)).map { id in
                        IOElement(id: UInt16(id + 1), value: .u16(.random(in: 0...UInt16.max, using: &g)))
                    }
                )
            }
            var hex = Hex.encode(try AVLPacketEncoder.encode(batch, codec: codec))
            var ending = "\n"
            switch Int.random(in: 0..<20, using: &g) {
            case 0: hex = hex.uppercased()
            case 1: ending = "\r\n"
            case 2: hex += "  # packet \(packet)"
            case 3: hex = " " + hex.prefix(10) + "\t" + hex.dropFirst(10)
            default: break
            }
            if packet == 2_000 { hex += String(repeating: " ", count: 300_000) }
            add(hex, ending: ending)
            expected.append(Expected(line: number, kind: "avl", timestamps: batch.map(\.timestampMs), deviceID: imei))
            timestamp += 1_000
            records += batch.count
        }
        add("# the last line has no newline", ending: "")
        return (text, expected, records)
    }

    /// Runs `decode` with stdout into a file (the output is larger than a pipe holds).
    static func decode(_ arguments: [String], stdin: String? = nil) throws -> (status: Int32, stdout: [UInt8]) {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("decode-out-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: out.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: out) }
        let process = Process()
        process.executableURL = Binary.url
        process.arguments = ["decode"] + arguments
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardInput = try stdin.map { try FileHandle(forReadingFrom: URL(fileURLWithPath: $0)) } ?? FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return (process.terminationStatus, Array(try Data(contentsOf: out)))
    }

    @Test func testMultiMegabyteCaptureFromFileAndStandardInput() throws {
        let (text, expected, records) = try Self.capture()
        #expect(text.count > 3_000_000)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("decode-large-\(UUID().uuidString).hex").path
        try Data(text).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let fromFile = try Self.decode([path])
        let fromStdin = try Self.decode([], stdin: path)
        #expect(fromFile.status == ExitStatus.success.rawValue && fromStdin.status == ExitStatus.success.rawValue)
        #expect(fromFile.stdout == fromStdin.stdout)
        let lines = fromFile.stdout.split(separator: UInt8(ascii: "\n"))
        try #require(lines.count == expected.count, "one output line per frame line")
        var seen = 0
        for (line, want) in zip(lines, expected) {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
            #expect(object["line"] as? Int == want.line)
            #expect(object["kind"] as? String == want.kind, "line \(want.line)")
            guard want.kind == "avl" else { continue }
            let got = try #require(object["records"] as? [[String: Any]])
            #expect(got.compactMap { ($0["timestamp_ms"] as? NSNumber)?.uint64Value } == want.timestamps, "line \(want.line)")
            #expect(got.allSatisfy { $0["device_id"] as? String == want.deviceID }, "line \(want.line)")
            seen += got.count
        }
        #expect(seen == records)
    }
}
