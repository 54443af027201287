/// Small JSON writing primitives that append UTF-8 bytes to a reused buffer. No Foundation, no allocation
/// beyond the buffer's own growth.
///
/// Each helper formats into a small stack buffer with ``JSONWriter`` and appends it to `out` in one call.
public enum JSONText {
    /// Appends the decimal digits of `v`.
    @inlinable
    public static func appendDecimal(_ v: UInt64, to out: inout [UInt8]) {
        if v < 10 {
            out.append(0x30 &+ UInt8(truncatingIfNeeded: v))
            return
        }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { buf in
            var w = JSONWriter(buf.baseAddress!)
            w.decimal(v)
            out.append(contentsOf: w.written)
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
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 16) { buf in
            var w = JSONWriter(buf.baseAddress!)
            w.e7(e7)
            out.append(contentsOf: w.written)
        }
    }

    /// The largest timestamp written as a date: 8.64e15 ms (+275760-09-13), the limit of JavaScript's `Date`.
    public static let maxISO8601Milliseconds: UInt64 = 8_640_000_000_000_000

    /// Appends a quoted ISO-8601 UTC time with milliseconds (`"2019-06-10T10:04:46.000Z"`), or `null`
    /// when `ms` is past ``maxISO8601Milliseconds``. Years after 9999 use the expanded form `+YYYYYY`,
    /// as JavaScript's `toISOString` does.
    @inlinable
    public static func appendISO8601(milliseconds ms: UInt64, to out: inout [UInt8]) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { buf in
            var w = JSONWriter(buf.baseAddress!)
            w.iso8601(milliseconds: ms)
            out.append(contentsOf: w.written)
        }
    }

    /// Appends standard base64 (RFC 4648, with padding) of `bytes`.
    public static func appendBase64(_ bytes: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        // 192 input bytes (a multiple of 3) make 256 output bytes; only the last chunk can pad.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 256) { buf in
            var start = 0
            repeat {
                let end = min(start &+ 192, bytes.count)
                var w = JSONWriter(buf.baseAddress!)
                w.base64(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                out.append(contentsOf: w.written)
                start = end
            } while start < bytes.count
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

/// Writes JSON text through a raw pointer into memory the caller has already sized: no bounds or
/// uniqueness checks per byte. The caller guarantees room for everything it writes (each method
/// documents its maximum). `count` is the number of bytes written so far.
@usableFromInline
struct JSONWriter {
    @usableFromInline let base: UnsafeMutablePointer<UInt8>
    @usableFromInline var count: Int

    @inlinable @inline(__always)
    init(_ base: UnsafeMutablePointer<UInt8>) {
        self.base = base
        self.count = 0
    }

    /// The bytes written so far.
    @inlinable @inline(__always)
    var written: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: base, count: count) }

    /// "00" "01" ... "99": the two ASCII digits of n at offset 2n (static data, no initialisation).
    @inlinable @inline(__always)
    static var digitPairs: UnsafePointer<UInt8> {
        let table: StaticString = """
            0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899
            """
        return table.utf8Start
    }

    /// The RFC 4648 base64 alphabet (static data).
    @inlinable @inline(__always)
    static var base64Alphabet: UnsafePointer<UInt8> {
        let table: StaticString = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        return table.utf8Start
    }

    @inlinable @inline(__always)
    mutating func byte(_ b: UInt8) {
        base[count] = b
        count &+= 1
    }

    /// Two bytes, `first` then `second`.
    @inlinable @inline(__always)
    mutating func bytes(_ first: UInt8, _ second: UInt8) {
        base[count] = first
        base[count &+ 1] = second
        count &+= 2
    }

    /// Raw ASCII text.
    @inlinable @inline(__always)
    mutating func raw(_ s: StaticString) {
        s.withUTF8Buffer { text in
            UnsafeMutableRawPointer(base + count).copyMemory(from: text.baseAddress!, byteCount: text.count)
            count &+= text.count
        }
    }

    /// The two digits of `n` (< 100) at `at`, leading zero kept.
    @inlinable @inline(__always)
    func storePair(_ n: UInt32, at: Int) {
        let pair = UnsafeRawPointer(JSONWriter.digitPairs + Int(truncatingIfNeeded: n &* 2))
            .loadUnaligned(as: UInt16.self)
        UnsafeMutableRawPointer(base + at).storeBytes(of: pair, as: UInt16.self)
    }

    /// Text packed in a word, as ``RecordJSONEncoder``'s tables hold it: up to 7 bytes from the lowest,
    /// their count in the top byte. One 8-byte store however short the text: the caller has 8 bytes of
    /// room at `count`, and what it writes next overwrites the bytes past the text.
    @inlinable @inline(__always)
    mutating func word(_ packed: UInt64) {
        UnsafeMutableRawPointer(base + count).storeBytes(of: packed.littleEndian, as: UInt64.self)
        count &+= Int(truncatingIfNeeded: packed &>> 56)
    }

    /// `text` (at most 7 ASCII bytes) packed for ``word(_:)``.
    static func packed(_ text: String) -> UInt64 {
        let bytes = Array(text.utf8)
        precondition(bytes.count <= 7, "JSONWriter.packed: more than 7 bytes")
        var packed = UInt64(bytes.count) &<< 56
        for (i, b) in bytes.enumerated() { packed |= UInt64(b) &<< UInt64(8 &* i) }
        return packed
    }

    /// The number of decimal digits of `v` (1 for 0).
    @inlinable @inline(__always)
    static func digitCount(_ v: UInt64) -> Int {
        if v < 100_000 {  // 1e5
            if v < 100 { return v < 10 ? 1 : 2 }
            if v < 10_000 { return v < 1_000 ? 3 : 4 }
            return 5
        }
        if v < 10_000_000_000 {  // 1e10
            if v < 10_000_000 { return v < 1_000_000 ? 6 : 7 }
            if v < 1_000_000_000 { return v < 100_000_000 ? 8 : 9 }
            return 10
        }
        if v < 1_000_000_000_000_000 {  // 1e15
            if v < 1_000_000_000_000 { return v < 100_000_000_000 ? 11 : 12 }
            if v < 100_000_000_000_000 { return v < 10_000_000_000_000 ? 13 : 14 }
            return 15
        }
        if v < 100_000_000_000_000_000 { return v < 10_000_000_000_000_000 ? 16 : 17 }  // 1e17, 1e16
        if v < 10_000_000_000_000_000_000 { return v < 1_000_000_000_000_000_000 ? 18 : 19 }  // 1e19, 1e18
        return 20
    }

    /// The decimal digits of `v`: at most 20 bytes.
    @inlinable @inline(__always)
    mutating func decimal(_ v: UInt64) {
        if v < 10 {
            byte(0x30 &+ UInt8(truncatingIfNeeded: v))
            return
        }
        digits(v, count: JSONWriter.digitCount(v))
    }

    /// The decimal digits of `v`, at most 5 bytes (any `UInt16`).
    @inlinable @inline(__always)
    mutating func decimal(_ v: UInt16) {
        if v < 10 {
            byte(0x30 &+ UInt8(truncatingIfNeeded: v))
        } else if v < 100 {
            storePair(UInt32(v), at: count)
            count &+= 2
        } else {
            let n = v < 1000 ? 3 : v < 10_000 ? 4 : 5
            digits32(UInt32(v), count: n, end: count &+ n)
            count &+= n
        }
    }

    /// The decimal digits of `v`: at most 10 bytes. The digits in 32-bit arithmetic (IO values of 4 bytes).
    @inlinable @inline(__always)
    mutating func decimal(_ v: UInt32) {
        let n = JSONWriter.digitCount(UInt64(v))
        digits32(v, count: n, end: count &+ n)
        count &+= n
    }

    /// The low `n` decimal digits of `v`, leading zeros kept: exactly `n` bytes. `v` < 10^n.
    @inlinable @inline(__always)
    mutating func digits(_ v: UInt64, count n: Int) {
        var x = v
        var end = count &+ n
        var left = n
        // Peel 8 digits at a time while x may exceed 32 bits; then 32-bit arithmetic.
        while left > 9 {
            digits32(UInt32(truncatingIfNeeded: x % 100_000_000), count: 8, end: end)
            x /= 100_000_000
            end &-= 8
            left &-= 8
        }
        digits32(UInt32(truncatingIfNeeded: x), count: left, end: end)
        count &+= n
    }

    /// The low `n` digits of `v` (n <= 10), leading zeros kept, in the `n` bytes before `end`.
    @inlinable @inline(__always)
    func digits32(_ v: UInt32, count n: Int, end: Int) {
        var x = v
        var j = end
        let start = end &- n
        while j &- start >= 2 {
            let r = x % 100
            x /= 100
            j &-= 2
            storePair(r, at: j)
        }
        if j > start {
            base[start] = 0x30 &+ UInt8(truncatingIfNeeded: x % 10)
        }
    }

    /// `e7 / 10^7` exactly, in the shortest decimal form: at most 12 bytes (`-214.7483648`).
    @inlinable @inline(__always)
    mutating func e7(_ e7: Int32) {
        if e7 < 0 { byte(UInt8(ascii: "-")) }
        let m = e7.magnitude
        let whole = m / 10_000_000
        if whole < 10 {
            byte(0x30 &+ UInt8(truncatingIfNeeded: whole))
        } else {
            let n = whole < 100 ? 2 : 3
            digits32(whole, count: n, end: count &+ n)
            count &+= n
        }
        let fraction = m % 10_000_000
        guard fraction != 0 else { return }
        byte(UInt8(ascii: "."))
        digits32(fraction, count: 7, end: count &+ 7)
        count &+= 7
        // fraction != 0, so this stops at a non-zero digit after the point.
        while base[count &- 1] == 0x30 { count &-= 1 }
    }

    /// A quoted ISO-8601 UTC time with milliseconds, or `null` past ``JSONText/maxISO8601Milliseconds``:
    /// at most 29 bytes (`"+275760-09-13T00:00:00.000Z"`).
    @inlinable
    mutating func iso8601(milliseconds ms: UInt64) {
        guard ms <= 8_640_000_000_000_000 else {
            raw("null")
            return
        }
        let days = ms / 86_400_000
        let msOfDay = UInt32(truncatingIfNeeded: ms % 86_400_000)
        // Civil date from day count (H. Hinnant's algorithm; every quantity is non-negative here).
        let z = days &+ 719_468
        let era = z / 146_097
        let doe = z &- era &* 146_097
        let yoe = (doe &- doe / 1460 &+ doe / 36_524 &- doe / 146_096) / 365
        let doy = doe &- (365 &* yoe &+ yoe / 4 &- yoe / 100)
        let mp = (5 &* doy &+ 2) / 153
        let day = UInt32(truncatingIfNeeded: doy &- (153 &* mp &+ 2) / 5 &+ 1)
        let month = UInt32(truncatingIfNeeded: mp < 10 ? mp &+ 3 : mp &- 9)
        let year = UInt32(truncatingIfNeeded: yoe &+ era &* 400) &+ (month <= 2 ? 1 : 0)

        byte(UInt8(ascii: "\""))
        if year > 9999 {
            byte(UInt8(ascii: "+"))
            digits32(year, count: 6, end: count &+ 6)
            count &+= 6
        } else {
            storePair(year / 100, at: count)
            storePair(year % 100, at: count &+ 2)
            count &+= 4
        }
        let seconds = msOfDay / 1000
        let minutes = seconds / 60
        let millis = msOfDay &- seconds &* 1000
        base[count] = UInt8(ascii: "-")
        storePair(month, at: count &+ 1)
        base[count &+ 3] = UInt8(ascii: "-")
        storePair(day, at: count &+ 4)
        base[count &+ 6] = UInt8(ascii: "T")
        storePair(minutes / 60, at: count &+ 7)
        base[count &+ 9] = UInt8(ascii: ":")
        storePair(minutes % 60, at: count &+ 10)
        base[count &+ 12] = UInt8(ascii: ":")
        storePair(seconds % 60, at: count &+ 13)
        base[count &+ 15] = UInt8(ascii: ".")
        base[count &+ 16] = 0x30 &+ UInt8(truncatingIfNeeded: millis / 100)
        storePair(millis % 100, at: count &+ 17)
        base[count &+ 19] = UInt8(ascii: "Z")
        base[count &+ 20] = UInt8(ascii: "\"")
        count &+= 21
    }

    /// Standard base64 (RFC 4648, with padding) of `bytes`: exactly 4 * ceil(n / 3) bytes.
    @inlinable
    mutating func base64(_ bytes: UnsafeRawBufferPointer) {
        let a = JSONWriter.base64Alphabet
        let n = bytes.count
        guard n > 0 else { return }
        let input = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var i = 0
        var o = count
        while n &- i >= 3 {
            let v = UInt32(input[i]) << 16 | UInt32(input[i &+ 1]) << 8 | UInt32(input[i &+ 2])
            base[o] = a[Int(v >> 18)]
            base[o &+ 1] = a[Int((v >> 12) & 63)]
            base[o &+ 2] = a[Int((v >> 6) & 63)]
            base[o &+ 3] = a[Int(v & 63)]
            i &+= 3
            o &+= 4
        }
        if n &- i == 1 {
            let v = UInt32(input[i]) << 16
            base[o] = a[Int(v >> 18)]
            base[o &+ 1] = a[Int((v >> 12) & 63)]
            base[o &+ 2] = 0x3D
            base[o &+ 3] = 0x3D
            o &+= 4
        } else if n &- i == 2 {
            let v = UInt32(input[i]) << 16 | UInt32(input[i &+ 1]) << 8
            base[o] = a[Int(v >> 18)]
            base[o &+ 1] = a[Int((v >> 12) & 63)]
            base[o &+ 2] = a[Int((v >> 6) & 63)]
            base[o &+ 3] = 0x3D
            o &+= 4
        }
        count = o
    }
}
