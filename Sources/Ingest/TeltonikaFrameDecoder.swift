/// The device stream's framing as a NIO decoder: the one the session handler drives and NIO's verifier checks.
import Codec8
import NIOCore

/// Cuts a device connection's bytes into logins, keep-alives and packet frames, zero-copy.
///
/// A thin NIO adapter over ``Codec8/TeltonikaFrameCutter`` (all protocol rules live in
/// ``Codec8/TeltonikaFramer``). ``DeviceSessionHandler`` drives it itself, one frame at a time, so it
/// can stop between frames while one is in flight; `ByteToMessageDecoderVerifier` checks this same
/// decoder. Starts in login mode; after the login frame it expects packets (a rejected login closes
/// the connection, so no other path exists). The framer rejects a declared length above the cap as
/// soon as the 8-byte header is buffered. Errors are ``Codec8/Codec8Error`` values.
public struct TeltonikaFrameDecoder: NIOSingleStepByteToMessageDecoder {
    /// One unit cut from the stream.
    public enum Frame: Equatable, Sendable {
        /// The login: 2-byte length and IMEI digits (parse with ``Codec8/IMEI/parseLogin(_:)``).
        case login(ByteBuffer)
        /// One keep-alive byte 0xFF.
        case keepAlive
        /// A complete packet frame, preamble through CRC.
        case packet(ByteBuffer)
    }

    public typealias InboundOut = Frame

    private var cutter: TeltonikaFrameCutter

    /// - Parameters:
    ///   - maxDataLength: the largest accepted data-field length (`MAX_FRAME_BYTES`).
    ///   - mode: `.login` for a device connection; `.packets` for a stream known to be past its login.
    public init(maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength, startingIn mode: TeltonikaFramer.Mode = .login) {
        cutter = TeltonikaFrameCutter(maxDataLength: maxDataLength, startingIn: mode)
    }

    /// The next unit, or nil when more bytes are needed. Nothing is consumed on an error.
    public mutating func decode(buffer: inout ByteBuffer) throws(Codec8Error) -> Frame? {
        let cut = try buffer.withUnsafeReadableBytes { (bytes) throws(Codec8Error) in try cutter.next(bytes) }
        switch cut {
        case .needMore:
            return nil
        case .keepAlive:
            buffer.moveReaderIndex(forwardBy: 1)
            return .keepAlive
        case .login(let length):
            return .login(buffer.readSlice(length: length)!)
        case .frame(let length):
            return .packet(buffer.readSlice(length: length)!)
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(Codec8Error) -> Frame? {
        try decode(buffer: &buffer)
    }
}

@available(*, unavailable)
extension TeltonikaFrameDecoder: Sendable {}
