/// XXH64, the 64-bit xxHash of Yann Collet (reference: the xxHash specification, `doc/xxhash_spec.md`, and
/// `xxhsum -H1`), fed in pieces without allocating.
///
/// Why XXH64 for ``AVLRecordView/recordID(imei:)`` and the stream shards: it is specified byte for byte, has
/// implementations in every language consumers use (Python `xxhash`, Go `cespare/xxhash`, Node, the `xxhsum`
/// tool), passes SMHasher, and reads 32 bytes per round in four independent lanes (FNV-1a, the other
/// candidate, chains one multiply per byte). Measured with the micro benchmarks (load 5): 35 ns per record of
/// the mix, 0 mallocs, against 212 ns for the record's JSON in the same run. Not a cryptographic hash: `record_id` tells copies of a
/// record apart from other records of the same device, it does not defend against a device forging collisions
/// with its own records.
///
/// ```
/// stripes of 32 bytes: 4 lanes  v[i] = rotl(v[i] + lane * P2, 31) * P1     (lanes little-endian)
/// finish: merge lanes (or seed + P5 below 32 bytes), + length, tail in 8/4/1-byte steps, avalanche
/// ```
public struct XXH64: Sendable {
    @usableFromInline static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    @usableFromInline static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    @usableFromInline static let p3: UInt64 = 0x1656_67B1_9E37_79F9
    @usableFromInline static let p4: UInt64 = 0x85EB_CA77_C2B2_AE63
    @usableFromInline static let p5: UInt64 = 0x27D4_EB2F_1656_67C5

    private let seed: UInt64
    private var v1: UInt64
    private var v2: UInt64
    private var v3: UInt64
    private var v4: UInt64
    /// Bytes fed in all.
    private var total = 0
    /// A partial stripe (fewer than 32 bytes), kept inline so that feeding never allocates.
    private var stripe: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    private var buffered = 0

    public init(seed: UInt64 = 0) {
        self.seed = seed
        v1 = seed &+ Self.p1 &+ Self.p2
        v2 = seed &+ Self.p2
        v3 = seed
        v4 = seed &- Self.p1
    }

    /// The hash of `bytes` in one call.
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        var hasher = XXH64(seed: seed)
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// The hash of the bytes of an array (tools and tests).
    public static func hash(_ bytes: [UInt8], seed: UInt64 = 0) -> UInt64 {
        bytes.withUnsafeBytes { hash($0, seed: seed) }
    }

    /// Feeds one byte.
    public mutating func update(byte: UInt8) {
        withUnsafeBytes(of: byte) { update($0) }
    }

    /// Feeds `bytes` after everything fed so far.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        total &+= bytes.count
        var offset = 0
        if buffered > 0 {
            let take = min(32 - buffered, bytes.count)
            withUnsafeMutableBytes(of: &stripe) { stripeBytes in
                stripeBytes.baseAddress!.advanced(by: buffered).copyMemory(from: bytes.baseAddress!, byteCount: take)
            }
            buffered += take
            offset = take
            guard buffered == 32 else { return }
            consumeBufferedStripe()
            buffered = 0
        }
        while bytes.count - offset >= 32 {
            consume(bytes, at: offset)
            offset += 32
        }
        let rest = bytes.count - offset
        if rest > 0 {
            withUnsafeMutableBytes(of: &stripe) { stripeBytes in
                stripeBytes.baseAddress!.copyMemory(from: bytes.baseAddress!.advanced(by: offset), byteCount: rest)
            }
            buffered = rest
        }
    }

    /// The hash of everything fed so far (feeding may go on afterwards).
    public func finalize() -> UInt64 {
        var h: UInt64
        if total >= 32 {
            h = v1.rotatedLeft(1) &+ v2.rotatedLeft(7) &+ v3.rotatedLeft(12) &+ v4.rotatedLeft(18)
            h = Self.merge(h, v1)
            h = Self.merge(h, v2)
            h = Self.merge(h, v3)
            h = Self.merge(h, v4)
        } else {
            h = seed &+ Self.p5
        }
        h &+= UInt64(truncatingIfNeeded: total)
        let count = buffered
        withUnsafeBytes(of: stripe) { tail in
            var i = 0
            while i + 8 <= count {
                h ^= Self.round(0, UInt64(littleEndian: tail.loadUnaligned(fromByteOffset: i, as: UInt64.self)))
                h = h.rotatedLeft(27) &* Self.p1 &+ Self.p4
                i += 8
            }
            if i + 4 <= count {
                h ^= UInt64(UInt32(littleEndian: tail.loadUnaligned(fromByteOffset: i, as: UInt32.self))) &* Self.p1
                h = h.rotatedLeft(23) &* Self.p2 &+ Self.p3
                i += 4
            }
            while i < count {
                h ^= UInt64(tail[i]) &* Self.p5
                h = h.rotatedLeft(11) &* Self.p1
                i += 1
            }
        }
        h ^= h >> 33
        h &*= Self.p2
        h ^= h >> 29
        h &*= Self.p3
        h ^= h >> 32
        return h
    }

    private mutating func consumeBufferedStripe() {
        let lanes = stripe
        v1 = Self.round(v1, UInt64(littleEndian: lanes.0))
        v2 = Self.round(v2, UInt64(littleEndian: lanes.1))
        v3 = Self.round(v3, UInt64(littleEndian: lanes.2))
        v4 = Self.round(v4, UInt64(littleEndian: lanes.3))
    }

    @inline(__always)
    private mutating func consume(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
        v1 = Self.round(v1, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
        v2 = Self.round(v2, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self)))
        v3 = Self.round(v3, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self)))
        v4 = Self.round(v4, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 24, as: UInt64.self)))
    }

    @inline(__always)
    static func round(_ accumulator: UInt64, _ lane: UInt64) -> UInt64 {
        (accumulator &+ lane &* p2).rotatedLeft(31) &* p1
    }

    @inline(__always)
    static func merge(_ h: UInt64, _ lane: UInt64) -> UInt64 {
        (h ^ round(0, lane)) &* p1 &+ p4
    }
}

extension UInt64 {
    @inline(__always)
    fileprivate func rotatedLeft(_ n: UInt64) -> UInt64 { (self << n) | (self >> (64 - n)) }
}

extension AVLRecordView {
    /// `record_id`: XXH64 (seed 0) of the device's IMEI digits in ASCII, the packet's codec ID byte (`08`,
    /// `8E` or `10`) and the record's bytes exactly as on the wire (timestamp through its last IO element).
    ///
    /// A device that resends a packet whose ACK it missed sends the same record bytes, so every copy has the
    /// same id; two different records of one device differ in at least one byte. The codec byte is never an
    /// ASCII digit, so it also ends the 15- or 16-digit IMEI unambiguously. Consumers dedupe on
    /// `(device_id, record_id)` (docs/record-schema.md).
    public func recordID(imei: IMEI) -> UInt64 {
        recordID(prefix: XXH64.recordIDPrefix(imei: imei, codec: codec))
    }

    /// ``recordID(imei:)`` from the hasher already fed with the IMEI and this record's codec
    /// (``XXH64/recordIDPrefix(imei:codec:)``): what a packet's records share is hashed once per packet.
    @inlinable
    public func recordID(prefix: XXH64) -> UInt64 {
        var hasher = prefix
        hasher.update(wireBytes)
        return hasher.finalize()
    }
}

extension XXH64 {
    /// The start every `record_id` of `imei`'s `codec` records shares: the IMEI digits and the codec byte.
    public static func recordIDPrefix(imei: IMEI, codec: AVLCodec) -> XXH64 {
        var hasher = XXH64()
        imei.withDigits { hasher.update($0) }
        hasher.update(byte: codec.rawValue)
        return hasher
    }
}

extension IMEI {
    /// Runs `body` over the ASCII digits, written on the stack (no allocation).
    @inlinable
    public func withDigits<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        var digits: (UInt64, UInt64) = (0, 0)
        let count = digitCount
        withUnsafeMutableBytes(of: &digits) { out in
            var v = value
            var i = count - 1
            while i >= 0 {
                out[i] = 0x30 + UInt8(v % 10)
                v /= 10
                i -= 1
            }
        }
        return withUnsafeBytes(of: digits) { body(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
    }
}

extension XXH64 {
    /// Writes `value` as 16 lowercase hex digits, zero-padded (the `record_id` field's form).
    public static func appendHex(_ value: UInt64, to out: inout [UInt8]) {
        withHex(value) { out.append(contentsOf: $0) }
    }

    /// Runs `body` over `value`'s 16 lowercase hex digits, zero-padded, written on the stack (no
    /// allocation, no append per digit).
    @inlinable
    public static func withHex<R>(_ value: UInt64, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        var digits: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &digits) { out in
            let table: StaticString = "0123456789abcdef"
            for i in 0..<16 {
                out[i] = table.utf8Start[Int(truncatingIfNeeded: (value &>> UInt64(60 &- 4 &* i)) & 0xF)]
            }
        }
        return withUnsafeBytes(of: digits) { body($0) }
    }
}
