/// Reads pcap and pcapng captures and reassembles the payload of each TCP flow, one direction at a
/// time: what a device sent, as the server received it.
///
/// Link types: Ethernet (with 802.1Q tags), Linux cooked (SLL and SLL2), raw IP, BSD loopback.
/// IPv4 (unfragmented) and IPv6 (no extension headers). Segments are placed by sequence number, so
/// retransmissions, overlaps and reordering come out right; a gap (a segment the capture missed) ends
/// the flow there, and ``TCPFlow/gap`` says so.
public enum Capture {
    public enum Failure: Error, CustomStringConvertible, Equatable {
        case notACapture
        case truncated(String)

        public var description: String {
            switch self {
            case .notACapture: "not a pcap or pcapng file"
            case .truncated(let what): "capture truncated inside \(what)"
            }
        }
    }

    /// One direction of a TCP connection.
    public struct TCPFlow: Sendable, Equatable {
        public var source: String
        public var destination: String
        public var destinationPort: UInt16
        /// The payload bytes in sequence order, up to the first gap.
        public var payload: [UInt8]
        /// True when a segment is missing: `payload` stops before it.
        public var gap: Bool
    }

    /// The flows of a capture, in order of their first packet.
    public static func tcpFlows(in bytes: [UInt8]) throws(Failure) -> [TCPFlow] {
        var assembler = FlowAssembler()
        try forEachPacket(in: bytes) { linkType, frame in assembler.add(linkType: linkType, frame: frame) }
        return assembler.assembled()
    }

    // MARK: - Files

    /// Calls `body` with the link type and bytes of every captured packet.
    static func forEachPacket(in bytes: [UInt8], _ body: (UInt32, ArraySlice<UInt8>) -> Void) throws(Failure) {
        guard bytes.count >= 4 else { throw .notACapture }
        let magicLE = Reader(bytes: bytes, littleEndian: true).u32(0)
        switch magicLE {
        case 0xa1b2_c3d4, 0xa1b2_3c4d: try pcap(bytes, littleEndian: true, body)
        case 0xd4c3_b2a1, 0x4d3c_b2a1: try pcap(bytes, littleEndian: false, body)
        case 0x0a0d_0d0a: try pcapng(bytes, body)
        default: throw .notACapture
        }
    }

    private static func pcap(_ bytes: [UInt8], littleEndian: Bool, _ body: (UInt32, ArraySlice<UInt8>) -> Void) throws(Failure) {
        let r = Reader(bytes: bytes, littleEndian: littleEndian)
        guard bytes.count >= 24 else { throw .truncated("the pcap header") }
        let linkType = r.u32(20) & 0x0FFF_FFFF
        var offset = 24
        while offset < bytes.count {
            guard offset + 16 <= bytes.count else { throw .truncated("a pcap record header") }
            let length = Int(r.u32(offset + 8))
            guard offset + 16 + length <= bytes.count else { throw .truncated("a pcap record") }
            body(linkType, bytes[(offset + 16)..<(offset + 16 + length)])
            offset += 16 + length
        }
    }

    private static func pcapng(_ bytes: [UInt8], _ body: (UInt32, ArraySlice<UInt8>) -> Void) throws(Failure) {
        var offset = 0
        var r = Reader(bytes: bytes, littleEndian: true)
        var linkTypes: [UInt32] = []
        while offset < bytes.count {
            guard offset + 12 <= bytes.count else { throw .truncated("a pcapng block header") }
            let type = Reader(bytes: bytes, littleEndian: true).u32(offset)
            if type == 0x0a0d_0d0a {
                // Section header: the byte-order magic sets the endianness of the section.
                guard offset + 12 <= bytes.count else { throw .truncated("a section header") }
                r = Reader(bytes: bytes, littleEndian: Reader(bytes: bytes, littleEndian: true).u32(offset + 8) == 0x1a2b_3c4d)
                linkTypes = []
            }
            let length = Int(r.u32(offset + 4))
            guard length >= 12, length % 4 == 0, offset + length <= bytes.count else { throw .truncated("a pcapng block") }
            switch r.u32(offset) {
            case 1:  // interface description
                linkTypes.append(UInt32(r.u16(offset + 8)))
            case 6:  // enhanced packet
                let interface = Int(r.u32(offset + 8))
                let captured = Int(r.u32(offset + 20))
                guard interface < linkTypes.count, offset + 28 + captured <= offset + length else { throw .truncated("a packet block") }
                body(linkTypes[interface], bytes[(offset + 28)..<(offset + 28 + captured)])
            case 3:  // simple packet
                let original = Int(r.u32(offset + 8))
                let captured = min(original, length - 16)
                guard !linkTypes.isEmpty, captured >= 0 else { throw .truncated("a packet block") }
                body(linkTypes[0], bytes[(offset + 12)..<(offset + 12 + captured)])
            default:
                break
            }
            offset += length
        }
    }

    // MARK: - Layers

    struct Segment {
        var key: String
        var source: String
        var destination: String
        var destinationPort: UInt16
        var sequence: UInt32
        var syn: Bool
        var payload: ArraySlice<UInt8>
    }

    /// The TCP segment inside a link-layer frame, if it holds one.
    static func segment(linkType: UInt32, frame: ArraySlice<UInt8>) -> Segment? {
        let f = Array(frame)
        let r = Reader(bytes: f, littleEndian: false)
        var offset: Int
        var etherType: UInt16
        switch linkType {
        case 1:  // Ethernet
            guard f.count >= 14 else { return nil }
            offset = 14
            etherType = r.u16(12)
            while etherType == 0x8100 || etherType == 0x88a8, f.count >= offset + 4 {
                etherType = r.u16(offset + 2)
                offset += 4
            }
        case 113:  // Linux cooked v1
            guard f.count >= 16 else { return nil }
            offset = 16
            etherType = r.u16(14)
        case 276:  // Linux cooked v2
            guard f.count >= 20 else { return nil }
            offset = 20
            etherType = r.u16(0)
        case 101, 12, 14, 228, 229:  // raw IP
            guard let first = f.first else { return nil }
            offset = 0
            etherType = first >> 4 == 6 ? 0x86dd : 0x0800
        case 0, 108:  // BSD loopback: a 4-byte family, then IP
            guard f.count > 4 else { return nil }
            offset = 4
            etherType = f[4] >> 4 == 6 ? 0x86dd : 0x0800
        default:
            return nil
        }
        var source = ""
        var destination = ""
        var tcpStart: Int
        var tcpEnd: Int
        switch etherType {
        case 0x0800:
            guard f.count >= offset + 20, f[offset] >> 4 == 4 else { return nil }
            let headerLength = Int(f[offset] & 0x0F) * 4
            let total = Int(r.u16(offset + 2))
            let fragment = r.u16(offset + 6)
            guard f[offset + 9] == 6, fragment & 0x3FFF == 0, headerLength >= 20 else { return nil }
            source = f[(offset + 12)..<(offset + 16)].map(String.init).joined(separator: ".")
            destination = f[(offset + 16)..<(offset + 20)].map(String.init).joined(separator: ".")
            tcpStart = offset + headerLength
            tcpEnd = min(f.count, offset + total)
        case 0x86dd:
            guard f.count >= offset + 40, f[offset + 6] == 6 else { return nil }
            source = ipv6(f[(offset + 8)..<(offset + 24)])
            destination = ipv6(f[(offset + 24)..<(offset + 40)])
            tcpStart = offset + 40
            tcpEnd = min(f.count, tcpStart + Int(r.u16(offset + 4)))
        default:
            return nil
        }
        guard tcpEnd >= tcpStart + 20 else { return nil }
        let sourcePort = r.u16(tcpStart)
        let destinationPort = r.u16(tcpStart + 2)
        let dataOffset = Int(f[tcpStart + 12] >> 4) * 4
        guard dataOffset >= 20, tcpStart + dataOffset <= tcpEnd else { return nil }
        let flags = f[tcpStart + 13]
        let from = "\(source):\(sourcePort)"
        let to = "\(destination):\(destinationPort)"
        return Segment(
            key: from + ">" + to,
            source: from,
            destination: to,
            destinationPort: destinationPort,
            sequence: r.u32(tcpStart + 4),
            syn: flags & 0x02 != 0,
            payload: ArraySlice(f[(tcpStart + dataOffset)..<tcpEnd])
        )
    }

    private static func ipv6(_ bytes: ArraySlice<UInt8>) -> String {
        let a = Array(bytes)
        return "[" + stride(from: 0, to: 16, by: 2).map { String(UInt16(a[$0]) << 8 | UInt16(a[$0 + 1]), radix: 16) }.joined(separator: ":")
            + "]"
    }

    /// Collects segments per flow and puts each flow's bytes in sequence order.
    struct FlowAssembler {
        private struct Flow {
            var source: String
            var destination: String
            var destinationPort: UInt16
            var start: UInt32?
            var segments: [(sequence: UInt32, payload: ArraySlice<UInt8>)] = []
        }
        private var byKey: [String: Flow] = [:]
        private var order: [String] = []

        mutating func add(linkType: UInt32, frame: ArraySlice<UInt8>) {
            guard let s = Capture.segment(linkType: linkType, frame: frame) else { return }
            if byKey[s.key] == nil {
                byKey[s.key] = Flow(source: s.source, destination: s.destination, destinationPort: s.destinationPort)
                order.append(s.key)
            }
            if s.syn { byKey[s.key]!.start = s.sequence &+ 1 }
            if !s.payload.isEmpty { byKey[s.key]!.segments.append((s.sequence, s.payload)) }
        }

        func assembled() -> [TCPFlow] {
            order.compactMap { key in
                let flow = byKey[key]!
                guard let first = flow.segments.first else { return nil }
                // Offsets relative to the stream start (the SYN, else the earliest segment), modulo 2^32.
                let base =
                    flow.start
                    ?? flow.segments.map(\.sequence).min {
                        Int32(bitPattern: $0 &- first.sequence) < Int32(bitPattern: $1 &- first.sequence)
                    }!
                let placed = flow.segments.map { (offset: Int(Int32(bitPattern: $0.sequence &- base)), payload: $0.payload) }
                    .filter { $0.offset >= 0 }
                    .sorted { $0.offset < $1.offset }
                var payload: [UInt8] = []
                var gap = false
                for segment in placed {
                    let end = segment.offset + segment.payload.count
                    if segment.offset > payload.count {
                        gap = true
                        break
                    }
                    if end > payload.count {
                        payload += segment.payload.suffix(end - payload.count)
                    }
                }
                return TCPFlow(
                    source: flow.source,
                    destination: flow.destination,
                    destinationPort: flow.destinationPort,
                    payload: payload,
                    gap: gap
                )
            }
        }
    }

    /// Fixed-width integer reads at byte offsets (the caller checks bounds).
    struct Reader {
        let bytes: [UInt8]
        let littleEndian: Bool

        func u16(_ at: Int) -> UInt16 {
            let a = UInt16(bytes[at])
            let b = UInt16(bytes[at + 1])
            return littleEndian ? b << 8 | a : a << 8 | b
        }

        func u32(_ at: Int) -> UInt32 {
            let hi = UInt32(u16(at))
            let lo = UInt32(u16(at + 2))
            return littleEndian ? lo << 16 | hi : hi << 16 | lo
        }
    }
}
