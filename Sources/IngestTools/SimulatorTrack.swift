/// Realistic records for simulated trackers (positions, speed, IO values) from a seedable generator.
import Codec8

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// SplitMix64: a small, fast, seedable generator, so a `--seed` replays the same fleet.
struct SimulatorRandom: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// True with probability `p`.
    mutating func chance(_ p: Double) -> Bool { p > 0 && Double.random(in: 0..<1, using: &self) < p }
}

/// One simulated tracker's journey: what its next records say.
///
/// FMB-style records: a vehicle that parks (ignition off, records a minute apart) and drives (ignition
/// on, records a few seconds apart, speed and heading drifting), with the IO elements a typical FMB
/// configuration sends, in every width:
///
/// | width | IO IDs |
/// |---|---|
/// | 1 byte | 239 ignition, 240 movement, 21 GSM signal, 69 GNSS status |
/// | 2 bytes | 66 external voltage, 67 battery voltage, 24 speed, 181 PDOP, 182 HDOP |
/// | 4 bytes | 16 total odometer, 199 trip odometer, 241 GSM operator |
/// | 8 bytes | 11 ICCID part 1, 14 ICCID part 2 |
/// | NX (8E) | 256 VIN, 17 ASCII bytes, in about one record in eight |
///
/// Timestamps are unique and increasing per device. The record array is a template mutated in
/// place, so building a packet allocates little.
struct SimulatorTrack {
    let codec: AVLCodec
    private(set) var records: [AVLRecord]
    private var random: SimulatorRandom
    private var timestampMs: UInt64
    private var latitude: Double
    private var longitude: Double
    private var altitude: Double
    private var heading: Double
    private var speed: Double
    private var ignition = false
    private var moving = false
    /// Records left before the vehicle switches between parked and driving.
    private var phaseLeft = 0
    private var odometerMeters: Double
    private var tripMeters: Double = 0
    private let vin: [UInt8]

    /// Slots of the IO elements in each record's template (the order of `makeTemplate`).
    private enum Slot {
        static let ignition = 0
        static let movement = 1
        static let gsmSignal = 2
        static let gnssStatus = 3
        static let externalVoltage = 4
        static let batteryVoltage = 5
        static let speed = 6
        static let pdop = 7
        static let hdop = 8
        static let odometer = 9
        static let trip = 10
        static let fixedCount = 15
    }

    /// - Parameters:
    ///   - seed: the fleet's seed mixed with the device index.
    ///   - startMs: the first record's time.
    init(codec: AVLCodec, recordsPerPacket: Int, seed: UInt64, startMs: UInt64) {
        self.codec = codec
        var random = SimulatorRandom(seed: seed)
        // Somewhere around the Baltic, each vehicle on its own route.
        latitude = Double.random(in: 53.0..<57.0, using: &random)
        longitude = Double.random(in: 18.0..<28.0, using: &random)
        altitude = Double.random(in: 40..<200, using: &random)
        heading = Double.random(in: 0..<360, using: &random)
        speed = 0
        odometerMeters = Double.random(in: 10_000_000..<300_000_000, using: &random)
        let iccid1 = UInt64.random(in: 8_937_000_000_000_000_000...8_937_099_999_999_999_999, using: &random)
        let iccid2 = UInt64.random(in: 1_000_000_000...9_999_999_999, using: &random)
        vin = Array("WVWZZZ1KZ\(String(UInt64.random(in: 10_000_000...99_999_999, using: &random)))".utf8)
        timestampMs = startMs
        let template = SimulatorTrack.makeTemplate(iccid1: iccid1, iccid2: iccid2)
        records = Array(repeating: template, count: recordsPerPacket)
        self.random = random
    }

    private static func makeTemplate(iccid1: UInt64, iccid2: UInt64) -> AVLRecord {
        var record = AVLRecord(timestampMs: 0)
        record.ioElements = [
            IOElement(id: 239, value: .u8(0)), IOElement(id: 240, value: .u8(0)), IOElement(id: 21, value: .u8(4)),
            IOElement(id: 69, value: .u8(1)), IOElement(id: 66, value: .u16(12_600)), IOElement(id: 67, value: .u16(4_000)),
            IOElement(id: 24, value: .u16(0)), IOElement(id: 181, value: .u16(12)), IOElement(id: 182, value: .u16(8)),
            IOElement(id: 16, value: .u32(0)), IOElement(id: 199, value: .u32(0)), IOElement(id: 241, value: .u32(24_702)),
            IOElement(id: 11, value: .u64(iccid1)), IOElement(id: 14, value: .u64(iccid2)),
            IOElement(id: 200, value: .u8(0)),
        ]
        record.ioElements.reserveCapacity(SimulatorTrack.Slot.fixedCount + 1)
        return record
    }

    /// Moves the journey on by one packet's worth of records (`records` then holds them).
    mutating func advance() {
        for i in records.indices { advanceRecord(i) }
    }

    private mutating func advanceRecord(_ i: Int) {
        var event: UInt16 = 0
        if phaseLeft <= 0 {
            ignition.toggle()
            phaseLeft = ignition ? Int.random(in: 30...300, using: &random) : Int.random(in: 5...40, using: &random)
            event = 239
            if !ignition { tripMeters = 0 }
        }
        phaseLeft -= 1
        let interval: UInt64
        if ignition {
            heading = (heading + Double.random(in: -20...20, using: &random)).truncatingRemainder(dividingBy: 360)
            if !(50...60).contains(latitude) || !(15...35).contains(longitude) {
                // Out of the region: head back to its middle (keeps positions plausible on long runs).
                heading = atan2(25 - longitude, 55 - latitude) * 180 / Double.pi
            }
            if heading < 0 { heading += 360 }
            speed = min(130, max(0, speed + Double.random(in: -12...14, using: &random)))
            interval = UInt64.random(in: 1_000...10_000, using: &random)
        } else {
            speed = 0
            interval = UInt64.random(in: 30_000...120_000, using: &random)
        }
        let nowMoving = speed > 3
        if nowMoving != moving {
            moving = nowMoving
            if event == 0 { event = 240 }
        }
        let meters = speed / 3.6 * Double(interval) / 1000
        let radians = heading * Double.pi / 180
        latitude += meters * cos(radians) / 111_320
        longitude += meters * sin(radians) / (111_320 * cos(latitude * Double.pi / 180))
        altitude = min(400, max(-20, altitude + Double.random(in: -2...2, using: &random)))
        odometerMeters += meters
        tripMeters += meters
        timestampMs += interval

        var priority: UInt8 = event == 0 ? 0 : 1
        if random.chance(0.001) { priority = 2 }
        let satellites = UInt8.random(in: 0...2, using: &random) == 0 ? UInt8.random(in: 4...9, using: &random) : 12

        var r = records[i]
        records[i].ioElements = []  // keeps `r.ioElements` uniquely referenced while it is edited
        r.timestampMs = timestampMs
        r.priority = priority
        r.latitudeE7 = Int32(latitude * 10_000_000)
        r.longitudeE7 = Int32(longitude * 10_000_000)
        r.altitudeMeters = Int16(altitude)
        r.angleDegrees = UInt16(heading) % 360
        r.satellites = satellites
        r.speedKmh = UInt16(speed)
        r.eventIOID = event
        r.ioElements[Slot.ignition].value = .u8(ignition ? 1 : 0)
        r.ioElements[Slot.movement].value = .u8(moving ? 1 : 0)
        r.ioElements[Slot.gsmSignal].value = .u8(UInt8.random(in: 2...5, using: &random))
        r.ioElements[Slot.gnssStatus].value = .u8(satellites > 3 ? 1 : 2)
        r.ioElements[Slot.externalVoltage].value = .u16(
            ignition ? UInt16.random(in: 13_800...14_400, using: &random) : UInt16.random(in: 12_200...12_700, using: &random)
        )
        r.ioElements[Slot.batteryVoltage].value = .u16(UInt16.random(in: 3_950...4_150, using: &random))
        r.ioElements[Slot.speed].value = .u16(UInt16(speed))
        r.ioElements[Slot.pdop].value = .u16(UInt16.random(in: 6...30, using: &random))
        r.ioElements[Slot.hdop].value = .u16(UInt16.random(in: 4...20, using: &random))
        r.ioElements[Slot.odometer].value = .u32(UInt32(odometerMeters.truncatingRemainder(dividingBy: 4_000_000_000)))
        r.ioElements[Slot.trip].value = .u32(UInt32(tripMeters))
        let wantsVIN = codec == .codec8Extended && random.chance(0.125)
        if wantsVIN, r.ioElements.count == Slot.fixedCount {
            r.ioElements.append(IOElement(id: 256, value: .bytes(vin)))
        } else if !wantsVIN, r.ioElements.count > Slot.fixedCount {
            r.ioElements.removeLast()
        }
        records[i] = r
    }
}
