/// A GPRS command or message frame: Codec 12, 13, 14 or 15. Never ACKed by the server.
///
/// ```
/// +----------+-------+-------+------+------+--------+-----------------------------+------+-------+
/// | 00000000 | u32 L | codec | qty1 | type | u32 N  | N bytes (see below)         | qty2 | CRC   |
/// +----------+-------+-------+------+------+--------+-----------------------------+------+-------+
///   12: text            13: u32 time (s), data     14: 8-byte IMEI, text     15: u32 time, IMEI, data
/// ```
/// The IMEI inside Codec 14/15 is packed as 16 hex digits, left-padded with a zero.
public struct DeviceMessage: Sendable, Equatable {
    /// The message codecs.
    public enum Codec: UInt8, Sendable, CaseIterable {
        case codec12 = 0x0C
        case codec13 = 0x0D
        case codec14 = 0x0E
        case codec15 = 0x0F

        /// `12`, `13`, `14` or `15`.
        public var name: String { String(rawValue) }

        /// Bytes of fixed fields before the payload: timestamp and/or IMEI.
        var prefixSize: Int {
            switch self {
            case .codec12: 0
            case .codec13: 4
            case .codec14: 8
            case .codec15: 12
            }
        }
    }

    /// Command type 0x05 (server to device).
    public static let typeCommand: UInt8 = 0x05
    /// Response type 0x06 (device to server; ACK for Codec 14).
    public static let typeResponse: UInt8 = 0x06
    /// Codec 14 nACK: the IMEI did not match.
    public static let typeNotAcknowledged: UInt8 = 0x11

    public var codec: Codec
    /// 0x05 command, 0x06 response, 0x11 nACK, or other (Codec 13/15 data types).
    public var type: UInt8
    /// Codec 14/15: the IMEI the frame carries, as digits (the padding zero of 16-digit packing removed).
    public var imei: String?
    /// Codec 13/15: UNIX time in seconds.
    public var timestampSeconds: UInt32?
    /// The command, response text or data, after the fixed fields.
    public var payload: [UInt8]

    public init(codec: Codec, type: UInt8, imei: String? = nil, timestampSeconds: UInt32? = nil, payload: [UInt8]) {
        self.codec = codec
        self.type = type
        self.imei = imei
        self.timestampSeconds = timestampSeconds
        self.payload = payload
    }

    /// The payload as text when it is printable ASCII/UTF-8 (tabs, CR and LF allowed); otherwise nil.
    public var text: String? {
        guard let s = String(validating: payload, as: UTF8.self) else { return nil }
        for u in s.unicodeScalars where u.value < 0x20 && u != "\t" && u != "\r" && u != "\n" { return nil }
        return s
    }

    /// Decodes a message frame whose envelope was checked; `dataLength` is `L`.
    init(validatedEnvelope frame: UnsafeRawBufferPointer, codec: Codec, dataLength: Int) throws(Codec8Error) {
        // codec, qty1, type, u32 N, qty2: 8 bytes around the payload.
        guard dataLength >= 8 else { throw .malformedRecord(index: 0, offset: 8, reason: .overrun) }
        let size = Int(frame.u32(11))
        guard size == dataLength - 8 else { throw .lengthMismatch(declared: size + 8, actual: dataLength) }
        guard size >= codec.prefixSize else {
            throw .malformedRecord(index: 0, offset: 15, reason: .payloadTooShort(codec: codec.rawValue, size: size))
        }
        self.codec = codec
        self.type = frame.u8(10)
        var o = 15
        if codec == .codec13 || codec == .codec15 {
            timestampSeconds = frame.u32(o)
            o += 4
        }
        if codec == .codec14 || codec == .codec15 {
            imei = DeviceMessage.unpackIMEI(UnsafeRawBufferPointer(rebasing: frame[o..<(o + 8)]))
            o += 8
        }
        payload = Array(UnsafeRawBufferPointer(rebasing: frame[o..<(15 + size)]))
    }

    /// 8 bytes of packed hex digits to an IMEI string (one padding zero dropped from 16 digits).
    static func unpackIMEI(_ b: UnsafeRawBufferPointer) -> String {
        var digits: [UInt8] = []
        for byte in b {
            digits.append(hexDigit(byte >> 4))
            digits.append(hexDigit(byte & 0xF))
        }
        if digits.first == 0x30 { digits.removeFirst() }
        return String(decoding: digits, as: UTF8.self)
    }

    /// Packs IMEI digits into 8 bytes, left-padded with zero to 16 digits.
    static func packIMEI(_ imei: IMEI) -> [UInt8] {
        var digits = imei.digits.map { $0 - 0x30 }
        while digits.count < 16 { digits.insert(0, at: 0) }
        return stride(from: 0, to: 16, by: 2).map { digits[$0] << 4 | digits[$0 + 1] }
    }

    /// Encodes this message as a complete frame (CRC included).
    public func encoded() -> [UInt8] {
        var body: [UInt8] = []
        if let t = timestampSeconds, codec == .codec13 || codec == .codec15 { body.appendBE(t) }
        if codec == .codec14 || codec == .codec15 {
            body.append(contentsOf: imei.flatMap(IMEI.init).map(DeviceMessage.packIMEI) ?? [UInt8](repeating: 0, count: 8))
        }
        body.append(contentsOf: payload)
        var out: [UInt8] = []
        out.appendBE(UInt32(0))
        out.appendBE(UInt32(body.count + 8))
        out.append(codec.rawValue)
        out.append(1)
        out.append(type)
        out.appendBE(UInt32(body.count))
        out.append(contentsOf: body)
        out.append(1)
        let crc = out.withUnsafeBytes { CRC16IBM.checksum(UnsafeRawBufferPointer(rebasing: $0[8...])) }
        out.appendBE(UInt32(crc))
        return out
    }

    /// A Codec 12 command frame (e.g. `getinfo`, `setdigout 1`).
    public static func codec12Command(_ command: String) -> [UInt8] {
        DeviceMessage(codec: .codec12, type: typeCommand, payload: Array(command.utf8)).encoded()
    }

    /// A Codec 14 command frame, executed only by the device whose IMEI matches.
    public static func codec14Command(_ command: String, imei: IMEI) -> [UInt8] {
        DeviceMessage(codec: .codec14, type: typeCommand, imei: imei.description, payload: Array(command.utf8)).encoded()
    }

    /// Appends this message's JSON members, without braces:
    /// `"codec":"12","type":6[,"imei":"…"][,"timestamp":"…"][,"text":"…"],"payload_hex":"…"`.
    /// The `decode` output and the responses-stream payload share this form.
    public func appendJSONMembers(to out: inout [UInt8]) {
        JSONText.appendRaw("\"codec\":", to: &out)
        JSONText.appendString(codec.name, to: &out)
        JSONText.appendRaw(",\"type\":", to: &out)
        JSONText.appendDecimal(UInt64(type), to: &out)
        if let imei {
            JSONText.appendRaw(",\"imei\":", to: &out)
            JSONText.appendString(imei, to: &out)
        }
        if let timestampSeconds {
            JSONText.appendRaw(",\"timestamp\":", to: &out)
            JSONText.appendISO8601(milliseconds: UInt64(timestampSeconds) * 1000, to: &out)
        }
        if let text {
            JSONText.appendRaw(",\"text\":", to: &out)
            JSONText.appendString(text, to: &out)
        }
        JSONText.appendRaw(",\"payload_hex\":", to: &out)
        JSONText.appendString(Hex.encode(payload), to: &out)
    }
}
