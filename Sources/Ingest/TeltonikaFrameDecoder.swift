import Codec8
import NIOCore

/// Cuts a device connection's bytes into logins, keep-alives and packet frames, zero-copy.
///
/// A thin NIO adapter over ``Codec8/TeltonikaFramer``: all protocol rules live there. Starts in login
/// mode; after it has produced the login frame it expects packets (a rejected login closes the
/// connection, so no other path exists). The framer rejects a declared length above the cap as
/// soon as the 8-byte header is buffered, so a connection never holds more than `maxDataLength + 12`
/// bytes of one frame. Errors are ``Codec8/Codec8Error`` values, thrown into the pipeline.
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

    private var mode: TeltonikaFramer.Mode
    private let framer: TeltonikaFramer

    /// - Parameters:
    ///   - maxDataLength: the largest accepted data-field length (`MAX_FRAME_BYTES`).
    ///   - mode: `.login` for a device connection; `.packets` for a stream known to be past its login.
    public init(maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength, startingIn mode: TeltonikaFramer.Mode = .login) {
        framer = TeltonikaFramer(maxDataLength: maxDataLength)
        self.mode = mode
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        let decision = try buffer.withUnsafeReadableBytes { (bytes) throws(Codec8Error) in
            try framer.next(bytes, mode: mode)
        }
        switch decision {
        case .needMore:
            return nil
        case .keepAlive:
            buffer.moveReaderIndex(forwardBy: 1)
            return .keepAlive
        case .frame(let length):
            let slice = buffer.readSlice(length: length)!
            if mode == .login {
                mode = .packets
                return .login(slice)
            }
            return .packet(slice)
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        try decode(buffer: &buffer)
    }
}

@available(*, unavailable)
extension TeltonikaFrameDecoder: Sendable {}
