/// Small JSON writing primitives that append UTF-8 bytes to a reused buffer. No Foundation, no allocation
/// beyond the buffer's own growth.
public enum JSONText {
    /// Appends the decimal digits of `v`.
    @inlinable
    public static func appendDecimal(_ v: UInt64, to out: inout [UInt8]) {
        if v < 10 {
            out.append(0x30 &+ UInt8(truncatingIfNeeded: v))
            return
        }
        var digits = 1
        var t = v
        while t >= 10 {
            t /= 10
            digits &+= 1
        }
        let start = out.count
        out.append(contentsOf: repeatElement(0x30, count: digits))
        out.withUnsafeMutableBufferPointer { buf in
            var x = v
            var i = start &+ digits &- 1
            while x > 0 {
                buf[i] = 0x30 &+ UInt8(truncatingIfNeeded: x % 10)
                x /= 10
                i &-= 1
            }
        }
    }

    /// Appends the decimal digits of a signed value.
    @inlinable
    public static func appendDecimal(_ v: Int64, to out: inout [UInt8]) {
        if v < 0 { out.append(UInt8(ascii: "-")) }
        appendDecimal(v.magnitude, to: &out)
    }

    /// Appends `e7 / 10^7` exactly, in the shortest decimal form: `0`, `54.7146368`, `-0.5`.
    @inlinable
    public static func appendE7(_ e7: Int32, to out: inout [UInt8]) {
        if e7 < 0 { out.append(UInt8(ascii: "-")) }
        let m = UInt64(e7.magnitude)
        appendDecimal(m / 10_000_000, to: &out)
        var frac = m % 10_000_000
        guard frac != 0 else { return }
        out.append(UInt8(ascii: "."))
        var width = 7
        while frac % 10 == 0 {
            frac /= 10
            width &-= 1
        }
        var pad = width
        var t = frac
        while t >= 10 {
            t /= 10
            pad &-= 1
        }
        for _ in 1..<pad { out.append(0x30) }
        appendDecimal(frac, to: &out)
    }

    /// The largest timestamp written as a date: 8.64e15 ms (+275760-09-13), the limit of JavaScript's `Date`.
    public static let maxISO8601Milliseconds: UInt64 = 8_640_000_000_000_000

    /// Appends a quoted ISO-8601 UTC time with milliseconds (`"2019-06-10T10:04:46.000Z"`), or `null`
    /// when `ms` is past ``maxISO8601Milliseconds``. Years after 9999 use the expanded form `+YYYYYY`,
    /// as JavaScript's `toISOString` does.
    @inlinable
    public static func appendISO8601(milliseconds ms: UInt64, to out: inout [UInt8]) {
        guard ms <= maxISO8601Milliseconds else {
            appendRaw("null", to: &out)
            return
        }
        let days = Int64(ms / 86_400_000)
        let msOfDay = Int(ms % 86_400_000)
        // Civil date from day count (H. Hinnant's algorithm; days >= 0 here).
        let z = days + 719_468
        let era = z / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = Int(doy - (153 * mp + 2) / 5 + 1)
        let month = Int(mp < 10 ? mp + 3 : mp - 9)
        let year = Int(yoe + era * 400) + (month <= 2 ? 1 : 0)

        out.append(UInt8(ascii: "\""))
        if year > 9999 {
            out.append(UInt8(ascii: "+"))
            appendPadded(year, width: 6, to: &out)
        } else {
            appendPadded(year, width: 4, to: &out)
        }
        out.append(UInt8(ascii: "-"))
        appendPadded(month, width: 2, to: &out)
        out.append(UInt8(ascii: "-"))
        appendPadded(day, width: 2, to: &out)
        out.append(UInt8(ascii: "T"))
        appendPadded(msOfDay / 3_600_000, width: 2, to: &out)
        out.append(UInt8(ascii: ":"))
        appendPadded(msOfDay / 60_000 % 60, width: 2, to: &out)
        out.append(UInt8(ascii: ":"))
        appendPadded(msOfDay / 1000 % 60, width: 2, to: &out)
        out.append(UInt8(ascii: "."))
        appendPadded(msOfDay % 1000, width: 3, to: &out)
        out.append(UInt8(ascii: "Z"))
        out.append(UInt8(ascii: "\""))
    }

    @inlinable
    static func appendPadded(_ v: Int, width: Int, to out: inout [UInt8]) {
        var divisor = 1
        for _ in 1..<width { divisor &*= 10 }
        var x = v
        while divisor > 0 {
            out.append(0x30 &+ UInt8(truncatingIfNeeded: x / divisor))
            x %= divisor
            divisor /= 10
        }
    }

    /// Appends standard base64 (RFC 4648, with padding) of `bytes`.
    public static func appendBase64(_ bytes: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        base64Alphabet.withUnsafeBufferPointer { a in
            var i = 0
            let n = bytes.count
            while n - i >= 3 {
                let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
                out.append(a[Int(v >> 18)])
                out.append(a[Int((v >> 12) & 63)])
                out.append(a[Int((v >> 6) & 63)])
                out.append(a[Int(v & 63)])
                i += 3
            }
            if n - i == 1 {
                let v = UInt32(bytes[i]) << 16
                out.append(a[Int(v >> 18)])
                out.append(a[Int((v >> 12) & 63)])
                out.append(contentsOf: [0x3D, 0x3D])
            } else if n - i == 2 {
                let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
                out.append(a[Int(v >> 18)])
                out.append(a[Int((v >> 12) & 63)])
                out.append(a[Int((v >> 6) & 63)])
                out.append(0x3D)
            }
        }
    }

    /// Appends `s` as a quoted JSON string, escaping quotes, backslashes and control characters.
    public static func appendString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
            case UInt8(ascii: "\n"): out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case UInt8(ascii: "\r"): out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case UInt8(ascii: "\t"): out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20, 0x7F:
                out.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30])
                out.append(hexDigit(b >> 4))
                out.append(hexDigit(b & 0xF))
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Appends raw ASCII text (for keys and fixed punctuation).
    @inlinable
    public static func appendRaw(_ s: StaticString, to out: inout [UInt8]) {
        s.withUTF8Buffer { out.append(contentsOf: $0) }
    }
}

let base64Alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
