/// The Redis Cluster hash slot of a key (the cluster specification's `HASH_SLOT`).

/// Which of the 16384 hash slots a key lives in: CRC16-XMODEM of the key (or of its hash tag) mod 16384.
///
/// The rules (Redis Cluster specification, "Hash tags"): when the key has a `{`, and a `}` somewhere
/// after it, with at least one byte between the first `{` and the first `}` after it, only those bytes
/// are hashed. Otherwise (no `{`, no `}` after it, or an empty `{}` first) the whole key is:
///
/// ```
/// {user1000}.following  -> hashes "user1000"           (3443, like {user1000}.followers)
/// foo{}{bar}            -> hashes "foo{}{bar}" (empty tag first: the whole key)
/// foo{{bar}}zap         -> hashes "{bar"       (first '{', then the first '}' after it)
/// foo{bar}{zap}         -> hashes "bar"        (only the first tag)
/// ```
///
/// CRC16-XMODEM: polynomial 0x1021, not reflected, initial value 0, no final XOR; check value
/// `crc16("123456789") == 0x31C3`. One table lookup per byte: keys are tens of bytes and hashed once
/// per job, so slicing (as ``CRC16IBM`` in Codec8 does for whole frames) would not pay.
public enum ClusterSlot {
    /// Slots in a Redis Cluster.
    public static let count = 16384

    /// The slot of `key`.
    public static func of(_ key: some Collection<UInt8>) -> Int {
        if let slot = key.withContiguousStorageIfAvailable({ of(UnsafeRawBufferPointer($0)) }) { return slot }
        return Array(key).withUnsafeBytes { of($0) }
    }

    /// The slot of a key given as text (its UTF-8 bytes).
    public static func of(_ key: String) -> Int {
        var key = key
        return key.withUTF8 { of(UnsafeRawBufferPointer($0)) }
    }

    static func of(_ key: UnsafeRawBufferPointer) -> Int {
        Int(crc16(hashed(key)) & UInt16(count - 1))
    }

    /// The part of `key` that is hashed: the hash tag's contents, or the whole key.
    static func hashed(_ key: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        guard let open = key.firstIndex(of: UInt8(ascii: "{")),
            let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")),
            close > open + 1
        else { return key }
        return UnsafeRawBufferPointer(rebasing: key[(open + 1)..<close])
    }

    /// CRC16-XMODEM of `bytes`.
    public static func crc16(_ bytes: UnsafeRawBufferPointer) -> UInt16 {
        table.withUnsafeBufferPointer { t in
            var crc: UInt16 = 0
            for byte in bytes { crc = (crc << 8) ^ t[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)] }
            return crc
        }
    }

    private static let table: [UInt16] = (0..<256).map { (index: Int) -> UInt16 in
        var crc = UInt16(index) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
}
