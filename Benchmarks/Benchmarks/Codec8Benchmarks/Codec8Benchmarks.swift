// Micro benchmarks of the Codec8 hot path: CRC, frame validation + record/IO iteration, payload JSON.
//
// Every benchmark that counts records runs over the same packet mix of exactly 1,000 records (one
// sample = one pass = 1,000 records, so `scalingFactor: .kilo` makes one scaled iteration one record):
//   * every valid AVL frame (`expect` = `avl:N`) of Tests/Fixtures/frames.tsv: documentation examples
//     and real device captures, Codec 8 / 8E / 16;
//   * then generated FMB-style packets (Codec 8 and 8E, 1 to 10 records each, 10 to 20 IO elements
//     of mixed widths per record, some 8E records with a variable-length element), up to 1,000 records.
// The frames live back to back in one buffer allocated once at start, so the decode views point into
// stable memory and nothing is built inside a measured region.
//
// Read the table (scripts/bench.sh passes `--scale`, so values are per sample): Throughput (K) is
// thousands of records per second, `Malloc (total)` counts the mallocs of one whole sample (1,000
// records: divide by 1,000 for mallocs/record), Time is µs per 1,000 records, and the custom `MB/s`
// metric is input bytes (CRC, decode) or output JSON bytes (JSON) per second, timed by the benchmark
// itself over the same region. The CRC 1 KiB benchmark counts KiB instead of records.

import Benchmark
import Codec8
import Foundation

// MARK: - The packet mix

/// Records in one pass over the mix: one sample.
let recordsPerPass = 1_000

/// All frames of the mix in one stable buffer (never freed: it lives as long as the process).
struct PacketMix: @unchecked Sendable {
    /// Each frame, preamble through CRC, in mix order.
    let frames: [UnsafeRawBufferPointer]
    /// Each frame's data field (codec ID through Number of Data 2): what the CRC covers.
    let dataFields: [UnsafeRawBufferPointer]
    /// Every record of the mix, pre-parsed (for the JSON benchmark, which measures encoding only).
    let records: [AVLRecordView]
    let fixtureFrames: Int
    let fixtureRecords: Int
    let totalBytes: Int
    let dataFieldBytes: Int

    static let shared = PacketMix.build()

    static func build() -> PacketMix {
        var packets = fixturePackets()
        let fixtureFrames = packets.count
        let fixtureRecords = packets.reduce(0) { $0 + $1.records }
        precondition(fixtureRecords < recordsPerPass, "fixtures alone exceed one pass")
        packets += generatedPackets(count: recordsPerPass - fixtureRecords)

        let totalBytes = packets.reduce(0) { $0 + $1.bytes.count }
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: totalBytes, alignment: 64)
        var frames: [UnsafeRawBufferPointer] = []
        var dataFields: [UnsafeRawBufferPointer] = []
        var records: [AVLRecordView] = []
        var offset = 0
        for packet in packets {
            let slice = UnsafeMutableRawBufferPointer(rebasing: storage[offset..<(offset + packet.bytes.count)])
            slice.copyBytes(from: packet.bytes)
            offset += packet.bytes.count
            let frame = UnsafeRawBufferPointer(slice)
            frames.append(frame)
            dataFields.append(UnsafeRawBufferPointer(rebasing: frame[8..<(frame.count - 4)]))
            guard case .avl(let view)? = try? TeltonikaFrame.parse(frame), view.recordCount == packet.records
            else { fatalError("mix packet does not decode as an AVL packet of \(packet.records) records") }
            records.append(contentsOf: view.records)
        }
        precondition(records.count == recordsPerPass)
        return PacketMix(
            frames: frames,
            dataFields: dataFields,
            records: records,
            fixtureFrames: fixtureFrames,
            fixtureRecords: fixtureRecords,
            totalBytes: totalBytes,
            dataFieldBytes: dataFields.reduce(0) { $0 + $1.count }
        )
    }

    /// The valid AVL frames of Tests/Fixtures/frames.tsv (columns id, source, transport, expect, hex, note).
    static func fixturePackets() -> [(bytes: [UInt8], records: Int)] {
        let path = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent()  // Codec8Benchmarks
            .deletingLastPathComponent()  // Benchmarks (targets)
            .deletingLastPathComponent()  // Benchmarks (package)
            .deletingLastPathComponent()  // repository root
            .appendingPathComponent("Tests/Fixtures/frames.tsv").path
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            fatalError("cannot read \(path)")
        }
        var out: [(bytes: [UInt8], records: Int)] = []
        for line in text.split(separator: "\n").dropFirst() {
            let columns = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard columns.count >= 5, columns[3].hasPrefix("avl:"), let n = Int(columns[3].dropFirst(4)) else {
                continue
            }
            guard let bytes = Hex.decode(columns[4]) else { fatalError("bad hex in fixture \(columns[0])") }
            out.append((bytes, n))
        }
        precondition(!out.isEmpty, "no avl rows in \(path)")
        return out
    }

    /// FMB-style packets holding exactly `count` records in all.
    static func generatedPackets(count: Int) -> [(bytes: [UInt8], records: Int)] {
        var rng = SplitMix64(seed: 0x7E17_0A1C)
        let sizes = [1, 3, 7, 10, 2, 5, 8, 4, 9, 6]
        var out: [(bytes: [UInt8], records: Int)] = []
        var left = count
        var timestamp: UInt64 = 1_704_067_200_000  // 2024-01-01T00:00:00Z
        var packetIndex = 0
        while left > 0 {
            let n = min(sizes[packetIndex % sizes.count], left)
            // Two Codec 8 packets for every Codec 8 Extended one.
            let codec: AVLCodec = packetIndex % 3 == 2 ? .codec8Extended : .codec8
            var records: [AVLRecord] = []
            for _ in 0..<n {
                timestamp += 30_000
                records.append(fmbRecord(timestamp: timestamp, codec: codec, rng: &rng))
            }
            guard let bytes = try? AVLPacketEncoder.encode(records, codec: codec) else {
                fatalError("generated packet does not encode")
            }
            out.append((bytes, n))
            left -= n
            packetIndex += 1
        }
        return out
    }

    /// One record with 10 to 20 IO elements drawn from an FMB920-like IO list (IDs unique in a record).
    static func fmbRecord(timestamp: UInt64, codec: AVLCodec, rng: inout SplitMix64) -> AVLRecord {
        // Always present on FMB devices with default settings.
        var ids: [UInt16] = [239, 240, 80, 21, 69, 181, 182, 66, 67, 24, 16]
        // Optional extras, by width.
        var extras: [UInt16] = [200, 1, 179, 113, 205, 206, 68, 9, 241, 199, 12, 11, 14, 238]
        if codec == .codec8Extended { extras += [263, 303, 636, 1148] }
        let target = 10 + Int(rng.next() % 11)
        while ids.count < target {
            ids.append(extras.remove(at: Int(rng.next() % UInt64(extras.count))))
        }
        var elements = ids.map { IOElement(id: $0, value: value(for: $0, rng: &rng)) }
        if codec == .codec8Extended, rng.next() % 4 == 0 {
            // A BLE beacon list (variable length): 20 to 60 bytes.
            let length = 20 + Int(rng.next() % 41)
            elements.append(IOElement(id: 385, value: .bytes((0..<length).map { _ in UInt8(truncatingIfNeeded: rng.next()) })))
        }
        let moving = rng.next() % 5 != 0
        return AVLRecord(
            timestampMs: timestamp,
            priority: rng.next() % 20 == 0 ? 1 : 0,
            longitudeE7: 252_797_000 + Int32(truncatingIfNeeded: rng.next() % 2_000_000),
            latitudeE7: 546_872_000 + Int32(truncatingIfNeeded: rng.next() % 2_000_000),
            altitudeMeters: Int16(truncatingIfNeeded: 90 + rng.next() % 120),
            angleDegrees: UInt16(rng.next() % 360),
            satellites: UInt8(4 + rng.next() % 16),
            speedKmh: moving ? UInt16(rng.next() % 130) : 0,
            eventIOID: rng.next() % 4 == 0 ? ids[Int(rng.next() % UInt64(ids.count))] : 0,
            ioElements: elements
        )
    }

    static func value(for id: UInt16, rng: inout SplitMix64) -> IOElementValue {
        let r = rng.next()
        switch id {
        case 239, 240, 80, 200, 1, 179, 263, 303: return .u8(UInt8(r % 2))
        case 21: return .u8(UInt8(r % 6))
        case 69: return .u8(UInt8(r % 4))
        case 113: return .u8(UInt8(r % 101))
        case 181, 182: return .u16(UInt16(5 + r % 40))
        case 66: return .u16(UInt16(11_500 + r % 3_000))
        case 67: return .u16(UInt16(3_900 + r % 300))
        case 24, 68, 9, 1148: return .u16(UInt16(truncatingIfNeeded: r % 4_000))
        case 205, 206: return .u16(UInt16(truncatingIfNeeded: r))
        case 241: return .u32(24_601)
        case 199: return .u32(UInt32(r % 2_000))
        case 16: return .u32(UInt32(1_000_000 + r % 50_000_000))
        case 12, 636: return .u32(UInt32(truncatingIfNeeded: r % 100_000_000))
        case 11, 14: return .u64(8_937_011_234_567_890_000 &+ r % 1_000_000)
        default: return .u64(r)
        }
    }
}

/// A small deterministic generator, so every run decodes the same mix.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: - Helpers

/// Input (or output) bytes per second, measured by the benchmark over its own measured region.
let megabytesPerSecond = BenchmarkMetric.custom("MB/s", polarity: .prefersLarger, useScalingFactor: false)

@inline(__always)
func recordMegabytesPerSecond(_ benchmark: Benchmark, bytes: Int, since start: ContinuousClock.Instant) {
    let elapsed = ContinuousClock.now - start
    benchmark.stopMeasurement()
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
    if seconds > 0 { benchmark.measurement(megabytesPerSecond, Int((Double(bytes) / seconds / 1e6).rounded())) }
}

/// Touches every field of a record and every IO element value; returns a checksum to black-hole.
@inline(__always)
func touch(_ record: AVLRecordView) -> UInt64 {
    var acc = record.timestampMs
    acc &+= UInt64(record.priority) &+ UInt64(UInt32(bitPattern: record.longitudeE7))
    acc &+= UInt64(UInt32(bitPattern: record.latitudeE7)) &+ UInt64(UInt16(bitPattern: record.altitudeMeters))
    acc &+= UInt64(record.angleDegrees) &+ UInt64(record.satellites) &+ UInt64(record.speedKmh)
    acc &+= UInt64(record.eventIOID) &+ UInt64(record.generationType ?? 0) &+ UInt64(record.ioTotal)
    for element in record.ioElements {
        acc &+= UInt64(element.id)
        switch element.value {
        case .u8(let v): acc &+= UInt64(v)
        case .u16(let v): acc &+= UInt64(v)
        case .u32(let v): acc &+= UInt64(v)
        case .u64(let v): acc ^= v
        case .bytes(let b): acc &+= UInt64(b.count) &+ UInt64(b.first ?? 0)
        }
    }
    return acc
}

// MARK: - Benchmarks

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.throughput, .wallClock, .mallocCountTotal, megabytesPerSecond],
        warmupIterations: 20,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000_000
    )

    let mix = PacketMix.shared
    let describeMix: Benchmark.BenchmarkSetupHook = {
        print(
            "packet mix: \(mix.frames.count) frames, \(recordsPerPass) records, \(mix.totalBytes) bytes"
                + " (\(mix.totalBytes / recordsPerPass) bytes/record, data fields \(mix.dataFieldBytes) bytes);"
                + " \(mix.fixtureFrames) frames with \(mix.fixtureRecords) records from frames.tsv,"
                + " the rest generated FMB-style Codec 8 / 8E"
        )
    }

    // 1. CRC-16/IBM over a 1 KiB buffer: one scaled iteration = 1 KiB, so Throughput (K) = thousands of KiB/s.
    let kibibyte = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 64)
    var fill = SplitMix64(seed: 1)
    for i in 0..<1024 { kibibyte[i] = UInt8(truncatingIfNeeded: fill.next()) }
    let block = UnsafeRawBufferPointer(kibibyte)
    Benchmark("CRC16 1 KiB buffer (1 iteration = 1 KiB)") { benchmark in
        let start = ContinuousClock.now
        for _ in benchmark.scaledIterations {
            blackHole(CRC16IBM.checksum(block))
        }
        recordMegabytesPerSecond(benchmark, bytes: 1024 * benchmark.scaledIterations.count, since: start)
    }

    // 1b. CRC-16/IBM over the data fields of the mix, at their real lengths.
    Benchmark("CRC16 data fields of the mix (1 iteration = 1 record)") { benchmark in
        precondition(benchmark.scaledIterations.count == recordsPerPass)
        let start = ContinuousClock.now
        for field in mix.dataFields {
            blackHole(CRC16IBM.checksum(field))
        }
        recordMegabytesPerSecond(benchmark, bytes: mix.dataFieldBytes, since: start)
    }

    // 2a. Validation only: AVLPacketView(frame:) checks envelope, CRC, counts and every record's bounds.
    Benchmark("Validate only AVLPacketView(frame:) (1 iteration = 1 record)") { benchmark in
        precondition(benchmark.scaledIterations.count == recordsPerPass)
        let start = ContinuousClock.now
        var records = 0
        for frame in mix.frames {
            guard let packet = try? AVLPacketView(frame: frame) else { fatalError("mix frame rejected") }
            records &+= packet.recordCount
        }
        blackHole(records)
        recordMegabytesPerSecond(benchmark, bytes: mix.totalBytes, since: start)
    }

    // 2. Validate + decode: parse each frame, walk every record and every IO element, touching the values.
    Benchmark(
        "Validate + decode TeltonikaFrame.parse, all records and IO (1 iteration = 1 record)",
        configuration: .init(setup: describeMix)
    ) { benchmark in
        precondition(benchmark.scaledIterations.count == recordsPerPass)
        let start = ContinuousClock.now
        var records = 0
        for frame in mix.frames {
            guard case .avl(let packet)? = try? TeltonikaFrame.parse(frame) else { fatalError("mix frame rejected") }
            var acc: UInt64 = 0
            for record in packet.records {
                acc &+= touch(record)
                records &+= 1
            }
            blackHole(acc)
        }
        precondition(records == recordsPerPass)
        recordMegabytesPerSecond(benchmark, bytes: mix.totalBytes, since: start)
    }

    // 3. Payload JSON of every record of the mix into one reused buffer (records pre-parsed at start).
    let imei = IMEI("356307042441013")!
    Benchmark("Payload JSON RecordJSONEncoder.append (1 iteration = 1 record)") { benchmark in
        precondition(benchmark.scaledIterations.count == recordsPerPass)
        var encoder = RecordJSONEncoder()
        var out: [UInt8] = []
        out.reserveCapacity(8192)
        benchmark.startMeasurement()
        let start = ContinuousClock.now
        var written = 0
        for record in mix.records {
            out.removeAll(keepingCapacity: true)
            encoder.append(record, deviceID: imei, to: &out)
            written &+= out.count
            blackHole(out.last)
        }
        recordMegabytesPerSecond(benchmark, bytes: written, since: start)
    }

    // 4. record_id (issue 12): XXH64 of IMEI, codec byte and the record's wire bytes, as the stream entry
    // encoder computes it beside the JSON above: the IMEI and codec hashed once per packet (here: per codec,
    // the mix has one IMEI), each record's bytes after them. Must stay a fraction of the JSON's time, no malloc.
    Benchmark("record_id AVLRecordView.recordID(prefix:) (1 iteration = 1 record)") { benchmark in
        precondition(benchmark.scaledIterations.count == recordsPerPass)
        let prefixes = [AVLCodec.codec8, .codec8Extended, .codec16].map { XXH64.recordIDPrefix(imei: imei, codec: $0) }
        benchmark.startMeasurement()
        let start = ContinuousClock.now
        var acc: UInt64 = 0
        var hashed = 0
        for record in mix.records {
            acc ^= record.recordID(prefix: prefixes[record.codec == .codec8 ? 0 : record.codec == .codec8Extended ? 1 : 2])
            hashed &+= record.wireBytes.count
        }
        blackHole(acc)
        recordMegabytesPerSecond(benchmark, bytes: hashed, since: start)
    }

    // Control: materialize() copies each record into an owned AVLRecord (an array of IO elements, plus
    // one array per variable-length value). It must allocate; it shows the malloc counter is live.
    Benchmark(
        "Control: AVLRecordView.materialize(), allocates (1 iteration = 1 record)",
        configuration: .init(metrics: [.throughput, .wallClock, .mallocCountTotal])
    ) { benchmark in
        precondition(benchmark.scaledIterations.count == recordsPerPass)
        for record in mix.records {
            blackHole(record.materialize())
        }
    }
}
