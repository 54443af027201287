import Foundation

/// One row of `Tests/Fixtures/frames.tsv`.
public struct FixtureFrame: Sendable, CustomStringConvertible {
    public let id: String
    /// `avl:N`, `message:C`, `imei`, `ping` or `error:KIND`.
    public let expect: String
    public let hex: String
    public let bytes: [UInt8]
    public var description: String { id }
}

/// One row of `Tests/Fixtures/udp-datagrams.tsv`.
public struct UDPFixture: Sendable, CustomStringConvertible {
    public let id: String
    /// `avl:N` or `error:KIND`.
    public let expect: String
    public let bytes: [UInt8]
    /// The ACK a correct server sends for it.
    public let ack: [UInt8]
    public var description: String { id }
}

/// The shared fixture corpus, read from `Tests/Fixtures` (found from this file's path).
public enum FixtureCorpus {
    public static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    /// The repository's root folder (for scripts, deploy files and docs).
    public static var repositoryRoot: String { directory.deletingLastPathComponent().deletingLastPathComponent().path }

    /// Every row of frames.tsv, in order.
    public static let frames: [FixtureFrame] = {
        let text = try! String(contentsOf: directory.appendingPathComponent("frames.tsv"), encoding: .utf8)
        return text.split(separator: "\n").dropFirst().map { line in
            let cols = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            return FixtureFrame(id: cols[0], expect: cols[3], hex: cols[4], bytes: hexBytes(cols[4]))
        }
    }()

    /// Expected records per fixture id, as parsed JSON objects (read-only after first use).
    nonisolated(unsafe) public static let expectedRecords = records(in: "expected-records.jsonl")

    /// Every row of udp-datagrams.tsv: Teltonika's UDP examples (PROTOCOL.md §9.9), each with the ACK
    /// the server must send (`ack`, hex) and its records in udp-expected-records.jsonl.
    public static let udpDatagrams: [UDPFixture] = {
        let text = try! String(contentsOf: directory.appendingPathComponent("udp-datagrams.tsv"), encoding: .utf8)
        return text.split(separator: "\n").dropFirst().map { line in
            let cols = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            return UDPFixture(id: cols[0], expect: cols[2], bytes: hexBytes(cols[3]), ack: hexBytes(cols[4]))
        }
    }()

    /// Expected records (with `device_id`) per UDP fixture id.
    nonisolated(unsafe) public static let udpExpectedRecords = records(in: "udp-expected-records.jsonl")

    /// `{"id": ..., "records": [...]}` lines, by id.
    private static func records(in file: String) -> [String: [[String: Any]]] {
        let text = try! String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
        var out: [String: [[String: Any]]] = [:]
        for line in text.split(separator: "\n") {
            let object = try! JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            out[object["id"] as! String] = (object["records"] as! [[String: Any]])
        }
        return out
    }

    public static var valid: [FixtureFrame] { frames.filter { !$0.expect.hasPrefix("error") } }
    public static var avl: [FixtureFrame] { frames.filter { $0.expect.hasPrefix("avl:") } }

    /// The fixture with this id.
    public static func frame(_ id: String) -> FixtureFrame { frames.first { $0.id == id }! }

    private static func hexBytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var it = hex.utf8.makeIterator()
        while let h = it.next(), let l = it.next() {
            out.append(UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16)!)
        }
        return out
    }
}

/// A value in a JSON tree, compared by meaning: numbers by value (so `0` equals `0.0`), objects
/// without regard to key order.
public func jsonEqual(_ a: Any?, _ b: Any?) -> Bool {
    switch (a, b) {
    case (nil, nil): return true
    case (is NSNull, is NSNull): return true
    case (let x as String, let y as String): return x == y
    case (let x as NSNumber, let y as NSNumber):
        // Integers compare exactly; anything with a fraction compares as Double.
        if x.doubleValue.rounded() == x.doubleValue && y.doubleValue.rounded() == y.doubleValue && abs(x.doubleValue) < 9e15 {
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
