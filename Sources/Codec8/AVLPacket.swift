/// The three AVL data codecs, and the field widths that tell them apart.
///
/// | field                     | Codec 8 | Codec 8E | Codec 16 |
/// |---------------------------|---------|----------|----------|
/// | event IO ID, IO IDs       | 1       | 2        | 2        |
/// | generation type           | -       | -        | 1        |
/// | IO counts (total, groups) | 1       | 2        | 1        |
/// | variable-length NX group  | -       | yes      | -        |
public enum AVLCodec: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case codec8 = 0x08
    case codec8Extended = 0x8E
    case codec16 = 0x10

    /// The name used in the record payload, stream entries and metric labels: `8`, `8E`, `16`.
    public var name: String {
        switch self {
        case .codec8: "8"
        case .codec8Extended: "8E"
        case .codec16: "16"
        }
    }

    public var description: String { name }

    /// Width of IO IDs and of the event IO ID, in bytes.
    @inlinable public var idSize: Int { self == .codec8 ? 1 : 2 }
    /// Width of the IO count fields, in bytes.
    @inlinable public var countSize: Int { self == .codec8Extended ? 2 : 1 }
    /// Whether records carry a generation-type byte (Codec 16).
    @inlinable public var hasGenerationType: Bool { self == .codec16 }
    /// Whether records carry the variable-length NX group (Codec 8 Extended).
    @inlinable public var hasVariableGroup: Bool { self == .codec8Extended }
    /// Bytes from the record start to the IO counts: 24 fixed + event ID + generation type.
    @inlinable var headerSize: Int { 24 + idSize + (hasGenerationType ? 1 : 0) }
}

/// A validated AVL data packet, read in place from the frame's bytes.
///
/// A view, not a copy: it and everything it hands out (records, IO elements, variable-length values)
/// point into the buffer it was parsed from, and are valid only while that buffer is alive and
/// unchanged. Iterating allocates nothing. Use ``AVLRecordView/materialize()`` for an owned value.
public struct AVLPacketView {
    /// The packet's codec.
    public let codec: AVLCodec
    /// Number of records (Number of Data 1, equal to Number of Data 2): the value to ACK.
    public let recordCount: Int
    @usableFromInline let bytes: UnsafeRawBufferPointer
    /// Offset of the first record in `bytes` (10 in a TCP frame, after the IMEI in a UDP datagram).
    @usableFromInline let firstRecord: Int

    /// The records, in wire order.
    @inlinable public var records: AVLRecords {
        AVLRecords(codec: codec, bytes: bytes, count: recordCount, firstRecord: firstRecord)
    }

    /// Validates a complete frame (preamble through CRC) that holds an AVL packet.
    ///
    /// Checks, in order: preamble, declared length (limit, then against the bytes present), CRC,
    /// codec, Number of Data 1 == Number of Data 2, and that the records fill the data field exactly.
    public init(frame: UnsafeRawBufferPointer, maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength)
        throws(Codec8Error)
    {
        let dataLength = try checkFrameEnvelope(frame, maxDataLength: maxDataLength)
        guard let codec = AVLCodec(rawValue: frame.u8(8)) else { throw .unsupportedCodec(frame.u8(8)) }
        self = try AVLPacketView(validatedEnvelope: frame, codec: codec, dataLength: dataLength)
    }

    /// Validates the body of a frame whose envelope (preamble, length, CRC) was already checked.
    init(validatedEnvelope frame: UnsafeRawBufferPointer, codec: AVLCodec, dataLength: Int) throws(Codec8Error) {
        try self.init(dataArray: frame, at: 8, length: dataLength, codec: codec)
    }

    /// Validates the AVL data array (codec ID through Number of Data 2) at `bytes[start..<start+length]`:
    /// the record counts agree and the records fill the array exactly. Error offsets are offsets in `bytes`.
    init(dataArray bytes: UnsafeRawBufferPointer, at start: Int, length dataLength: Int, codec: AVLCodec) throws(Codec8Error) {
        guard dataLength >= 3 else { throw .malformedRecord(index: 0, offset: start, reason: .overrun) }
        let header = bytes.u8(start + 1)
        let trailer = bytes.u8(start + dataLength - 1)
        guard header == trailer else { throw .recordCountMismatch(header: header, trailer: trailer) }
        let end = start + dataLength - 1
        var offset = start + 2
        for index in 0..<Int(header) {
            offset = try AVLRecords.checkRecord(bytes, at: offset, end: end, codec: codec, index: index)
        }
        guard offset == end else {
            throw .malformedRecord(index: Int(header), offset: offset, reason: .trailingBytes(end - offset))
        }
        self.codec = codec
        self.recordCount = Int(header)
        self.bytes = bytes
        self.firstRecord = start + 2
    }
}

/// Checks preamble, length field and CRC of a complete frame; returns the data-field length `L`.
func checkFrameEnvelope(_ frame: UnsafeRawBufferPointer, maxDataLength: Int) throws(Codec8Error) -> Int {
    let framer = TeltonikaFramer(maxDataLength: maxDataLength)
    switch try framer.next(frame, mode: .packets) {
    case .keepAlive:
        throw .badPreamble(offset: 0, byte: TeltonikaFramer.keepAliveByte)
    case .needMore(let n):
        throw .truncated(needed: frame.count + n, available: frame.count)
    case .frame(let length) where length != frame.count:
        throw .lengthMismatch(declared: length, actual: frame.count)
    case .frame(let length):
        let dataLength = length - TeltonikaFramer.overhead
        let received = frame.u32(8 + dataLength)
        let computed = CRC16IBM.checksum(UnsafeRawBufferPointer(rebasing: frame[8..<(8 + dataLength)]))
        guard received == UInt32(computed) else { throw .crcMismatch(received: received, computed: computed) }
        guard dataLength >= 1 else { throw .malformedRecord(index: 0, offset: 8, reason: .overrun) }
        return dataLength
    }
}

/// The records of an ``AVLPacketView``.
public struct AVLRecords: Sequence {
    public let codec: AVLCodec
    @usableFromInline let bytes: UnsafeRawBufferPointer
    public let count: Int
    @usableFromInline let firstRecord: Int

    @inlinable init(codec: AVLCodec, bytes: UnsafeRawBufferPointer, count: Int, firstRecord: Int) {
        self.codec = codec
        self.bytes = bytes
        self.count = count
        self.firstRecord = firstRecord
    }

    @inlinable public var underestimatedCount: Int { count }

    @inlinable public func makeIterator() -> Iterator {
        Iterator(codec: codec, bytes: bytes, offset: firstRecord, remaining: count)
    }

    /// Walks validated records; never fails (validation already proved every bound).
    public struct Iterator: IteratorProtocol {
        @usableFromInline let codec: AVLCodec
        @usableFromInline let bytes: UnsafeRawBufferPointer
        @usableFromInline var offset: Int
        @usableFromInline var remaining: Int

        @inlinable init(codec: AVLCodec, bytes: UnsafeRawBufferPointer, offset: Int, remaining: Int) {
            self.codec = codec
            self.bytes = bytes
            self.offset = offset
            self.remaining = remaining
        }

        @inlinable public mutating func next() -> AVLRecordView? {
            guard remaining > 0 else { return nil }
            remaining &-= 1
            let record = AVLRecordView(codec: codec, bytes: bytes, offset: offset)
            offset = record.ioEnd
            return record
        }
    }

    /// Checks one record's structure against `end` (the offset of Number of Data 2); returns where it ends.
    static func checkRecord(
        _ b: UnsafeRawBufferPointer,
        at start: Int,
        end: Int,
        codec: AVLCodec,
        index: Int
    ) throws(Codec8Error) -> Int {
        let overrun = Codec8Error.malformedRecord(index: index, offset: start, reason: .overrun)
        var o = start + codec.headerSize
        let countSize = codec.countSize
        guard o + countSize <= end else { throw overrun }
        let declared = countSize == 1 ? Int(b.u8(o)) : Int(b.u16(o))
        o += countSize
        var counted = 0
        var width = 1
        while width <= 8 {
            guard o + countSize <= end else { throw overrun }
            let n = countSize == 1 ? Int(b.u8(o)) : Int(b.u16(o))
            o += countSize + n * (codec.idSize + width)
            guard o <= end else { throw overrun }
            counted += n
            width <<= 1
        }
        if codec.hasVariableGroup {
            guard o + 2 <= end else { throw overrun }
            let n = Int(b.u16(o))
            o += 2
            for _ in 0..<n {
                guard o + 4 <= end else { throw overrun }
                o += 4 + Int(b.u16(o + 2))
                guard o <= end else { throw overrun }
            }
            counted += n
        }
        guard counted == declared else {
            throw .malformedRecord(index: index, offset: start, reason: .ioCountMismatch(declared: declared, counted: counted))
        }
        return o
    }
}
