/// A device identity from the login frame: 15 (IMEI) or 16 (IMEISV) ASCII digits.
///
/// ```
/// +--------+---------------------------+
/// | u16 n  | n ASCII digits '0'...'9'  |     reply 0x01 accept / 0x00 reject
/// +--------+---------------------------+
/// ```
///
/// Accepted: 15 digits (the normal IMEI) and 16 digits (IMEISV, and the 16-digit form Codec 14/15 carry).
/// No Luhn check: test benches, simulators and some modems send IMEIs that fail it, and refusing them
/// only makes the device retry forever. Everything else (other lengths, any non-digit) is `bad_imei`.
/// Leading zeros are kept: the identity is the digit string, not a number.
public struct IMEI: Hashable, Sendable, CustomStringConvertible {
    /// Digit counts a login may carry.
    public static let acceptedLengths: ClosedRange<Int> = 15...16

    /// The digits, as a number; with ``digitCount`` it restores leading zeros.
    public let value: UInt64
    /// How many digits the device sent (15 or 16).
    public let digitCount: Int

    /// Makes an IMEI from a digit string (for configuration, tools and tests).
    public init?(_ text: some StringProtocol) {
        let bytes = Array(text.utf8)
        guard let imei = try? withBytes(bytes, { (raw) throws(Codec8Error) in try IMEI.parseDigits(raw, offset: 0) })
        else { return nil }
        self = imei
    }

    init(value: UInt64, digitCount: Int) {
        self.value = value
        self.digitCount = digitCount
    }

    /// The digit string, with leading zeros.
    public var description: String { String(decoding: digits, as: UTF8.self) }

    /// The digits as ASCII bytes.
    public var digits: [UInt8] {
        var out = [UInt8](repeating: 0x30, count: digitCount)
        appendDigits(into: &out, at: 0)
        return out
    }

    /// Writes the ASCII digits to `out` (which must have room) starting at `start`.
    @inlinable
    public func appendDigits(to out: inout [UInt8]) {
        let start = out.count
        out.append(contentsOf: repeatElement(0x30, count: digitCount))
        appendDigits(into: &out, at: start)
    }

    @usableFromInline
    func appendDigits(into out: inout [UInt8], at start: Int) {
        var v = value
        var i = start + digitCount - 1
        while i >= start {
            out[i] = 0x30 + UInt8(v % 10)
            v /= 10
            i -= 1
        }
    }

    /// Parses a complete login frame: the 2-byte length followed by exactly that many digits.
    public static func parseLogin(_ frame: UnsafeRawBufferPointer) throws(Codec8Error) -> IMEI {
        guard frame.count >= 2 else { throw .truncated(needed: 2, available: frame.count) }
        let n = Int(frame.u16(0))
        guard acceptedLengths.contains(n) else { throw .badIMEI(.length(n)) }
        guard frame.count >= 2 + n else { throw .truncated(needed: 2 + n, available: frame.count) }
        guard frame.count == 2 + n else { throw .lengthMismatch(declared: 2 + n, actual: frame.count) }
        return try parseDigits(UnsafeRawBufferPointer(rebasing: frame[2...]), offset: 2)
    }

    /// Parses a login frame held in any byte collection.
    public static func parseLogin(_ frame: [UInt8]) throws(Codec8Error) -> IMEI {
        try withBytes(frame) { (raw) throws(Codec8Error) in try parseLogin(raw) }
    }

    static func parseDigits(_ digits: UnsafeRawBufferPointer, offset: Int) throws(Codec8Error) -> IMEI {
        guard acceptedLengths.contains(digits.count) else { throw .badIMEI(.length(digits.count)) }
        var v: UInt64 = 0
        for i in 0..<digits.count {
            let b = digits[i]
            guard b >= 0x30, b <= 0x39 else { throw .badIMEI(.nonDigit(offset: offset + i, byte: b)) }
            v = v * 10 + UInt64(b - 0x30)
        }
        return IMEI(value: v, digitCount: digits.count)
    }

    /// The login frame a device sends for this IMEI.
    public var loginFrame: [UInt8] {
        var out: [UInt8] = []
        out.appendBE(UInt16(digitCount))
        appendDigits(to: &out)
        return out
    }
}

/// Runs `body` over the bytes of an array with a typed error.
@inlinable
func withBytes<R>(
    _ bytes: [UInt8],
    _ body: (UnsafeRawBufferPointer) throws(Codec8Error) -> R
) throws(Codec8Error) -> R {
    let result: Result<R, Codec8Error> = bytes.withUnsafeBytes { raw in
        do throws(Codec8Error) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try result.get()
}
