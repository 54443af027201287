import Codec8
import FixtureSupport

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

/// Byte surgery on packet frames (preamble, u32 length L, L data bytes, 4-byte CRC field) for tests that
/// must get past the envelope checks to reach the record parser.
enum FrameSurgery {
    /// Whether `bytes` is exactly one packet frame: four zero bytes, then a length that accounts for every byte.
    static func isSealedPacket(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= TeltonikaFramer.overhead, bytes[0..<4].allSatisfy({ $0 == 0 }) else { return false }
        return bytes.count == TeltonikaFramer.overhead + Int(bigEndian: bytes[4..<8])
    }

    /// Rewrites the CRC field (`00 00` + CRC-16/IBM) over the data field `[8, count - 4)`, keeping the length field.
    static func recomputeCRC(_ frame: inout [UInt8]) {
        let crc = CRC16IBM.checksum(frame[8..<(frame.count - 4)])
        frame.replaceSubrange((frame.count - 4)..., with: bigEndianBytes(UInt32(crc)))
    }

    /// Rewrites the length field to the data field present, then the CRC: a frame whose envelope is valid.
    static func reseal(_ frame: inout [UInt8]) {
        frame.replaceSubrange(4..<8, with: bigEndianBytes(UInt32(frame.count - TeltonikaFramer.overhead)))
        recomputeCRC(&frame)
    }

    /// `v` as 4 big-endian bytes.
    static func bigEndianBytes(_ v: UInt32) -> [UInt8] {
        [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: v >> $0) }
    }

    /// Decodes `frame` as the server does (a standalone frame), for `#expect(throws:)`.
    static func decode(_ frame: [UInt8]) throws(Codec8Error) {
        try StandaloneFrame.withDecoded(frame) { _ in }
    }
}

extension Int {
    /// A big-endian unsigned integer from up to 8 bytes.
    init(bigEndian bytes: ArraySlice<UInt8>) {
        self = bytes.reduce(0) { $0 << 8 | Int($1) }
    }
}
