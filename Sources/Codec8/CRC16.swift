/// CRC-16/IBM (also catalogued as CRC-16/ARC), the checksum of Teltonika TCP frames.
///
/// Polynomial 0x8005 processed bit-reflected (0xA001), initial value 0, no final XOR.
/// Check value: `checksum("123456789") == 0xBB3D`. It covers exactly the data field of a frame,
/// codec ID through Number of Data 2.
///
/// Eight bytes are folded per step with eight lookup tables ("slicing-by-8"), so throughput is
/// several bytes per cycle instead of one table lookup per byte.
public enum CRC16IBM {
    /// The CRC of `bytes`, continuing from `initial` (0 for a fresh CRC).
    @inlinable
    public static func checksum(_ bytes: UnsafeRawBufferPointer, initial: UInt16 = 0) -> UInt16 {
        update(initial, bytes)
    }

    /// The CRC of a byte collection.
    public static func checksum(_ bytes: some Collection<UInt8>) -> UInt16 {
        if let crc = bytes.withContiguousStorageIfAvailable({ update(0, UnsafeRawBufferPointer($0)) }) {
            return crc
        }
        return Array(bytes).withUnsafeBytes { update(0, $0) }
    }

    @usableFromInline
    static func update(_ initial: UInt16, _ bytes: UnsafeRawBufferPointer) -> UInt16 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return initial }
        return crcTables.withUnsafeBufferPointer { t in
            let t = t.baseAddress!
            var crc = initial
            var i = 0
            let n = bytes.count
            while n - i >= 8 {
                let word = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                let x = UInt16(truncatingIfNeeded: word) ^ crc
                crc =
                    t[7 &* 256 &+ Int(x & 0xFF)]
                    ^ t[6 &* 256 &+ Int(x >> 8)]
                    ^ t[5 &* 256 &+ Int((word >> 16) & 0xFF)]
                    ^ t[4 &* 256 &+ Int((word >> 24) & 0xFF)]
                    ^ t[3 &* 256 &+ Int((word >> 32) & 0xFF)]
                    ^ t[2 &* 256 &+ Int((word >> 40) & 0xFF)]
                    ^ t[1 &* 256 &+ Int((word >> 48) & 0xFF)]
                    ^ t[Int(word >> 56)]
                i &+= 8
            }
            while i < n {
                let b = base.load(fromByteOffset: i, as: UInt8.self)
                crc = (crc >> 8) ^ t[Int((crc ^ UInt16(b)) & 0xFF)]
                i &+= 1
            }
            return crc
        }
    }

    /// The bit-at-a-time definition, kept as the reference the fast path is tested against.
    public static func reference(_ bytes: some Sequence<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for b in bytes {
            crc ^= UInt16(b)
            for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xA001 : crc >> 1 }
        }
        return crc
    }
}

/// Eight 256-entry tables, flattened: table k starts at k * 256.
@usableFromInline
let crcTables: [UInt16] = {
    var t = [UInt16](repeating: 0, count: 8 * 256)
    for b in 0..<256 {
        var crc = UInt16(b)
        for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xA001 : crc >> 1 }
        t[b] = crc
    }
    for k in 1..<8 {
        for b in 0..<256 {
            let prev = t[(k - 1) * 256 + b]
            t[k * 256 + b] = (prev >> 8) ^ t[Int(prev & 0xFF)]
        }
    }
    return t
}()
