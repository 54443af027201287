/// Writes RESP through a raw pointer into memory the caller has sized: the publisher's hot path.

/// Writes RESP bytes through a raw pointer, with no capacity or uniqueness check per byte: the caller
/// guarantees room for everything written (``bulkBound(_:)`` per bulk string). `count` is the number of
/// bytes written so far.
///
/// Why: the stream entries' `XADD`s written with ``RESPWriter``'s appends (three or more per argument,
/// each checking the array's capacity and uniqueness, generic across the module boundary) cost about
/// 9,000 instructions per record, half the server's work per record (docs/PERFORMANCE.md, "Instructions
/// per record"). The same bytes written here, then appended once, cost a few hundred.
public struct RESPBufferWriter {
    @usableFromInline let base: UnsafeMutablePointer<UInt8>
    @usableFromInline var position = 0

    /// Bytes written so far.
    @inlinable
    public var count: Int { position }

    @inlinable
    public init(_ base: UnsafeMutablePointer<UInt8>) {
        self.base = base
    }

    /// The bytes written so far.
    @inlinable
    public var written: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: base, count: position) }

    /// The most bytes ``bulk(_:)`` writes for a value of `length` bytes: `$`, at most 20 digits, CRLF,
    /// the value, CRLF.
    @inlinable
    public static func bulkBound(_ length: Int) -> Int { length &+ 25 }

    /// Copies `bytes` as they are (a command's pre-formatted start, ``RESPWriter/formatted(arguments:leading:)``).
    @inlinable
    public mutating func raw(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress else { return }
        UnsafeMutableRawPointer(base + position).copyMemory(from: source, byteCount: bytes.count)
        position &+= bytes.count
    }

    /// One bulk string: `$<length>\r\n<value>\r\n`.
    @inlinable
    public mutating func bulk(_ value: UnsafeRawBufferPointer) {
        base[position] = UInt8(ascii: "$")
        position &+= 1
        decimal(value.count)
        crlf()
        raw(value)
        crlf()
    }

    /// One bulk string from a literal (`"ts"`, `"payload"`).
    @inlinable
    public mutating func bulk(_ value: StaticString) {
        bulk(UnsafeRawBufferPointer(start: value.utf8Start, count: value.utf8CodeUnitCount))
    }

    /// One bulk string from an array's bytes.
    @inlinable
    public mutating func bulk(_ value: [UInt8]) {
        value.withUnsafeBytes { bulk($0) }
    }

    /// A non-negative number in decimal ASCII: at most 20 bytes.
    @inlinable
    public mutating func decimal(_ value: Int) {
        precondition(value >= 0, "RESP lengths are never negative")
        // Most lengths in an entry (field names, values but the payload) have one or two digits.
        if value < 10 {
            base[position] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value)
            position &+= 1
            return
        }
        if value < 100 {
            base[position] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value / 10)
            base[position &+ 1] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value % 10)
            position &+= 2
            return
        }
        var digits = 1
        var rest = value / 10
        while rest > 0 {
            digits &+= 1
            rest /= 10
        }
        var n = value
        var index = position &+ digits
        repeat {
            index &-= 1
            base[index] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: n % 10)
            n /= 10
        } while n > 0
        position &+= digits
    }

    @inlinable
    mutating func crlf() {
        base[position] = 0x0D
        base[position &+ 1] = 0x0A
        position &+= 2
    }
}
