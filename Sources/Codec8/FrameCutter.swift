/// The one framing loop every reader of a device stream shares: login first, then packets.

/// Cuts a device's TCP stream: its login first, then keep-alives, packets and device messages.
///
/// A thin state over ``TeltonikaFramer`` (which holds every rule): it remembers that the login came,
/// so callers only look at what it cut. The server's session (through the NIO decoder built on it),
/// `replay`, the ack server and the tests all cut with it; it only looks, it never consumes.
public struct TeltonikaFrameCutter: Sendable, Equatable {
    /// What the start of the bytes is.
    public enum Cut: Sendable, Equatable {
        /// Nothing can be cut before at least this many more bytes arrive.
        case needMore(Int)
        /// One keep-alive byte (0xFF): consume it.
        case keepAlive
        /// The first `length` bytes are the login (2-byte length and IMEI digits).
        case login(length: Int)
        /// The first `length` bytes are one packet or device message frame, preamble through CRC.
        case frame(length: Int)
    }

    public let framer: TeltonikaFramer
    /// `.login` until the login has been cut, then `.packets`.
    public private(set) var mode: TeltonikaFramer.Mode

    /// - Parameters:
    ///   - maxDataLength: the largest accepted data-field length (`MAX_FRAME_BYTES`).
    ///   - mode: `.login` for a device connection; `.packets` for a stream known to be past its login.
    public init(maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength, startingIn mode: TeltonikaFramer.Mode = .login) {
        framer = TeltonikaFramer(maxDataLength: maxDataLength)
        self.mode = mode
    }

    /// Decides what the start of `bytes` is; after the login it expects packets.
    public mutating func next(_ bytes: UnsafeRawBufferPointer) throws(Codec8Error) -> Cut {
        switch try framer.next(bytes, mode: mode) {
        case .needMore(let n):
            return .needMore(n)
        case .keepAlive:
            return .keepAlive
        case .frame(let length):
            guard mode == .login else { return .frame(length: length) }
            mode = .packets
            return .login(length: length)
        }
    }

    /// Decides what the start of `bytes` is; after the login it expects packets.
    public mutating func next(_ bytes: [UInt8]) throws(Codec8Error) -> Cut {
        try withBytes(bytes) { (raw) throws(Codec8Error) in try next(raw) }
    }
}
