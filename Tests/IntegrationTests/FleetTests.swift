import Codec8
import FixtureSupport
import Foundation
import Testing

/// Many devices at once: every packet ACKed, every record stored exactly once.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct FleetTests {
    @Test func testThousandDevicesTenPacketsEach() throws {
        let devices = 1000
        let packets = 10
        let recordsPerPacket = 3
        let server = try ServerProcess()
        var clients: [DeviceClient] = []
        for d in 0..<devices {
            let client = try DeviceClient(port: server.port)
            try client.send(IMEI(FleetTests.imei(d))!.loginFrame)
            clients.append(client)
        }
        for (d, client) in clients.enumerated() { #expect(client.receive(1, timeout: 10) == .bytes([1]), "device \(d) login") }
        for p in 0..<packets {
            for (d, client) in clients.enumerated() {
                let records = (0..<recordsPerPacket).map { r in
                    AVLRecord(
                        timestampMs: 1_700_000_000_000 + UInt64(p * recordsPerPacket + r),
                        priority: 1,
                        longitudeE7: Int32(d),
                        satellites: 7,
                        ioElements: [IOElement(id: 239, value: .u8(1)), IOElement(id: 66, value: .u16(12_000))]
                    )
                }
                try client.send(try AVLPacketEncoder.encode(records, codec: d % 2 == 0 ? .codec8 : .codec8Extended))
            }
            for (d, client) in clients.enumerated() {
                #expect(client.receive(4, timeout: 20) == .bytes(AVLAck.bytes(count: UInt32(recordsPerPacket))), "device \(d) packet \(p)")
            }
        }
        let entries = try RedisClient(url: TestEnvironment.redisURL).entries(server.stream)
        #expect(entries.count == devices * packets * recordsPerPacket)
        var seen = Set<String>()
        var lastTimestamp: [String: Int] = [:]
        for entry in entries {
            let payload = try JSONSerialization.jsonObject(with: Data(entry["payload"]!.utf8)) as! [String: Any]
            let device = entry["device_id"]!
            let ts = (payload["timestamp_ms"] as! NSNumber).intValue
            #expect(seen.insert("\(device):\(ts)").inserted, "duplicate \(device) \(ts)")
            // Records of one device keep their order.
            #expect(ts > lastTimestamp[device, default: 0], "order of \(device)")
            lastTimestamp[device] = ts
        }
        #expect(seen.count == devices * packets * recordsPerPacket)
    }

    static func imei(_ n: Int) -> String { "35000000000\(String(format: "%04d", n))" }
}
