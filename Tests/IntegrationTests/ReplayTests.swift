import Codec8
import FixtureSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `teltonika-ingest replay` against the real server: fixture hex files, and captures the test writes
/// itself (pcap over Ethernet/IPv4, pcapng over raw IPv6) with split, reordered and retransmitted segments.
@Suite(.serialized, .blocking, .timeLimit(.minutes(3)))
struct ReplayTests {
    /// Runs `replay` with `arguments`; returns the exit status, stdout and stderr.
    func replay(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: TestEnvironment.binary)
        p.arguments = ["replay"] + arguments
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        while p.isRunning { usleep(5_000) }
        return (p.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }

    /// `key=value` fields of the summary line.
    func fields(_ summary: String) -> [String: String] {
        Dictionary(
            summary.split(whereSeparator: \.isWhitespace).compactMap { part -> (String, String)? in
                let kv = part.split(separator: "=", maxSplits: 1)
                return kv.count == 2 ? (String(kv[0]), String(kv[1])) : nil
            },
            uniquingKeysWith: { $1 }
        )
    }

    func temporaryFile(_ name: String, _ bytes: [UInt8]) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("replay-\(UUID().uuidString)-\(name)")
        try Data(bytes).write(to: url)
        return url
    }

    @Test func testSampleSessionReplaysClean() throws {
        let server = try ServerProcess()
        let result = try replay([FixtureCorpus.directory.appendingPathComponent("sample-session.hex").path, "--port", "\(server.port)"])
        #expect(result.status == 0, "\(result)")
        let f = fields(result.stdout)
        // What the file holds, by the codec's own reading of each line.
        var kinds: [String: Int] = [:]
        let text = try String(contentsOf: FixtureCorpus.directory.appendingPathComponent("sample-session.hex"), encoding: .utf8)
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let kind = try StandaloneFrame.withDecoded(Hex.decode(line)!) { frame -> String in
                switch frame {
                case .keepAlive: "keepalives"
                case .login: "logins"
                case .frame(.avl): "acked"
                case .frame(.message): "messages"
                }
            }
            kinds[kind, default: 0] += 1
        }
        #expect(kinds == ["logins": 1, "acked": 4, "messages": 1, "keepalives": 1], "the capture as committed")
        for kind in ["acked", "messages", "keepalives"] { #expect(f[kind] == "\(kinds[kind, default: 0])", "\(kind): \(result.stdout)") }
        #expect(f["mismatched"] == "0")
        let stored = try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream)
        #expect(f["records_acked"] == "\(stored)")
    }

    /// Every fixture row in one file: valid frames are ACKed with their count, invalid ones refused.
    @Test func testEveryFixtureGetsTheAnswerTheProtocolDemands() throws {
        let server = try ServerProcess()
        let rows = TestEnvironment.fixtures
        let text =
            "000f333536333037303432343431303133\n" + rows.map { "# \($0.id) \($0.expect)\n\(Hex.encode($0.bytes))" }.joined(separator: "\n")
        let file = try temporaryFile("fixtures.hex", Array(text.utf8))
        defer { try? FileManager.default.removeItem(at: file) }
        let result = try replay([file.path, "--port", "\(server.port)", "--response-timeout", "5"])
        #expect(result.status == 0, "\(result.stderr)")
        let f = fields(result.stdout)
        let avl = rows.filter { $0.expect.hasPrefix("avl:") }
        #expect(f["acked"] == "\(avl.count)")
        #expect(f["records_acked"] == "\(avl.reduce(0) { $0 + Int($1.expect.dropFirst(4))! })")
        #expect(f["rejected"] == "\(rows.filter { $0.expect.hasPrefix("error:") }.count)")
        #expect(f["messages"] == "\(rows.filter { $0.expect.hasPrefix("message") }.count)")
        #expect(f["mismatched"] == "0")
    }

    /// A capture of one device, cut into 7-byte segments, two of them swapped and one sent twice; the
    /// server's answers in the other direction are ignored.
    static func deviceTraffic() throws -> (device: [UInt8], server: [UInt8], records: Int) {
        var device = IMEI("356307042441013")!.loginFrame
        var records = 0
        for (n, codec) in [(3, AVLCodec.codec8), (5, .codec8Extended), (2, .codec16)] {
            let batch = (0..<n).map {
                AVLRecord(timestampMs: 1_700_000_000_000 + UInt64(records + $0), ioElements: [IOElement(id: 1, value: .u8(1))])
            }
            device += try AVLPacketEncoder.encode(batch, codec: codec)
            records += n
        }
        return (device, [1, 0, 0, 0, 3, 0, 0, 0, 5, 0, 0, 0, 2], records)
    }

    static func segments(_ payload: [UInt8], isn: UInt32) -> [(sequence: UInt32, payload: [UInt8])] {
        var out = stride(from: 0, to: payload.count, by: 7).map { (isn &+ UInt32($0), Array(payload[$0..<min(payload.count, $0 + 7)])) }
        out.swapAt(2, 3)
        out.insert(out[5], at: 8)  // a retransmission
        return out
    }

    @Test(arguments: ["pcap", "pcapng"])
    func testCaptureReplaysAsOneDevice(format: String) throws {
        let server = try ServerProcess()
        let traffic = try Self.deviceTraffic()
        var writer = CaptureWriter(format: format)
        // Sequence numbers near 2^32 so that they wrap inside the flow.
        for s in Self.segments(traffic.device, isn: 0xFFFF_FF00) {
            writer.add(from: 40001, to: 5027, sequence: s.sequence, payload: s.payload)
        }
        writer.add(from: 5027, to: 40001, sequence: 77, payload: traffic.server)
        let file = try temporaryFile("capture.\(format)", writer.bytes)
        defer { try? FileManager.default.removeItem(at: file) }
        let result = try replay([file.path, "--port", "\(server.port)"])
        #expect(result.status == 0, "\(result)")
        let f = fields(result.stdout)
        #expect(f["sessions"] == "1" && f["acked"] == "3" && f["records_acked"] == "\(traffic.records)", "\(result.stdout)")
        #expect(try RedisClient(url: TestEnvironment.redisURL).xlen(server.stream) == traffic.records)
        // --loop and --concurrency turn it into load: distinct IMEIs, every copy ACKed.
        let load = try replay([file.path, "--port", "\(server.port)", "--loop", "4", "--concurrency", "4", "--rate", "200"])
        #expect(load.status == 0, "\(load)")
        #expect(fields(load.stdout)["acked"] == "12")
    }

    /// A server that ACKs the wrong count is caught: exit 1, the mismatch named.
    @Test func testWrongACKIsAMismatch() throws {
        let wrong = try WrongACKServer()
        let result = try replay([FixtureCorpus.directory.appendingPathComponent("sample-session.hex").path, "--port", "\(wrong.port)"])
        #expect(result.status == 1)
        #expect(fields(result.stdout)["mismatched"] != "0")
        #expect(result.stderr.contains("expected ACK 1, got 00000009"), "\(result.stderr)")
    }
}

/// Writes a capture: pcap or pcapng, each packet Ethernet/IPv4 (pcap's default) or raw IPv6 (pcapng's
/// default), TCP segments or UDP datagrams between 10.0.0.1/fd00::1 (device) and 10.0.0.2/fd00::2
/// (server); a packet to port 5027 goes to the server.
struct CaptureWriter {
    enum Link {
        case ethernetIPv4
        case rawIPv6
    }

    let format: String
    let link: Link
    private var packets: [[UInt8]] = []

    init(format: String, link: Link? = nil) {
        self.format = format
        self.link = link ?? (format == "pcap" ? .ethernetIPv4 : .rawIPv6)
    }

    mutating func add(from: UInt16, to: UInt16, sequence: UInt32, payload: [UInt8]) {
        let tcp = be16(from) + be16(to) + be32(sequence) + be32(0) + [0x50, 0x18] + be16(65535) + [0, 0, 0, 0]
        add(transport: 6, tcp + payload, towardServer: to == 5027)
    }

    /// One UDP packet carrying `payload` (checksum 0: none, as IPv4 allows and capture readers ignore).
    mutating func addUDP(from: UInt16, to: UInt16, payload: [UInt8]) {
        add(transport: 17, be16(from) + be16(to) + be16(UInt16(8 + payload.count)) + [0, 0] + payload, towardServer: to == 5027)
    }

    private mutating func add(transport: UInt8, _ segment: [UInt8], towardServer: Bool) {
        switch link {
        case .ethernetIPv4:
            let ip =
                [0x45, 0] + be16(UInt16(20 + segment.count)) + [0, 0, 0x40, 0, 64, transport, 0, 0]
                + (towardServer ? [10, 0, 0, 1, 10, 0, 0, 2] : [10, 0, 0, 2, 10, 0, 0, 1])
            packets.append([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00] + ip + segment)
        case .rawIPv6:
            let device: [UInt8] = [0xfd] + Array(repeating: 0, count: 14) + [1]
            let server: [UInt8] = [0xfd] + Array(repeating: 0, count: 14) + [2]
            packets.append(
                [0x60, 0, 0, 0] + be16(UInt16(segment.count)) + [transport, 64] + (towardServer ? device + server : server + device)
                    + segment
            )
        }
    }

    var bytes: [UInt8] {
        var out: [UInt8] = []
        if format == "pcap" {
            out = le32(0xa1b2_c3d4) + le16(2) + le16(4) + le32(0) + le32(0) + le32(65535) + le32(link == .ethernetIPv4 ? 1 : 101)
            for p in packets { out += le32(1_700_000_000) + le32(0) + le32(UInt32(p.count)) + le32(UInt32(p.count)) + p }
        } else {
            out = block(0x0a0d_0d0a, le32(0x1a2b_3c4d) + le16(1) + le16(0) + le32(0xFFFF_FFFF) + le32(0xFFFF_FFFF))
            out += block(1, le16(link == .ethernetIPv4 ? 1 : 101) + le16(0) + le32(65535))
            for p in packets {
                let padded = p + Array(repeating: 0, count: (4 - p.count % 4) % 4)
                out += block(6, le32(0) + le32(0) + le32(0) + le32(UInt32(p.count)) + le32(UInt32(p.count)) + padded)
            }
        }
        return out
    }

    private func block(_ type: UInt32, _ body: [UInt8]) -> [UInt8] {
        let length = UInt32(12 + body.count)
        return le32(type) + le32(length) + body + le32(length)
    }
}

private func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
private func be32(_ v: UInt32) -> [UInt8] { be16(UInt16(v >> 16)) + be16(UInt16(v & 0xFFFF)) }
private func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
private func le32(_ v: UInt32) -> [UInt8] { le16(UInt16(v & 0xFFFF)) + le16(UInt16(v >> 16)) }

/// Accepts connections, answers a login with 01 and every later read with a wrong ACK (9).
final class WrongACKServer: @unchecked Sendable {
    let port: Int
    private let fd: Int32

    init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) } }
        fd = listener
        port = Int(UInt16(bigEndian: addr.sin_port))
        guard listen(listener, 16) == 0 else { throw TestFailure("listen failed") }
        Thread.detachNewThread {
            while true {
                let client = accept(listener, nil, nil)
                if client < 0 { return }
                Thread.detachNewThread {
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    var first = true
                    while recv(client, &buffer, buffer.count, 0) > 0 {
                        let answer: [UInt8] = first ? [1] : [0, 0, 0, 9]
                        first = false
                        _ = answer.withUnsafeBytes { send(client, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
                    }
                    close(client)
                }
            }
        }
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }
}
