/// One AVL record, read in place from a validated packet.
///
/// ```
/// +-----------+------+---------+---------+-------+-------+------+-------+----------+-----+----------+
/// | u64 ts ms | prio | i32 lon | i32 lat | i16   | u16   | u8   | u16   | event ID | gen | IO groups|
/// |           |      | 1e-7 °  | 1e-7 °  | alt m | angle | sats | speed | 1 or 2   | (16)| ...      |
/// +-----------+------+---------+---------+-------+-------+------+-------+----------+-----+----------+
/// ```
/// Fields keep the wire's integers; units are in the names. Values are data, not judgements: a
/// timestamp far in the future or zero satellites is decoded as sent.
public struct AVLRecordView {
    public let codec: AVLCodec
    /// Milliseconds since 1970-01-01T00:00:00Z.
    public let timestampMs: UInt64
    /// 0 low, 1 high, 2 panic (other values are passed through).
    public let priority: UInt8
    /// Degrees × 10^7, negative west.
    public let longitudeE7: Int32
    /// Degrees × 10^7, negative south.
    public let latitudeE7: Int32
    /// Metres above sea level.
    public let altitudeMeters: Int16
    /// Heading, degrees clockwise from north.
    public let angleDegrees: UInt16
    public let satellites: UInt8
    public let speedKmh: UInt16
    /// The IO element that caused the record (0: not an IO event).
    public let eventIOID: UInt16
    /// Codec 16 only: 0 on exit, 1 on entrance, 2 on both, 4 hysteresis, 5 on change, 6 eventual, 7 periodical.
    public let generationType: UInt8?
    /// "N of Total IO" as declared (validated equal to the elements present).
    public let ioTotal: Int

    @usableFromInline let bytes: UnsafeRawBufferPointer
    /// Offset of the record's first byte (its timestamp).
    @usableFromInline let start: Int
    /// Offset of the first group count (N1).
    @usableFromInline let ioStart: Int
    /// Offset just past the record.
    @usableFromInline let ioEnd: Int

    @inlinable
    init(codec: AVLCodec, bytes b: UnsafeRawBufferPointer, offset o: Int) {
        self.codec = codec
        self.bytes = b
        start = o
        timestampMs = b.u64(o)
        priority = b.u8(o + 8)
        longitudeE7 = Int32(bitPattern: b.u32(o + 9))
        latitudeE7 = Int32(bitPattern: b.u32(o + 13))
        altitudeMeters = Int16(bitPattern: b.u16(o + 17))
        angleDegrees = b.u16(o + 19)
        satellites = b.u8(o + 21)
        speedKmh = b.u16(o + 22)
        var p = o + 24
        if codec.idSize == 1 {
            eventIOID = UInt16(b.u8(p))
            p += 1
        } else {
            eventIOID = b.u16(p)
            p += 2
        }
        if codec.hasGenerationType {
            generationType = b.u8(p)
            p += 1
        } else {
            generationType = nil
        }
        let countSize = codec.countSize
        ioTotal = countSize == 1 ? Int(b.u8(p)) : Int(b.u16(p))
        p += countSize
        ioStart = p
        var width = 1
        while width <= 8 {
            let n = countSize == 1 ? Int(b.u8(p)) : Int(b.u16(p))
            p += countSize + n &* (codec.idSize + width)
            width <<= 1
        }
        if codec.hasVariableGroup {
            let n = Int(b.u16(p))
            p += 2
            for _ in 0..<n { p += 4 + Int(b.u16(p + 2)) }
        }
        ioEnd = p
    }

    /// The IO elements in wire order: the 1-, 2-, 4- and 8-byte groups, then (Codec 8E) variable-length.
    @inlinable public var ioElements: IOElements { IOElements(codec: codec, bytes: bytes, start: ioStart) }

    /// The record's bytes as on the wire, timestamp through its last IO element (in place, not a copy).
    @inlinable public var wireBytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: bytes[start..<ioEnd]) }
}

/// A value of an IO element, by its width on the wire.
public enum IOValueView {
    case u8(UInt8)
    case u16(UInt16)
    case u32(UInt32)
    case u64(UInt64)
    /// A variable-length (NX, Codec 8E) value: the bytes in place.
    case bytes(UnsafeRawBufferPointer)
}

/// One IO element: its ID and value, read in place.
public struct IOElementView {
    public let id: UInt16
    public let value: IOValueView

    @inlinable init(id: UInt16, value: IOValueView) {
        self.id = id
        self.value = value
    }
}

/// The IO elements of one record.
public struct IOElements: Sequence {
    @usableFromInline let codec: AVLCodec
    @usableFromInline let bytes: UnsafeRawBufferPointer
    @usableFromInline let start: Int

    @inlinable init(codec: AVLCodec, bytes: UnsafeRawBufferPointer, start: Int) {
        self.codec = codec
        self.bytes = bytes
        self.start = start
    }

    @inlinable public func makeIterator() -> Iterator { Iterator(codec: codec, bytes: bytes, offset: start) }

    public struct Iterator: IteratorProtocol {
        @usableFromInline let bytes: UnsafeRawBufferPointer
        @usableFromInline let idSize: Int
        @usableFromInline let countSize: Int
        @usableFromInline let groups: Int
        @usableFromInline var offset: Int
        @usableFromInline var group = -1
        @usableFromInline var remaining = 0

        @inlinable init(codec: AVLCodec, bytes: UnsafeRawBufferPointer, offset: Int) {
            self.bytes = bytes
            self.idSize = codec.idSize
            self.countSize = codec.countSize
            self.groups = codec.hasVariableGroup ? 5 : 4
            self.offset = offset
        }

        @inlinable public mutating func next() -> IOElementView? {
            while remaining == 0 {
                group &+= 1
                guard group < groups else { return nil }
                // The NX group's count is always 2 bytes (it exists only in Codec 8E).
                remaining = countSize == 1 ? Int(bytes.u8(offset)) : Int(bytes.u16(offset))
                offset &+= countSize
            }
            remaining &-= 1
            let id: UInt16
            if idSize == 1 {
                id = UInt16(bytes.u8(offset))
            } else {
                id = bytes.u16(offset)
            }
            offset &+= idSize
            let value: IOValueView
            switch group {
            case 0:
                value = .u8(bytes.u8(offset))
                offset &+= 1
            case 1:
                value = .u16(bytes.u16(offset))
                offset &+= 2
            case 2:
                value = .u32(bytes.u32(offset))
                offset &+= 4
            case 3:
                value = .u64(bytes.u64(offset))
                offset &+= 8
            default:
                let length = Int(bytes.u16(offset))
                let start = offset &+ 2
                value = .bytes(UnsafeRawBufferPointer(rebasing: bytes[start..<(start &+ length)]))
                offset = start &+ length
            }
            return IOElementView(id: id, value: value)
        }
    }
}

extension IOElements {
    /// The elements in wire order, as the iterator gives them, but group by group: each width's elements
    /// in a loop of their own, to a closure for that width. For the payload JSON, where the iterator's
    /// per-element work (which group, which width, the value wrapped in ``IOValueView`` and unwrapped
    /// again) cost more than writing most members.
    @inlinable @inline(__always)
    public func forEachByWidth(
        u8: (_ id: UInt16, _ value: UInt8) -> Void,
        u16: (_ id: UInt16, _ value: UInt16) -> Void,
        u32: (_ id: UInt16, _ value: UInt32) -> Void,
        u64: (_ id: UInt16, _ value: UInt64) -> Void,
        bytes variable: (_ id: UInt16, _ value: UnsafeRawBufferPointer) -> Void
    ) {
        let idSize = codec.idSize
        let countSize = codec.countSize
        var p = start
        // One fixed-width group: its count, then each element's ID and value.
        @inline(__always) func group(width: Int, _ body: (UInt16, Int) -> Void) {
            var n = countSize == 1 ? Int(bytes.u8(p)) : Int(bytes.u16(p))
            p &+= countSize
            while n > 0 {
                body(idSize == 1 ? UInt16(bytes.u8(p)) : bytes.u16(p), p &+ idSize)
                p &+= idSize &+ width
                n &-= 1
            }
        }
        group(width: 1) { id, at in u8(id, bytes.u8(at)) }
        group(width: 2) { id, at in u16(id, bytes.u16(at)) }
        group(width: 4) { id, at in u32(id, bytes.u32(at)) }
        group(width: 8) { id, at in u64(id, bytes.u64(at)) }
        guard codec.hasVariableGroup else { return }
        // The NX group's count is always 2 bytes (it exists only in Codec 8E), each value its 2-byte length first.
        var n = Int(bytes.u16(p))
        p &+= 2
        while n > 0 {
            let id = bytes.u16(p)
            let length = Int(bytes.u16(p &+ 2))
            variable(id, UnsafeRawBufferPointer(start: bytes.baseAddress! + (p &+ 4), count: length))
            p &+= 4 &+ length
            n &-= 1
        }
    }
}
