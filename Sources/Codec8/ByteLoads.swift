/// Big-endian loads from raw memory. Callers check bounds first; these do not.
extension UnsafeRawBufferPointer {
    @inline(__always) @usableFromInline
    func u8(_ offset: Int) -> UInt8 { load(fromByteOffset: offset, as: UInt8.self) }

    @inline(__always) @usableFromInline
    func u16(_ offset: Int) -> UInt16 { UInt16(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }

    @inline(__always) @usableFromInline
    func u32(_ offset: Int) -> UInt32 { UInt32(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }

    @inline(__always) @usableFromInline
    func u64(_ offset: Int) -> UInt64 { UInt64(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
}

/// Big-endian appends.
extension Array where Element == UInt8 {
    @inline(__always) @usableFromInline
    mutating func appendBE(_ v: UInt16) {
        append(UInt8(truncatingIfNeeded: v >> 8))
        append(UInt8(truncatingIfNeeded: v))
    }

    @inline(__always) @usableFromInline
    mutating func appendBE(_ v: UInt32) {
        appendBE(UInt16(truncatingIfNeeded: v >> 16))
        appendBE(UInt16(truncatingIfNeeded: v))
    }

    @inline(__always) @usableFromInline
    mutating func appendBE(_ v: UInt64) {
        appendBE(UInt32(truncatingIfNeeded: v >> 32))
        appendBE(UInt32(truncatingIfNeeded: v))
    }

    /// Overwrites 4 bytes at `offset` with `v`, big-endian.
    @usableFromInline
    mutating func storeBE(_ v: UInt32, at offset: Int) {
        self[offset] = UInt8(truncatingIfNeeded: v >> 24)
        self[offset + 1] = UInt8(truncatingIfNeeded: v >> 16)
        self[offset + 2] = UInt8(truncatingIfNeeded: v >> 8)
        self[offset + 3] = UInt8(truncatingIfNeeded: v)
    }
}
