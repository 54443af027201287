import Codec8
import Foundation
import Testing

/// One row of `Tests/Fixtures/frames.tsv`.
struct FixtureFrame: Sendable, CustomTestStringConvertible {
    let id: String
    let expect: String
    let bytes: [UInt8]
    var testDescription: String { id }
}

enum Fixtures {
    /// `Tests/Fixtures`, found from this file's path.
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    /// Every row of frames.tsv.
    static let frames: [FixtureFrame] = {
        let text = try! String(contentsOf: directory.appendingPathComponent("frames.tsv"), encoding: .utf8)
        return text.split(separator: "\n").dropFirst().map { line in
            let cols = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            return FixtureFrame(id: cols[0], expect: cols[3], bytes: Hex.decode(cols[4])!)
        }
    }()

    /// Expected records per fixture id, as parsed JSON objects (read-only after first use).
    nonisolated(unsafe) static let expectedRecords: [String: [[String: Any]]] = {
        let text = try! String(contentsOf: directory.appendingPathComponent("expected-records.jsonl"), encoding: .utf8)
        var out: [String: [[String: Any]]] = [:]
        for line in text.split(separator: "\n") {
            let object = try! JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            out[object["id"] as! String] = (object["records"] as! [[String: Any]])
        }
        return out
    }()

    static var valid: [FixtureFrame] { frames.filter { !$0.expect.hasPrefix("error") } }
    static var avl: [FixtureFrame] { frames.filter { $0.expect.hasPrefix("avl:") } }
}

/// A value in a JSON tree, compared by meaning: numbers by value (so `0` equals `0.0`), objects
/// without regard to key order.
func jsonEqual(_ a: Any?, _ b: Any?) -> Bool {
    switch (a, b) {
    case (nil, nil): return true
    case (is NSNull, is NSNull): return true
    case (let x as String, let y as String): return x == y
    case (let x as NSNumber, let y as NSNumber):
        // Integers compare exactly; anything with a fraction compares as Double.
        if x.doubleValue.rounded() == x.doubleValue && y.doubleValue.rounded() == y.doubleValue
            && abs(x.doubleValue) < 9e15
        {
            return x.int64Value == y.int64Value
        }
        return x.doubleValue == y.doubleValue
    case (let x as [Any], let y as [Any]):
        return x.count == y.count && zip(x, y).allSatisfy { jsonEqual($0, $1) }
    case (let x as [String: Any], let y as [String: Any]):
        return Set(x.keys) == Set(y.keys) && x.keys.allSatisfy { jsonEqual(x[$0], y[$0]) }
    default: return false
    }
}

/// Payload JSON of every record of an AVL frame, parsed back into objects.
func payloadObjects(_ frame: [UInt8], deviceID: IMEI? = nil) throws -> [[String: Any]] {
    var encoder = RecordJSONEncoder()
    let lines: [[UInt8]] = try StandaloneFrame.withDecoded(frame) { decoded in
        guard case .frame(.avl(let packet)) = decoded else { return [] }
        return packet.records.map { record in
            var out: [UInt8] = []
            encoder.append(record, deviceID: deviceID, to: &out)
            return out
        }
    }
    return try lines.map { try JSONSerialization.jsonObject(with: Data($0)) as! [String: Any] }
}
