/// Teltonika AVL data over UDP: the datagram a device sends and the ACK it expects (PROTOCOL.md §5).
///
/// ```
///  datagram (device -> server), one AVL packet, no preamble, no CRC
/// +--------+-----------+------------+----------+--------+----------+-----------------------------------+
/// | u16 n  | u16 pkt id| not usable | avl id   | u16 m  | m digits | codec, NoD1, records..., NoD2     |
/// +--------+-----------+------------+----------+--------+----------+-----------------------------------+
///   n = bytes after this field        (0x01)     (echo)   IMEI       the AVL data array, as in TCP
///
///  ACK (server -> device), 7 bytes
/// +--------+-----------+------------+----------+-----------------+
/// | 0x0005 | u16 pkt id| 0x01       | avl id   | u8 accepted     |
/// +--------+-----------+------------+----------+-----------------+
/// ```
public struct UDPDatagramView {
    /// The channel packet ID (echoed in the ACK).
    public let packetID: UInt16
    /// The "not usable" byte: `0x01` in current firmware, `0x00`/`0x02` in older documents; any is accepted.
    public let notUsable: UInt8
    /// The AVL packet ID: the device's identity for this packet, echoed in the ACK; a resend reuses it.
    public let avlPacketID: UInt8
    /// The device, from the datagram (UDP has no login).
    public let imei: IMEI
    /// The AVL data array's records.
    public let packet: AVLPacketView
    /// Where the AVL data array starts in the datagram (its codec byte).
    public let dataOffset: Int

    /// Bytes before the IMEI digits: length, packet ID, not-usable byte, AVL packet ID, IMEI length.
    public static let headerSize = 8

    /// The largest UDP payload over IPv4 (65,535 - 8 UDP - 20 IP): no datagram is longer.
    public static let maxDatagramBytes = 65_507

    /// Validates a whole datagram: the length field against the bytes present, the IMEI (15 or 16
    /// digits), then the AVL data array as TCP checks it (size at most `maxDataLength`, a known AVL
    /// codec, equal record counts, records that fill the array exactly). UDP carries no CRC.
    public init(
        datagram bytes: UnsafeRawBufferPointer,
        maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength
    ) throws(Codec8Error) {
        guard bytes.count >= Self.headerSize else { throw .truncated(needed: Self.headerSize, available: bytes.count) }
        let declared = 2 + Int(bytes.u16(0))
        guard bytes.count >= declared else { throw .truncated(needed: declared, available: bytes.count) }
        guard bytes.count == declared else { throw .lengthMismatch(declared: declared, actual: bytes.count) }
        let digits = Int(bytes.u16(6))
        guard IMEI.acceptedLengths.contains(digits) else { throw .badIMEI(.length(digits)) }
        let dataOffset = Self.headerSize + digits
        guard bytes.count >= dataOffset else { throw .truncated(needed: dataOffset, available: bytes.count) }
        let imei = try IMEI.parseDigits(UnsafeRawBufferPointer(rebasing: bytes[Self.headerSize..<dataOffset]), offset: Self.headerSize)
        let dataLength = bytes.count - dataOffset
        guard dataLength <= maxDataLength else { throw .tooLarge(declared: UInt32(dataLength), limit: maxDataLength) }
        guard dataLength >= 1 else { throw .malformedRecord(index: 0, offset: dataOffset, reason: .overrun) }
        let codecByte = bytes.u8(dataOffset)
        guard let codec = AVLCodec(rawValue: codecByte) else { throw .unsupportedCodec(codecByte) }
        self.packet = try AVLPacketView(dataArray: bytes, at: dataOffset, length: dataLength, codec: codec)
        self.packetID = bytes.u16(2)
        self.notUsable = bytes.u8(4)
        self.avlPacketID = bytes.u8(5)
        self.imei = imei
        self.dataOffset = dataOffset
    }

    /// Decodes `bytes` as one datagram, calling `body` while the views it holds are valid.
    public static func withDecoded<R>(
        _ bytes: [UInt8],
        maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength,
        _ body: (UDPDatagramView) -> R
    ) throws(Codec8Error) -> R {
        try withBytes(bytes) { (raw) throws(Codec8Error) in body(try UDPDatagramView(datagram: raw, maxDataLength: maxDataLength)) }
    }

    /// Whether `bytes` look like a UDP datagram rather than a TCP frame or login: the length field
    /// counts the rest, the IMEI length field is 15 or 16 and at least a minimal data array follows.
    /// A TCP packet starts with `00 00 00 00`; a login's length covers only its digits.
    public static func looksLikeDatagram(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count >= headerSize + IMEI.acceptedLengths.lowerBound + 3 else { return false }
        return Int(bytes.u16(0)) == bytes.count - 2 && IMEI.acceptedLengths.contains(Int(bytes.u16(6)))
    }

    /// The datagram a device sends: the UDP headers around an AVL data array (codec ID through NoD2).
    public static func encode(packetID: UInt16, avlPacketID: UInt8, imei: IMEI, avlData: some Collection<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(headerSize + imei.digitCount + avlData.count)
        out.appendBE(UInt16(truncatingIfNeeded: 6 + imei.digitCount + avlData.count))
        out.appendBE(packetID)
        out.append(0x01)
        out.append(avlPacketID)
        out.appendBE(UInt16(imei.digitCount))
        imei.appendDigits(to: &out)
        out.append(contentsOf: avlData)
        return out
    }
}

/// The server's answer to a UDP datagram: its packet IDs and how many records were accepted.
public struct UDPAck: Equatable, Sendable {
    public var packetID: UInt16
    public var avlPacketID: UInt8
    public var acceptedRecords: UInt8

    public init(packetID: UInt16, avlPacketID: UInt8, acceptedRecords: UInt8) {
        self.packetID = packetID
        self.avlPacketID = avlPacketID
        self.acceptedRecords = acceptedRecords
    }

    /// Reads an ACK: exactly 7 bytes with length field 5. The not-usable byte is not checked.
    public init?(_ bytes: some Collection<UInt8>) {
        let b = Array(bytes)
        guard b.count == 7, b[0] == 0, b[1] == 5 else { return nil }
        self.packetID = UInt16(b[2]) << 8 | UInt16(b[3])
        self.avlPacketID = b[5]
        self.acceptedRecords = b[6]
    }

    /// `00 05 <packet id> 01 <AVL packet id> <accepted>`.
    public var bytes: [UInt8] {
        [0x00, 0x05, UInt8(packetID >> 8), UInt8(packetID & 0xFF), 0x01, avlPacketID, acceptedRecords]
    }
}
