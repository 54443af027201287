import Codec8

/// A small, seeded generator so every random test is reproducible (SplitMix64).
struct SeededGenerator: RandomNumberGenerator {
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

/// Random records that every codec can carry, with IO elements already in wire (group) order.
enum RandomRecords {
    static func record(codec: AVLCodec, small: Bool = false, using g: inout SeededGenerator) -> AVLRecord {
        let idMax: UInt16 = codec == .codec8 ? 255 : .max
        var elements: [IOElement] = []
        let groups = codec.hasVariableGroup ? 5 : 4
        // Totals stay within a 1-byte count for Codec 8 and 16.
        let perGroupMax = small ? 3 : codec == .codec8Extended && Int.random(in: 0..<20, using: &g) == 0 ? 300 : 12
        for group in 0..<groups {
            for _ in 0..<Int.random(in: 0...perGroupMax, using: &g) {
                let id = UInt16.random(in: 0...idMax, using: &g)
                let value: IOElementValue
                switch group {
                case 0: value = .u8(.random(in: .min ... .max, using: &g))
                case 1: value = .u16(.random(in: .min ... .max, using: &g))
                case 2: value = .u32(.random(in: .min ... .max, using: &g))
                case 3: value = .u64(.random(in: .min ... .max, using: &g))
                default:
                    let n =
                        !small && Int.random(in: 0..<20, using: &g) == 0
                        ? Int.random(in: 0...600, using: &g) : Int.random(in: 0...24, using: &g)
                    value = .bytes((0..<n).map { _ in UInt8.random(in: .min ... .max, using: &g) })
                }
                elements.append(IOElement(id: id, value: value))
            }
        }
        return AVLRecord(
            timestampMs: Bool.random(using: &g)
                ? .random(in: 1_400_000_000_000...1_900_000_000_000, using: &g) : .random(in: .min ... .max, using: &g),
            priority: .random(in: .min ... .max, using: &g),
            longitudeE7: .random(in: .min ... .max, using: &g),
            latitudeE7: .random(in: .min ... .max, using: &g),
            altitudeMeters: .random(in: .min ... .max, using: &g),
            angleDegrees: .random(in: .min ... .max, using: &g),
            satellites: .random(in: .min ... .max, using: &g),
            speedKmh: .random(in: .min ... .max, using: &g),
            eventIOID: .random(in: 0...idMax, using: &g),
            generationType: codec == .codec16 ? .random(in: .min ... .max, using: &g) : nil,
            ioElements: elements
        )
    }
}

/// Cuts a byte stream the way the server's bounded reader does, fed in arbitrary chunks.
struct StreamCutter {
    enum Event: Equatable {
        case login([UInt8])
        case keepAlive
        case frame([UInt8])
    }

    var cutter = TeltonikaFrameCutter()
    var buffer: [UInt8] = []
    var events: [Event] = []
    /// The most bytes ever held at once.
    var highWater = 0

    mutating func feed(_ chunk: some Collection<UInt8>) throws(Codec8Error) {
        buffer.append(contentsOf: chunk)
        highWater = max(highWater, buffer.count)
        while !buffer.isEmpty {
            switch try cutter.next(buffer) {
            case .needMore(let n):
                precondition(n > 0)
                return
            case .keepAlive:
                events.append(.keepAlive)
                buffer.removeFirst()
            case .login(let length):
                events.append(.login(Array(buffer[..<length])))
                buffer.removeFirst(length)
            case .frame(let length):
                events.append(.frame(Array(buffer[..<length])))
                buffer.removeFirst(length)
            }
        }
    }
}
