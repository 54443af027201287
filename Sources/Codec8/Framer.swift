/// Cuts a Teltonika TCP byte stream into frames, for a bounded buffered reader.
///
/// ```
///  login (mode .login)          packet (mode .packets)
/// +-------+-------------+      +----------+---------+---------------------------+-----------+
/// | u16 n | n digits    |      | 00000000 | u32 L   | L bytes: codec ... NoD2   | u32 CRC   |
/// +-------+-------------+      +----------+---------+---------------------------+-----------+
///                               or a single 0xFF keep-alive byte where a packet could start
/// ```
///
/// The framer only looks: it never consumes or copies. Give it the bytes buffered so far; it answers
/// ``Decision/needMore(_:)`` (at least that many more bytes are needed), ``Decision/keepAlive``
/// (consume one byte), ``Decision/frame(length:)`` (the first `length` bytes are one whole frame), or
/// throws. It rejects bad bytes as early as they can be seen: a non-zero preamble byte at once, a
/// declared length above ``maxDataLength`` as soon as the 8-byte header is present, before any body
/// is buffered. So a reader that follows it never holds more than `maxDataLength + 12` bytes.
public struct TeltonikaFramer: Sendable, Equatable {
    /// What the next bytes of the stream are expected to be.
    public enum Mode: Sendable, Equatable {
        /// The IMEI login, the first frame of a connection.
        case login
        /// AVL packets, device messages and keep-alive bytes, after the login was accepted.
        case packets
    }

    /// The framer's answer for the bytes buffered so far.
    public enum Decision: Sendable, Equatable {
        /// Nothing can be cut yet: no frame or keep-alive is complete before at least this many more
        /// bytes arrive (an error may be seen sooner, e.g. a bad preamble byte).
        case needMore(Int)
        /// The first byte is a keep-alive (0xFF): consume it.
        case keepAlive
        /// The first `length` bytes are one complete frame.
        case frame(length: Int)
    }

    /// The largest accepted data-field length `L` (codec ID through Number of Data 2).
    public var maxDataLength: Int

    /// The default cap: 16 KiB, over twelve times the largest packet any documented device sends
    /// (1280 bytes). What many slow connections may buffer in all is the server's concern (`MAX_BUFFERED_BYTES`).
    public static let defaultMaxDataLength = 16 * 1024

    /// Bytes around the data field: preamble, length and CRC fields.
    public static let overhead = 12

    /// The keep-alive byte a device sends when its link is idle.
    public static let keepAliveByte: UInt8 = 0xFF

    public init(maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength) {
        self.maxDataLength = maxDataLength
    }

    /// Decides what the start of `bytes` is.
    public func next(_ bytes: UnsafeRawBufferPointer, mode: Mode) throws(Codec8Error) -> Decision {
        switch mode {
        case .login: return try nextLogin(bytes)
        case .packets: return try nextPacket(bytes)
        }
    }

    /// Decides what the start of `bytes` is.
    public func next(_ bytes: [UInt8], mode: Mode) throws(Codec8Error) -> Decision {
        try withBytes(bytes) { (raw) throws(Codec8Error) in try next(raw, mode: mode) }
    }

    private func nextLogin(_ bytes: UnsafeRawBufferPointer) throws(Codec8Error) -> Decision {
        guard bytes.count >= 2 else { return .needMore(2 - bytes.count) }
        let n = Int(bytes.u16(0))
        guard IMEI.acceptedLengths.contains(n) else { throw .badIMEI(.length(n)) }
        return bytes.count >= 2 + n ? .frame(length: 2 + n) : .needMore(2 + n - bytes.count)
    }

    private func nextPacket(_ bytes: UnsafeRawBufferPointer) throws(Codec8Error) -> Decision {
        guard bytes.count > 0 else { return .needMore(1) }
        if bytes.u8(0) == TeltonikaFramer.keepAliveByte { return .keepAlive }
        for i in 0..<min(4, bytes.count) where bytes.u8(i) != 0 {
            throw .badPreamble(offset: i, byte: bytes.u8(i))
        }
        guard bytes.count >= 8 else { return .needMore(8 - bytes.count) }
        let declared = bytes.u32(4)
        guard UInt64(declared) <= UInt64(maxDataLength) else {
            throw .tooLarge(declared: declared, limit: maxDataLength)
        }
        let total = Int(declared) + TeltonikaFramer.overhead
        return bytes.count >= total ? .frame(length: total) : .needMore(total - bytes.count)
    }
}
