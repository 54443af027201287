/// An AVL record as an owned value: what the encoder writes and what ``AVLRecordView/materialize()`` returns.
public struct AVLRecord: Sendable, Equatable {
    public var timestampMs: UInt64
    public var priority: UInt8
    public var longitudeE7: Int32
    public var latitudeE7: Int32
    public var altitudeMeters: Int16
    public var angleDegrees: UInt16
    public var satellites: UInt8
    public var speedKmh: UInt16
    public var eventIOID: UInt16
    /// Codec 16 only; the encoder writes 0 when it is nil.
    public var generationType: UInt8?
    /// IO elements. The encoder writes them grouped by width (1, 2, 4, 8 bytes, then variable),
    /// keeping their order within each group, which is the order a decode gives back.
    public var ioElements: [IOElement]

    public init(
        timestampMs: UInt64,
        priority: UInt8 = 0,
        longitudeE7: Int32 = 0,
        latitudeE7: Int32 = 0,
        altitudeMeters: Int16 = 0,
        angleDegrees: UInt16 = 0,
        satellites: UInt8 = 0,
        speedKmh: UInt16 = 0,
        eventIOID: UInt16 = 0,
        generationType: UInt8? = nil,
        ioElements: [IOElement] = []
    ) {
        self.timestampMs = timestampMs
        self.priority = priority
        self.longitudeE7 = longitudeE7
        self.latitudeE7 = latitudeE7
        self.altitudeMeters = altitudeMeters
        self.angleDegrees = angleDegrees
        self.satellites = satellites
        self.speedKmh = speedKmh
        self.eventIOID = eventIOID
        self.generationType = generationType
        self.ioElements = ioElements
    }
}

/// One IO element as an owned value.
public struct IOElement: Sendable, Equatable {
    public var id: UInt16
    public var value: IOElementValue

    public init(id: UInt16, value: IOElementValue) {
        self.id = id
        self.value = value
    }
}

/// An IO element value; the case decides its width on the wire.
public enum IOElementValue: Sendable, Equatable {
    case u8(UInt8)
    case u16(UInt16)
    case u32(UInt32)
    case u64(UInt64)
    /// Variable length, Codec 8 Extended only (at most 65,535 bytes).
    case bytes([UInt8])

    /// The group this value is written in: 0 (1 byte), 1 (2), 2 (4), 3 (8), 4 (variable).
    var group: Int {
        switch self {
        case .u8: 0
        case .u16: 1
        case .u32: 2
        case .u64: 3
        case .bytes: 4
        }
    }
}

extension AVLRecordView {
    /// Copies the record into an owned value (allocates; for tools and tests, not the hot path).
    public func materialize() -> AVLRecord {
        var elements: [IOElement] = []
        elements.reserveCapacity(ioTotal)
        for element in ioElements {
            let value: IOElementValue
            switch element.value {
            case .u8(let v): value = .u8(v)
            case .u16(let v): value = .u16(v)
            case .u32(let v): value = .u32(v)
            case .u64(let v): value = .u64(v)
            case .bytes(let v): value = .bytes(Array(v))
            }
            elements.append(IOElement(id: element.id, value: value))
        }
        return AVLRecord(
            timestampMs: timestampMs,
            priority: priority,
            longitudeE7: longitudeE7,
            latitudeE7: latitudeE7,
            altitudeMeters: altitudeMeters,
            angleDegrees: angleDegrees,
            satellites: satellites,
            speedKmh: speedKmh,
            eventIOID: eventIOID,
            generationType: generationType,
            ioElements: elements
        )
    }
}

/// Why records cannot be written in a codec.
public enum AVLEncodingError: Error, Equatable, Sendable {
    /// More than 255 records in one packet.
    case tooManyRecords(Int)
    /// An ID above 255 in Codec 8 (event IO ID or IO ID).
    case idTooWide(UInt16)
    /// More elements in one group than the codec's count field holds.
    case tooManyElements(group: Int, count: Int)
    /// A variable-length value outside Codec 8E, or longer than 65,535 bytes.
    case variableValueNotEncodable(id: UInt16)
}

/// Writes AVL packets: for tests, replay and the device simulator.
public enum AVLPacketEncoder {
    /// Appends one complete TCP frame (preamble, length, data field, CRC) to `out`.
    public static func encode(
        _ records: [AVLRecord],
        codec: AVLCodec,
        into out: inout [UInt8]
    ) throws(AVLEncodingError) {
        guard records.count <= 255 else { throw .tooManyRecords(records.count) }
        let start = out.count
        out.appendBE(UInt32(0))
        out.appendBE(UInt32(0))  // data-field length, patched below
        out.append(codec.rawValue)
        out.append(UInt8(records.count))
        for record in records { try encodeRecord(record, codec: codec, into: &out) }
        out.append(UInt8(records.count))
        let dataLength = out.count - start - 8
        out.storeBE(UInt32(dataLength), at: start + 4)
        let crc = out.withUnsafeBytes { CRC16IBM.checksum(UnsafeRawBufferPointer(rebasing: $0[(start + 8)...])) }
        out.appendBE(UInt32(crc))
    }

    /// One complete TCP frame.
    public static func encode(_ records: [AVLRecord], codec: AVLCodec) throws(AVLEncodingError) -> [UInt8] {
        var out: [UInt8] = []
        try encode(records, codec: codec, into: &out)
        return out
    }

    static func encodeRecord(_ r: AVLRecord, codec: AVLCodec, into out: inout [UInt8]) throws(AVLEncodingError) {
        out.appendBE(r.timestampMs)
        out.append(r.priority)
        out.appendBE(UInt32(bitPattern: r.longitudeE7))
        out.appendBE(UInt32(bitPattern: r.latitudeE7))
        out.appendBE(UInt16(bitPattern: r.altitudeMeters))
        out.appendBE(r.angleDegrees)
        out.append(r.satellites)
        out.appendBE(r.speedKmh)
        try appendID(r.eventIOID, codec: codec, into: &out)
        if codec.hasGenerationType { out.append(r.generationType ?? 0) }
        let groups = codec.hasVariableGroup ? 5 : 4
        try appendCount(r.ioElements.count, group: -1, codec: codec, into: &out)
        for group in 0..<groups {
            let count = r.ioElements.reduce(0) { $0 + ($1.value.group == group ? 1 : 0) }
            if group == 4 {
                guard count <= 0xFFFF else { throw .tooManyElements(group: group, count: count) }
                out.appendBE(UInt16(count))
            } else {
                try appendCount(count, group: group, codec: codec, into: &out)
            }
            for element in r.ioElements where element.value.group == group {
                try appendID(element.id, codec: codec, into: &out)
                switch element.value {
                case .u8(let v): out.append(v)
                case .u16(let v): out.appendBE(v)
                case .u32(let v): out.appendBE(v)
                case .u64(let v): out.appendBE(v)
                case .bytes(let v):
                    guard v.count <= 0xFFFF else { throw .variableValueNotEncodable(id: element.id) }
                    out.appendBE(UInt16(v.count))
                    out.append(contentsOf: v)
                }
            }
        }
        if !codec.hasVariableGroup, let bad = r.ioElements.first(where: { $0.value.group == 4 }) {
            throw .variableValueNotEncodable(id: bad.id)
        }
    }

    static func appendID(_ id: UInt16, codec: AVLCodec, into out: inout [UInt8]) throws(AVLEncodingError) {
        if codec.idSize == 1 {
            guard id <= 0xFF else { throw .idTooWide(id) }
            out.append(UInt8(id))
        } else {
            out.appendBE(id)
        }
    }

    static func appendCount(_ n: Int, group: Int, codec: AVLCodec, into out: inout [UInt8]) throws(AVLEncodingError) {
        if codec.countSize == 1 {
            guard n <= 0xFF else { throw .tooManyElements(group: group, count: n) }
            out.append(UInt8(n))
        } else {
            guard n <= 0xFFFF else { throw .tooManyElements(group: group, count: n) }
            out.appendBE(UInt16(n))
        }
    }
}

/// The server's answer to an AVL packet: the number of records accepted, as a big-endian u32.
public enum AVLAck {
    /// The 4 ACK bytes for `count` records.
    public static func bytes(count: UInt32) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4)
        out.appendBE(count)
        return out
    }

    /// Reads an ACK the server sent (4 bytes), as a device or the replay tool does.
    public static func parse(_ bytes: [UInt8]) -> UInt32? {
        guard bytes.count == 4 else { return nil }
        return bytes.withUnsafeBytes { $0.u32(0) }
    }
}
