/// `replay` over UDP: the datagrams of a captured flow sent one at a time, each answer checked.
import Codec8
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One captured UDP datagram and the answer a correct server gives it.
public enum ReplayDatagram: Sendable, Equatable {
    /// A valid datagram: answered with `ack` (its packet IDs, every record accepted). Its AVL data array
    /// starts at `dataOffset`, so that a copy can carry another IMEI.
    case valid([UInt8], ack: UDPAck, dataOffset: Int)
    /// A datagram the server must refuse: no answer at all (UDP has no connection to close).
    case invalid([UInt8], category: String)

    /// Classifies one datagram with the codec's own decoder.
    static func classify(_ bytes: [UInt8], maxDataLength: Int) -> ReplayDatagram {
        do throws(Codec8Error) {
            return try UDPDatagramView.withDecoded(bytes, maxDataLength: maxDataLength) { datagram in
                let ack = UDPAck(
                    packetID: datagram.packetID,
                    avlPacketID: datagram.avlPacketID,
                    acceptedRecords: UInt8(truncatingIfNeeded: datagram.packet.recordCount)
                )
                return .valid(bytes, ack: ack, dataOffset: datagram.dataOffset)
            }
        } catch {
            return .invalid(bytes, category: error.category)
        }
    }

    /// What to send: the captured bytes, or a valid datagram re-encoded under the IMEI that `rename`
    /// gives for its own (same packet IDs, same data array). An invalid one is always sent as captured.
    func bytes(renaming rename: ((String) -> String)?) -> [UInt8] {
        switch self {
        case .invalid(let bytes, _):
            return bytes
        case .valid(let bytes, let ack, let dataOffset):
            guard let rename,
                let imei = IMEI(rename(String(decoding: bytes[UDPDatagramView.headerSize..<dataOffset], as: UTF8.self)))
            else { return bytes }
            return UDPDatagramView.encode(packetID: ack.packetID, avlPacketID: ack.avlPacketID, imei: imei, avlData: bytes[dataOffset...])
        }
    }
}

/// What one device sent over UDP (one source address and port to the server), in capture order.
public struct ReplayDatagramFlow: Sendable, Equatable {
    public var name: String
    public var datagrams: [ReplayDatagram]

    public init(name: String, datagrams: [ReplayDatagram]) {
        self.name = name
        self.datagrams = datagrams
    }

    /// The device-to-server UDP flows of a capture: the flows to `serverPort`, or (nil) every flow that
    /// carries at least one datagram that looks like a Teltonika one (the server's 7-byte ACKs never do,
    /// so the answers are left out). Each packet's payload is one datagram, classified by the codec.
    public static func fromCapture(
        _ bytes: [UInt8],
        name: String,
        serverPort: UInt16?,
        maxDataLength: Int
    ) throws(ReplayInputError) -> [ReplayDatagramFlow] {
        var flows: [ReplayDatagramFlow] = []
        for flow in try ReplayInputError.flows(of: bytes, name: name).udp {
            if let serverPort {
                guard flow.destinationPort == serverPort else { continue }
            } else {
                guard flow.datagrams.contains(where: { $0.withUnsafeBytes { UDPDatagramView.looksLikeDatagram($0) } }) else { continue }
            }
            flows.append(
                ReplayDatagramFlow(
                    name: "\(name) udp \(flow.source)>\(flow.destination)",
                    datagrams: flow.datagrams.map { ReplayDatagram.classify($0, maxDataLength: maxDataLength) }
                )
            )
        }
        return flows
    }
}

extension Replayer {
    /// Sends a flow's datagrams one at a time from one socket of its own. A valid datagram waits for its
    /// ACK (up to the response timeout, then sent again, at most `udpResends` times) and the ACK must
    /// carry its packet ID, its AVL packet ID and its record count; an invalid one must get no answer
    /// within the response timeout. An ACK for a datagram answered before (the second ACK of a resend) is
    /// no answer to the next one and is skipped.
    func replay(_ flow: ReplayDatagramFlow, copy: Int) -> ReplayReport {
        var report = ReplayReport()
        report.sessions = 1
        let target = "\(options.host):\(options.udpPort)"
        guard let socket = DatagramSocket(host: options.host, port: options.udpPort) else {
            report.connectError("\(flow.name): cannot open a UDP socket to \(target)")
            return report
        }
        let rename: ((String) -> String)? =
            copy > 0 || options.imei != nil ? { [options] in options.imei ?? Replayer.imei($0, copy: copy) } : nil
        /// Packet IDs (channel << 8 | AVL) of the datagrams sent before this one.
        var earlier = Set<UInt32>()
        for (index, datagram) in flow.datagrams.enumerated() {
            func problem(_ text: String) { report.mismatch("\(flow.name) datagram \(index + 1): \(text)") }
            pacer?.wait()
            report.framesSent += 1
            report.datagrams += 1
            let bytes = datagram.bytes(renaming: rename)
            switch datagram {
            case .valid(_, let expected, _):
                let ids = expected.ids
                var sends = 0
                waiting: while true {
                    socket.send(bytes)
                    sends += 1
                    switch socket.receive(timeout: options.responseTimeout, skipping: { $0.ids != ids && earlier.contains($0.ids) }) {
                    case .datagram(let answer) where UDPAck(answer) == expected:
                        report.acked += 1
                        report.recordsAcked += Int(expected.acceptedRecords)
                    case .datagram(let answer):
                        problem("expected ACK \(Hex.encode(expected.bytes)), got \(Hex.encode(answer))")
                    case .timeout where sends <= options.udpResends:
                        report.resends += 1
                        continue waiting
                    case .timeout:
                        problem("expected ACK \(Hex.encode(expected.bytes)), got nothing after \(sends) sends")
                    case .failed(let reason):
                        report.connectError("\(flow.name): \(target): \(reason)")
                        return report
                    }
                    break waiting
                }
                earlier.insert(ids)
            case .invalid(let bytes, let category):
                socket.send(bytes)
                switch socket.receive(timeout: options.responseTimeout, skipping: { earlier.contains($0.ids) }) {
                case .timeout:
                    report.rejected += 1
                case .datagram(let answer):
                    problem("a \(category) datagram must get no answer, got \(Hex.encode(answer))")
                case .failed(let reason):
                    report.connectError("\(flow.name): \(target): \(reason)")
                    return report
                }
            }
        }
        return report
    }
}

extension UDPAck {
    /// Both packet IDs in one number: channel packet ID << 8 | AVL packet ID.
    var ids: UInt32 { UInt32(packetID) << 8 | UInt32(avlPacketID) }
}

/// A blocking UDP socket connected to the server: it sends there and receives only from there.
final class DatagramSocket {
    enum Answer: Equatable {
        /// One datagram from the server.
        case datagram([UInt8])
        case timeout
        /// The socket failed (an ICMP port unreachable shows as "connection refused").
        case failed(String)
    }

    private let fd: Int32
    private var buffer = [UInt8](repeating: 0, count: UDPDatagramView.maxDatagramBytes)

    init?(host: String, port: Int) {
        guard let fd = connectedSocket(host: host, port: port, type: Int32(SOCK_DGRAM.rawValue)) else { return nil }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Sends one datagram; a failure shows in the next ``receive(timeout:skipping:)``.
    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
    }

    /// The next datagram within `timeout` seconds that is not an ACK `skipping` names.
    func receive(timeout: Double, skipping: (UDPAck) -> Bool) -> Answer {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { return .timeout }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, Int32(left * 1000) + 1) <= 0 { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return .failed(String(cString: strerror(errno)))
            }
            let answer = Array(buffer[0..<n])
            if let ack = UDPAck(answer), skipping(ack) { continue }
            return .datagram(answer)
        }
    }
}
