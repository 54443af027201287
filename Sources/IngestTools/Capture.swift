/// Reads pcap and pcapng captures and reassembles the payload of each TCP flow, one direction at a
/// time: what a device sent, as the server received it; and collects the UDP datagrams of each flow.
///
/// Link types: Ethernet (with 802.1Q tags), Linux cooked (SLL and SLL2), raw IP, BSD loopback.
/// IPv4 (unfragmented) and IPv6 (no extension headers). Segments are placed by sequence number, so
/// retransmissions, overlaps and reordering come out right; a gap (a segment the capture missed) ends
/// the flow there, and ``TCPFlow/gap`` says so. UDP has no order to restore: a flow's datagrams stay in
/// capture order, one payload per packet, a datagram the capture cut short (snap length) as captured.
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

    /// One direction of a UDP conversation (source address and port to destination address and port).
    public struct UDPFlow: Sendable, Equatable {
        public var source: String
        public var destination: String
        public var destinationPort: UInt16
        /// Each packet's payload, in capture order (a device's own resends are kept: they were sent).
        public var datagrams: [[UInt8]]
    }

    /// The TCP and UDP flows of a capture, each in order of its first packet.
    public struct Flows: Sendable, Equatable {
        public var tcp: [TCPFlow]
        public var udp: [UDPFlow]
    }

    /// The TCP flows of a capture, in order of their first packet.
    public static func tcpFlows(in bytes: [UInt8]) throws(Failure) -> [TCPFlow] {
        try flows(in: bytes).tcp
    }

    /// Every TCP and UDP flow of a capture, read in one pass.
    public static func flows(in bytes: [UInt8]) throws(Failure) -> Flows {
        var assembler = FlowAssembler()
        var udp: [UDPFlow] = []
        var udpIndex: [String: Int] = [:]
        try forEachPacket(in: bytes) { linkType, frame in
            guard let packet = ipPacket(linkType: linkType, frame: frame) else { return }
            switch packet.transport {
            case 6:
                assembler.add(packet)
            case 17:
                guard let datagram = udpDatagram(packet) else { return }
                let ends = datagram.ends
                if let index = udpIndex[ends.key] {
                    udp[index].datagrams.append(datagram.payload)
                } else {
                    udpIndex[ends.key] = udp.count
                    udp.append(
                        UDPFlow(
                            source: ends.source,
                            destination: ends.destination,
                            destinationPort: ends.destinationPort,
                            datagrams: [datagram.payload]
                        )
                    )
                }
            default:
                return
            }
        }
        return Flows(tcp: assembler.assembled(), udp: udp)
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

    /// Both ends of a TCP or UDP packet as `address:port`, and its flow's key.
    struct Endpoints {
        var source: String
        var destination: String
        var destinationPort: UInt16
        var key: String { source + ">" + destination }
    }

    struct Segment {
        var ends: Endpoints
        var sequence: UInt32
        var syn: Bool
        var payload: ArraySlice<UInt8>
    }

    /// An IP packet's addresses and where its transport header (TCP, UDP, ...) and payload lie in `bytes`.
    struct IPPacket {
        var bytes: [UInt8]
        var source: String
        var destination: String
        /// The IP protocol number (IPv6: the next header): 6 TCP, 17 UDP.
        var transport: UInt8
        var transportStart: Int
        var transportEnd: Int

        /// The ports: TCP and UDP both start with the source port, then the destination port (the
        /// caller checks that they are there).
        var endpoints: Endpoints {
            let r = Reader(bytes: bytes, littleEndian: false)
            let destinationPort = r.u16(transportStart + 2)
            return Endpoints(
                source: "\(source):\(r.u16(transportStart))",
                destination: "\(destination):\(destinationPort)",
                destinationPort: destinationPort
            )
        }
    }

    /// The IP packet inside a link-layer frame, if it holds an unfragmented IPv4 or an IPv6 packet
    /// without extension headers.
    static func ipPacket(linkType: UInt32, frame: ArraySlice<UInt8>) -> IPPacket? {
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
        switch etherType {
        case 0x0800:
            guard f.count >= offset + 20, f[offset] >> 4 == 4 else { return nil }
            let headerLength = Int(f[offset] & 0x0F) * 4
            let total = Int(r.u16(offset + 2))
            let fragment = r.u16(offset + 6)
            guard fragment & 0x3FFF == 0, headerLength >= 20 else { return nil }
            return IPPacket(
                bytes: f,
                source: f[(offset + 12)..<(offset + 16)].map(String.init).joined(separator: "."),
                destination: f[(offset + 16)..<(offset + 20)].map(String.init).joined(separator: "."),
                transport: f[offset + 9],
                transportStart: offset + headerLength,
                transportEnd: min(f.count, offset + total)
            )
        case 0x86dd:
            guard f.count >= offset + 40 else { return nil }
            return IPPacket(
                bytes: f,
                source: ipv6(f[(offset + 8)..<(offset + 24)]),
                destination: ipv6(f[(offset + 24)..<(offset + 40)]),
                transport: f[offset + 6],
                transportStart: offset + 40,
                transportEnd: min(f.count, offset + 40 + Int(r.u16(offset + 4)))
            )
        default:
            return nil
        }
    }

    /// The TCP segment inside an IP packet, if it holds a whole TCP header.
    static func segment(_ packet: IPPacket) -> Segment? {
        let f = packet.bytes
        let r = Reader(bytes: f, littleEndian: false)
        let (tcpStart, tcpEnd) = (packet.transportStart, packet.transportEnd)
        guard packet.transport == 6, tcpEnd >= tcpStart + 20 else { return nil }
        let dataOffset = Int(f[tcpStart + 12] >> 4) * 4
        guard dataOffset >= 20, tcpStart + dataOffset <= tcpEnd else { return nil }
        let flags = f[tcpStart + 13]
        return Segment(
            ends: packet.endpoints,
            sequence: r.u32(tcpStart + 4),
            syn: flags & 0x02 != 0,
            payload: ArraySlice(f[(tcpStart + dataOffset)..<tcpEnd])
        )
    }

    /// One UDP packet: its flow and its payload (up to the UDP length, or the end of what was captured).
    struct Datagram {
        var ends: Endpoints
        var payload: [UInt8]
    }

    /// The UDP datagram inside an IP packet, if it holds a whole UDP header.
    static func udpDatagram(_ packet: IPPacket) -> Datagram? {
        let (start, end) = (packet.transportStart, packet.transportEnd)
        guard packet.transport == 17, end >= start + 8 else { return nil }
        let r = Reader(bytes: packet.bytes, littleEndian: false)
        let length = Int(r.u16(start + 4))
        guard length >= 8 else { return nil }
        return Datagram(ends: packet.endpoints, payload: Array(packet.bytes[(start + 8)..<min(end, start + length)]))
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

        mutating func add(_ packet: IPPacket) {
            guard let s = Capture.segment(packet) else { return }
            let key = s.ends.key
            if byKey[key] == nil {
                byKey[key] = Flow(source: s.ends.source, destination: s.ends.destination, destinationPort: s.ends.destinationPort)
                order.append(key)
            }
            if s.syn { byKey[key]!.start = s.sequence &+ 1 }
            if !s.payload.isEmpty { byKey[key]!.segments.append((s.sequence, s.payload)) }
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
