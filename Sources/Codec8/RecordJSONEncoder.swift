/// Writes records as the payload JSON of `docs/record-schema.md`, the contract with downstream consumers.
///
/// ```
/// {"device_id":"356307042441013","codec":"8","timestamp":"2019-06-10T10:04:46.000Z",
///  "timestamp_ms":1560161086000,"priority":1,"longitude":0,"latitude":0,"altitude":0,"angle":0,
///  "satellites":0,"speed":0,"event_io_id":1,"attributes":{"21":3,"1":1,"78":{"__bigint":"0"}}}
/// ```
/// One encoder is reused for many records: it owns an 8 KiB bitmap of IO IDs used to find duplicate
/// IDs within a record without allocating. A record that repeats an ID keeps the last value (as a
/// JavaScript object assignment did in the service this replaces); that rare path allocates.
///
/// Speed: the encoder also owns a scratch buffer. Each record's JSON is written there through a raw
/// pointer (no per-byte capacity or uniqueness checks), after checking once that the scratch holds the
/// record's worst case, then appended to `out` in one call. The scratch grows (allocates) only for a
/// record larger than any before it; 4 KiB covers every record without a long variable-length value.
/// The IO section is walked once: each member is written as its ID is marked in the bitmap, and only a
/// record with a repeated ID is written again (see ``writeAttributes(_:seen:words:to:)``). IO-ID keys
/// below 1000 and numbers below 1000 (every 1-byte value, most 2-byte ones and most fixed fields) are
/// each one load from ``words`` and one store.
public struct RecordJSONEncoder {
    /// One bit per possible IO ID; all zero between calls.
    private var seen: [UInt64]
    /// Where a record's JSON is written before it is appended to the caller's buffer.
    private var scratch: [UInt8]
    /// Text packed for ``JSONWriter/word(_:)``: at `n` < 1000 the decimal digits of `n`, at 1000 + `id`
    /// the member key `,"<id>":` of an IO ID below 1000 (every Codec 8 ID, and the IDs devices send).
    /// 16 KiB, built once per encoder (one per event loop).
    private let words: [UInt64]

    public init() {
        seen = [UInt64](repeating: 0, count: 65_536 / 64)
        scratch = [UInt8](repeating: 0, count: 4096)
        words = (0..<1000).map { JSONWriter.packed(String($0)) } + (0..<1000).map { JSONWriter.packed(",\"\($0)\":") }
    }

    /// Room kept past a record's bound: ``JSONWriter/word(_:)`` stores 8 bytes wherever its text ends.
    private static var overStore: Int { 8 }

    /// The most bytes the JSON of a record can take besides the device ID's digits and the attributes'
    /// members: 292 (`null` timestamp with a 20-digit `timestamp_ms`, `-214.7483648` coordinates,
    /// altitude `-32768`, every 16-bit field at 65535, a generation type), rounded up.
    private static var fixedBound: Int { 300 }

    /// The most JSON bytes per byte of a record's IO section (group counts, IDs, lengths, values). The
    /// worst is an empty variable-length value: 4 bytes on the wire, 28 in JSON
    /// (`,"65535":{"__buffer_b64":""}`); a value of n bytes adds 4 * ceil(n / 3) <= 7n.
    private static var bytesPerIOByte: Int { 7 }

    /// Appends the JSON object for `record` to `out`. `deviceID` nil writes `"device_id":null`.
    ///
    /// - Returns: where in `out` the `timestamp` member's value is (the quoted ISO-8601 time, or `null`),
    ///   so that a caller that needs the time again reuses these bytes instead of formatting it twice
    ///   (the stream entry's `ts`).
    @discardableResult
    public mutating func append(_ record: AVLRecordView, deviceID: IMEI?, to out: inout [UInt8]) -> Range<Int> {
        let bound =
            RecordJSONEncoder.fixedBound &+ (deviceID?.digitCount ?? 0)
            &+ RecordJSONEncoder.bytesPerIOByte &* (record.ioEnd &- record.ioStart)
        if scratch.count < bound &+ RecordJSONEncoder.overStore {
            scratch = [UInt8](repeating: 0, count: Swift.max(bound &+ RecordJSONEncoder.overStore, scratch.count &* 2))
        }
        let start = out.count
        let timestamp = scratch.withUnsafeMutableBufferPointer { buffer in
            var w = JSONWriter(buffer.baseAddress!)
            let timestamp = words.withUnsafeBufferPointer { words in
                let timestamp = RecordJSONEncoder.writeFields(record, deviceID: deviceID, words: words.baseAddress!, to: &w)
                w.raw(",\"attributes\":")
                seen.withUnsafeMutableBufferPointer { bits in
                    RecordJSONEncoder.writeAttributes(record, seen: bits.baseAddress!, words: words.baseAddress!, to: &w)
                }
                return timestamp
            }
            w.bytes(UInt8(ascii: "}"), UInt8(ascii: "}"))
            precondition(w.count <= bound, "RecordJSONEncoder: size bound exceeded")
            out.append(contentsOf: w.written)
            return timestamp
        }
        return (start &+ timestamp.lowerBound)..<(start &+ timestamp.upperBound)
    }

    /// Everything before `,"attributes":`; returns where the `timestamp` value is in `w`.
    @inline(__always)
    private static func writeFields(
        _ record: AVLRecordView,
        deviceID: IMEI?,
        words: UnsafePointer<UInt64>,
        to w: inout JSONWriter
    ) -> Range<Int> {
        if let deviceID {
            w.raw("{\"device_id\":\"")
            w.digits(deviceID.value, count: deviceID.digitCount)
            w.byte(UInt8(ascii: "\""))
        } else {
            w.raw("{\"device_id\":null")
        }
        switch record.codec {
        case .codec8: w.raw(",\"codec\":\"8\",\"timestamp\":")
        case .codec8Extended: w.raw(",\"codec\":\"8E\",\"timestamp\":")
        case .codec16: w.raw(",\"codec\":\"16\",\"timestamp\":")
        }
        let timestampStart = w.count
        w.iso8601(milliseconds: record.timestampMs)
        let timestamp = timestampStart..<w.count
        w.raw(",\"timestamp_ms\":")
        w.decimal(record.timestampMs)
        w.raw(",\"priority\":")
        w.word(words[Int(record.priority)])
        w.raw(",\"longitude\":")
        w.e7(record.longitudeE7)
        w.raw(",\"latitude\":")
        w.e7(record.latitudeE7)
        w.raw(",\"altitude\":")
        if record.altitudeMeters < 0 { w.byte(UInt8(ascii: "-")) }
        small(record.altitudeMeters.magnitude, words: words, to: &w)
        w.raw(",\"angle\":")
        small(record.angleDegrees, words: words, to: &w)
        w.raw(",\"satellites\":")
        w.word(words[Int(record.satellites)])
        w.raw(",\"speed\":")
        small(record.speedKmh, words: words, to: &w)
        w.raw(",\"event_io_id\":")
        small(record.eventIOID, words: words, to: &w)
        if let generationType = record.generationType {
            w.raw(",\"generation_type\":")
            w.word(words[Int(generationType)])
        }
        return timestamp
    }

    /// The decimal digits of `v`: from the table below 1000 (the common case for these fields and IO values).
    @inline(__always)
    private static func small(_ v: UInt16, words: UnsafePointer<UInt64>, to w: inout JSONWriter) {
        if v < 1000 {
            w.word(words[Int(v)])
        } else {
            w.decimal(v)
        }
    }

    /// The attributes object, `{...}`, in wire order, in one walk (``IOElements/forEachByWidth``: each
    /// width's values in a loop of their own): each member is written as its ID is marked in `seen`. A repeated ID (rare) is noted, and once the walk is done, what it wrote is
    /// dropped and ``writeLastOccurrences(_:seen:words:to:)`` writes the members again. The bitmap words
    /// marked lie between the lowest and highest ID's (one or two 64-bit words for typical IDs below
    /// 128): they are zeroed in one go, without reading the IDs again.
    @inline(__always)
    private static func writeAttributes(
        _ record: AVLRecordView,
        seen bits: UnsafeMutablePointer<UInt64>,
        words: UnsafePointer<UInt64>,
        to w: inout JSONWriter
    ) {
        // Members are written each with a leading comma; the first comma then becomes the `{`.
        let open = w.count
        var repeated: UInt64 = 0
        var low = Int.max
        var high = -1
        // Marks `id` and writes its key.
        @inline(__always) func key(_ id: UInt16) {
            let word = Int(id &>> 6)
            let mask = UInt64(1) &<< UInt64(id & 63)
            let marked = bits[word]
            repeated |= marked & mask
            bits[word] = marked | mask
            low = Swift.min(low, word)
            high = Swift.max(high, word)
            writeKey(id, words: words, to: &w)
        }
        record.ioElements.forEachByWidth(
            u8: { id, v in
                key(id)
                w.word(words[Int(v)])
            },
            u16: { id, v in
                key(id)
                small(v, words: words, to: &w)
            },
            u32: { id, v in
                key(id)
                w.decimal(v)
            },
            u64: { id, v in
                key(id)
                writeBigInt(v, to: &w)
            },
            bytes: { id, v in
                key(id)
                writeBuffer(v, to: &w)
            }
        )
        if high >= low { (bits + low).update(repeating: 0, count: high &- low &+ 1) }
        if repeated != 0 {
            w.count = open
            writeLastOccurrences(record, seen: bits, words: words, to: &w)
        }
        if w.count == open {
            w.byte(UInt8(ascii: "{"))
        } else {
            w.base[open] = UInt8(ascii: "{")
        }
    }

    /// `,"<id>":`, from the table below 1000.
    @inline(__always)
    private static func writeKey(_ id: UInt16, words: UnsafePointer<UInt64>, to w: inout JSONWriter) {
        if id < 1000 {
            w.word(words[1000 &+ Int(id)])
        } else {
            w.bytes(UInt8(ascii: ","), UInt8(ascii: "\""))
            w.decimal(id)
            w.bytes(UInt8(ascii: "\""), UInt8(ascii: ":"))
        }
    }

    /// An 8-byte value: `{"__bigint":"<digits>"}`.
    @inline(__always)
    private static func writeBigInt(_ v: UInt64, to w: inout JSONWriter) {
        w.raw("{\"__bigint\":\"")
        w.decimal(v)
        w.bytes(UInt8(ascii: "\""), UInt8(ascii: "}"))
    }

    /// A variable-length value: `{"__buffer_b64":"<base64>"}`.
    @inline(__always)
    private static func writeBuffer(_ v: UnsafeRawBufferPointer, to w: inout JSONWriter) {
        w.raw("{\"__buffer_b64\":\"")
        w.base64(v)
        w.bytes(UInt8(ascii: "\""), UInt8(ascii: "}"))
    }

    /// `,"<id>":<value>` for one element (the rare path's; the walk above writes each width itself).
    private static func writeMember(_ element: IOElementView, words: UnsafePointer<UInt64>, to w: inout JSONWriter) {
        writeKey(element.id, words: words, to: &w)
        switch element.value {
        case .u8(let v): w.word(words[Int(v)])
        case .u16(let v): small(v, words: words, to: &w)
        case .u32(let v): w.decimal(v)
        case .u64(let v): writeBigInt(v, to: &w)
        case .bytes(let v): writeBuffer(v, to: &w)
        }
    }

    /// Rare: an ID repeats. Keeps each ID's last occurrence: a reverse walk marks each ID the first time
    /// it meets it; the bits are cleared afterwards. `seen` is all zero before and after. Allocates.
    private static func writeLastOccurrences(
        _ record: AVLRecordView,
        seen bits: UnsafeMutablePointer<UInt64>,
        words: UnsafePointer<UInt64>,
        to w: inout JSONWriter
    ) {
        let all = Array(record.ioElements)
        var keep = [Bool](repeating: false, count: all.count)
        for i in all.indices.reversed() {
            let word = Int(all[i].id >> 6)
            let mask = UInt64(1) << UInt64(all[i].id & 63)
            if bits[word] & mask == 0 {
                keep[i] = true
                bits[word] |= mask
            }
        }
        for element in all { bits[Int(element.id >> 6)] = 0 }
        for i in all.indices where keep[i] { writeMember(all[i], words: words, to: &w) }
    }
}
