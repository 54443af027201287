import Codec8
import FixtureSupport
import Foundation
import Testing

/// The shared corpus (`Tests/FixtureSupport`).
typealias Fixtures = FixtureCorpus

extension FixtureFrame: CustomTestStringConvertible {
    public var testDescription: String { id }
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
