import Codec8

extension FixtureFrame {
    /// The `record_id` of each record of this AVL frame sent by `imei`, as 16 hex digits (empty for other frames).
    public func recordIDs(imei: String) throws -> [String] {
        try StandaloneFrame.withDecoded(bytes) { decoded in
            guard case .frame(.avl(let packet)) = decoded else { return [] }
            return packet.records.map { record in
                var hex: [UInt8] = []
                XXH64.appendHex(record.recordID(imei: IMEI(imei)!), to: &hex)
                return String(decoding: hex, as: UTF8.self)
            }
        }
    }
}
