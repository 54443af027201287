/// A complete frame from the packet stream, decoded.
public enum TeltonikaFrame {
    /// An AVL data packet (Codec 8, 8E, 16): ACK its ``AVLPacketView/recordCount``.
    case avl(AVLPacketView)
    /// A command, response or device message (Codec 12, 13, 14, 15): never ACKed.
    case message(DeviceMessage)

    /// Decodes one complete frame (exactly the bytes from preamble through CRC).
    ///
    /// Checks run in the order of the error categories: length (truncated, too large, mismatch),
    /// preamble, CRC, then the body (record counts, record structure), and only then rejects an
    /// unknown codec, so a corrupted frame is reported as corrupt rather than as a strange codec.
    public static func parse(
        _ frame: UnsafeRawBufferPointer,
        maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength
    ) throws(Codec8Error) -> TeltonikaFrame {
        let dataLength = try checkFrameEnvelope(frame, maxDataLength: maxDataLength)
        let codecByte = frame.u8(8)
        if let codec = AVLCodec(rawValue: codecByte) {
            return .avl(try AVLPacketView(validatedEnvelope: frame, codec: codec, dataLength: dataLength))
        }
        if let codec = DeviceMessage.Codec(rawValue: codecByte) {
            return .message(try DeviceMessage(validatedEnvelope: frame, codec: codec, dataLength: dataLength))
        }
        throw .unsupportedCodec(codecByte)
    }
}

/// Any one unit of the device protocol seen on its own, as a captured line holds it.
public enum StandaloneFrame {
    /// The keep-alive byte 0xFF.
    case keepAlive
    /// An IMEI login.
    case login(IMEI)
    /// A packet frame.
    case frame(TeltonikaFrame)

    /// Decodes `bytes` as exactly one login, keep-alive or frame.
    ///
    /// A single 0xFF is a keep-alive; bytes that do not start with `00 00` are a login (a login's
    /// length is never 0); anything else is a packet frame. Bytes missing are `truncated`, bytes left
    /// over are `length_mismatch`.
    public static func decode(
        _ bytes: UnsafeRawBufferPointer,
        maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength
    ) throws(Codec8Error) -> StandaloneFrame {
        if bytes.count == 1 && bytes.u8(0) == TeltonikaFramer.keepAliveByte { return .keepAlive }
        let isLogin = bytes.count >= 2 && (bytes.u8(0) != 0 || bytes.u8(1) != 0)
        guard isLogin else { return .frame(try TeltonikaFrame.parse(bytes, maxDataLength: maxDataLength)) }
        let framer = TeltonikaFramer(maxDataLength: maxDataLength)
        switch try framer.next(bytes, mode: .login) {
        case .needMore(let n): throw .truncated(needed: bytes.count + n, available: bytes.count)
        case .keepAlive: throw .badIMEI(.length(Int(bytes.u16(0))))
        case .frame(let length) where length != bytes.count:
            throw .lengthMismatch(declared: length, actual: bytes.count)
        case .frame: return .login(try IMEI.parseLogin(bytes))
        }
    }

    /// Decodes `bytes` as exactly one login, keep-alive or frame, calling `body` with the result while
    /// the views it holds are valid.
    public static func withDecoded<R>(
        _ bytes: [UInt8],
        maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength,
        _ body: (StandaloneFrame) -> R
    ) throws(Codec8Error) -> R {
        try withBytes(bytes) { (raw) throws(Codec8Error) in body(try decode(raw, maxDataLength: maxDataLength)) }
    }
}
