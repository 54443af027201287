/// What `decode` prints for one hex frame: its JSON line and its exit-status class.
import Codec8

/// The heart of `teltonika-ingest decode`: one hex line in, one JSON line out.
///
/// Lines are hex frames; ASCII whitespace is ignored and `#` starts a comment. Blank and
/// comment-only lines produce nothing. Output objects, one per line that holds hex:
///
/// ```
/// {"line":N,"kind":"avl","codec":"8E","records":[<payload JSON>, ...]}
/// {"line":N,"kind":"imei","imei":"356307042441013"}
/// {"line":N,"kind":"ping"}
/// {"line":N,"kind":"message","codec":"12","type":6,"text":"...","payload_hex":"..."}   (+ imei, timestamp)
/// {"line":N,"kind":"udp","packet_id":51966,"avl_packet_id":5,"imei":"...","codec":"8","records":[...],"ack":"0005cafe010501"}
/// {"line":N,"kind":"error","error":"crc_mismatch","message":"..."}
/// ```
/// A line is a UDP datagram when ``UDPDatagramView/looksLikeDatagram(_:)`` says so (no TCP frame or
/// login does), or every line is with `udp`; then a line that is not a valid datagram is an error line.
/// `device_id` in a datagram's records is the datagram's own IMEI (as the server stores them); in TCP
/// records it is the `--imei` value, else the IMEI of the latest login line of the same input, else
/// null. A line that is not hex is reported with the input error `bad_hex`.
public struct FrameDecodeReport {
    /// The device ID given on the command line; wins over login lines.
    public let fixedDeviceID: IMEI?
    /// The data-field length cap, as for the server.
    public let maxDataLength: Int
    /// Every line is a UDP datagram (`decode --udp`), not only those that look like one.
    public let forceUDP: Bool
    private var loginDeviceID: IMEI?
    private var encoder = RecordJSONEncoder()

    public init(deviceID: IMEI?, maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength, udp: Bool = false) {
        fixedDeviceID = deviceID
        self.maxDataLength = maxDataLength
        forceUDP = udp
    }

    /// Starts a new input (forgets the IMEI of earlier login lines).
    public mutating func startInput() {
        loginDeviceID = nil
    }

    /// The outcome of one line.
    public enum Outcome: Equatable, Sendable {
        /// Blank or comment: nothing written.
        case skipped
        /// A login, keep-alive, AVL packet, message or UDP datagram.
        case decoded
        /// An error line was written.
        case error
    }

    /// Appends the JSON line (with its newline) for `line`, as ``HexLineReader`` read it, to `out`.
    ///
    /// The same output as ``process(line:number:to:)`` for every input, which reads the line as
    /// `Character`s: the two can differ only where a `#` is part of a larger `Character` (a combining mark
    /// after it, say), so such a line, and a line with other than ASCII that is not hex, goes that way.
    public mutating func process(_ line: HexLine, to out: inout [UInt8]) -> Outcome {
        if line.mayReadDifferentlyAsCharacters {
            return process(line: String(decoding: line.bytes, as: UTF8.self), number: line.number, to: &out)
        }
        switch line.content {
        case .blank:
            return .skipped
        case .notHex:
            appendNotHex(number: line.number, to: &out)
            return .error
        case .bytes(let bytes):
            return appendFrame(bytes, number: line.number, to: &out)
        }
    }

    /// Appends the JSON line (with its newline) for input line `number` to `out`.
    public mutating func process(line: some StringProtocol, number: Int, to out: inout [UInt8]) -> Outcome {
        let content = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        guard content.utf8.contains(where: { !isSpace($0) }) else { return .skipped }
        guard let bytes = Hex.decode(content), !bytes.isEmpty else {
            appendNotHex(number: number, to: &out)
            return .error
        }
        return bytes.withUnsafeBytes { appendFrame($0, number: number, to: &out) }
    }

    /// The line of a frame: decoded (TCP or UDP), or the error the codec gives for it.
    private mutating func appendFrame(_ bytes: UnsafeRawBufferPointer, number: Int, to out: inout [UInt8]) -> Outcome {
        appendLineStart(number, to: &out)
        defer { JSONText.appendRaw("}\n", to: &out) }
        do throws(Codec8Error) {
            if forceUDP || UDPDatagramView.looksLikeDatagram(bytes) {
                appendDatagram(try UDPDatagramView(datagram: bytes, maxDataLength: maxDataLength), to: &out)
            } else {
                appendDecoded(try StandaloneFrame.decode(bytes, maxDataLength: maxDataLength), to: &out)
            }
            return .decoded
        } catch {
            appendError(category: error.category, message: error.description, to: &out)
            return .error
        }
    }

    private func appendNotHex(number: Int, to out: inout [UInt8]) {
        appendLineStart(number, to: &out)
        appendError(category: "bad_hex", message: "not an even number of hex digits", to: &out)
        JSONText.appendRaw("}\n", to: &out)
    }

    private func appendLineStart(_ number: Int, to out: inout [UInt8]) {
        JSONText.appendRaw("{\"line\":", to: &out)
        JSONText.appendDecimal(UInt64(number), to: &out)
    }

    private mutating func appendDecoded(_ frame: StandaloneFrame, to out: inout [UInt8]) {
        switch frame {
        case .keepAlive:
            JSONText.appendRaw(",\"kind\":\"ping\"", to: &out)
        case .login(let imei):
            loginDeviceID = imei
            JSONText.appendRaw(",\"kind\":\"imei\",\"imei\":", to: &out)
            JSONText.appendString(imei.description, to: &out)
        case .frame(.avl(let packet)):
            JSONText.appendRaw(",\"kind\":\"avl\"", to: &out)
            appendRecords(of: packet, deviceID: fixedDeviceID ?? loginDeviceID, to: &out)
        case .frame(.message(let message)):
            JSONText.appendRaw(",\"kind\":\"message\",", to: &out)
            message.appendJSONMembers(to: &out)
        }
    }

    /// The UDP header, the records under the datagram's own IMEI, and the ACK a correct server sends
    /// (every record accepted), so an engineer can hold it against what a device received.
    private mutating func appendDatagram(_ datagram: UDPDatagramView, to out: inout [UInt8]) {
        JSONText.appendRaw(",\"kind\":\"udp\",\"packet_id\":", to: &out)
        JSONText.appendDecimal(UInt64(datagram.packetID), to: &out)
        JSONText.appendRaw(",\"avl_packet_id\":", to: &out)
        JSONText.appendDecimal(UInt64(datagram.avlPacketID), to: &out)
        JSONText.appendRaw(",\"imei\":", to: &out)
        JSONText.appendString(datagram.imei.description, to: &out)
        appendRecords(of: datagram.packet, deviceID: datagram.imei, to: &out)
        let ack = UDPAck(
            packetID: datagram.packetID,
            avlPacketID: datagram.avlPacketID,
            acceptedRecords: UInt8(truncatingIfNeeded: datagram.packet.recordCount)
        )
        JSONText.appendRaw(",\"ack\":", to: &out)
        JSONText.appendString(Hex.encode(ack.bytes), to: &out)
    }

    /// `,"codec":"8E","records":[...]`: the same for a TCP packet and a datagram's data array.
    private mutating func appendRecords(of packet: AVLPacketView, deviceID: IMEI?, to out: inout [UInt8]) {
        JSONText.appendRaw(",\"codec\":", to: &out)
        JSONText.appendString(packet.codec.name, to: &out)
        JSONText.appendRaw(",\"records\":[", to: &out)
        var first = true
        for record in packet.records {
            if !first { out.append(UInt8(ascii: ",")) }
            first = false
            encoder.append(record, deviceID: deviceID, to: &out)
        }
        out.append(UInt8(ascii: "]"))
    }

    private func appendError(category: String, message: String, to out: inout [UInt8]) {
        JSONText.appendRaw(",\"kind\":\"error\",\"error\":", to: &out)
        JSONText.appendString(category, to: &out)
        JSONText.appendRaw(",\"message\":", to: &out)
        JSONText.appendString(message, to: &out)
    }
}

private func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D }

extension HexLine {
    /// Whether reading the line as `Character`s could give another result than reading its bytes. The
    /// comment starts at the first `#` byte for both unless that `#` belongs to a larger `Character`,
    /// which takes a byte above ASCII right before it (a prepended mark) or right after it (a combining
    /// mark, a variation selector); bytes above ASCII before the `#` make the line not hex both ways, but
    /// such a line is handed over too, since it is an error line and costs nothing to be sure of.
    fileprivate var mayReadDifferentlyAsCharacters: Bool {
        if let hash = commentOffset {
            if hash > 0 && bytes[hash - 1] >= 0x80 { return true }
            if hash + 1 < bytes.count && bytes[hash + 1] >= 0x80 { return true }
        }
        guard case .notHex = content else { return false }
        return bytes.contains { $0 >= 0x80 }
    }
}
