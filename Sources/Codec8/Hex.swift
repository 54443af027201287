/// Hex text to bytes and back, for captured frames, fixtures and tools.
public enum Hex {
    /// Parses hex digits, ignoring ASCII whitespace; nil on any other character or an odd digit count.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: text.utf8.count / 2)
        var text = String(text)  // contiguous UTF-8, so that the byte decoder reads it in place
        let count = text.withUTF8 { utf8 in
            out.withUnsafeMutableBytes { decode(UnsafeRawBufferPointer(utf8), into: $0) }
        }
        guard let count else { return nil }
        out.removeLast(out.count - count)
        return out
    }

    /// Parses the hex digits of `text` into the start of `out`, ignoring ASCII whitespace (space, tab,
    /// CR, LF) as ``decode(_:)`` does; returns the number of bytes written, or nil on any other byte or an
    /// odd digit count. `out` must hold at least `text.count / 2` bytes.
    ///
    /// One table lookup per input byte, no allocation: `decode` reads 50 MB captures with it.
    public static func decode(_ text: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int? {
        precondition(out.count >= text.count / 2, "Hex.decode: output smaller than half the input")
        return digitValues.withUnsafeBufferPointer { table -> Int? in
            var i = 0
            var n = 0
            let end = text.count
            while i < end {
                let high = table[Int(text[i])]
                i &+= 1
                if high >= skip {
                    if high == skip { continue }
                    return nil
                }
                var low: UInt8
                repeat {
                    guard i < end else { return nil }  // an odd digit count
                    low = table[Int(text[i])]
                    i &+= 1
                } while low == skip
                guard low < skip else { return nil }
                out[n] = high << 4 | low
                n &+= 1
            }
            return n
        }
    }

    /// Lower-case hex of `bytes`.
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var out: [UInt8] = []
        for b in bytes {
            out.append(hexDigit(b >> 4))
            out.append(hexDigit(b & 0xF))
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// In ``digitValues``: a byte that is skipped (ASCII whitespace).
    private static let skip: UInt8 = 0x10
    /// In ``digitValues``: a byte that is neither a digit nor skipped.
    private static let invalid: UInt8 = 0xFF

    /// Each byte's value as a hex digit (`0`-`9`, `A`-`F`, `a`-`f`), or ``skip`` or ``invalid``.
    private static let digitValues: [UInt8] = (0...255).map { (c: Int) -> UInt8 in
        switch c {
        case 0x30...0x39: UInt8(c - 0x30)
        case 0x41...0x46: UInt8(c - 0x41 + 10)
        case 0x61...0x66: UInt8(c - 0x61 + 10)
        case 0x20, 0x09, 0x0A, 0x0D: skip
        default: invalid
        }
    }
}
