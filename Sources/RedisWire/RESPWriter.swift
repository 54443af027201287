/// Writes Redis commands as RESP bytes, ready to pipeline.

/// Writes Redis commands in RESP form into a reused buffer, ready for `redisAppendFormattedCommand`.
///
/// The publisher sends whole batches this way: measured here, pre-formatted RESP reached 0.97 of the
/// `redis-benchmark` ceiling where one `redisAppendCommandArgv` per record reached 0.74.
public struct RESPWriter: Sendable {
    /// The bytes written so far.
    public var bytes: [UInt8] = []
    /// How many commands `bytes` holds (one reply each).
    public private(set) var commandCount = 0

    public init() {}

    /// Starts a command of `arguments` bulk strings.
    public mutating func beginCommand(arguments: Int) {
        bytes.append(UInt8(ascii: "*"))
        appendDecimal(arguments)
        bytes.append(0x0D)
        bytes.append(0x0A)
        commandCount += 1
    }

    /// Appends one bulk string.
    public mutating func bulk(_ value: some Collection<UInt8>) {
        bytes.append(UInt8(ascii: "$"))
        appendDecimal(value.count)
        bytes.append(0x0D)
        bytes.append(0x0A)
        bytes.append(contentsOf: value)
        bytes.append(0x0D)
        bytes.append(0x0A)
    }

    public mutating func bulk(_ value: StaticString) {
        value.withUTF8Buffer { bulk($0) }
    }

    /// Appends one bulk string from a `String` (named apart, so that literals take the `StaticString`
    /// overload and cost no allocation).
    public mutating func bulk(string value: String) {
        bulk(Array(value.utf8))
    }

    /// Appends a command whose leading bulk strings were formatted once (``formatted(arguments:leading:)``); the
    /// caller appends the remaining `arguments` of it.
    public mutating func beginCommand(prefix: [UInt8]) {
        bytes.append(contentsOf: prefix)
        commandCount += 1
    }

    /// The RESP bytes of a command's first `leading` arguments, for ``beginCommand(prefix:)``.
    public static func formatted(arguments: Int, leading: [[UInt8]]) -> [UInt8] {
        var writer = RESPWriter()
        writer.beginCommand(arguments: arguments)
        for argument in leading { writer.bulk(argument) }
        return writer.bytes
    }

    /// Appends `commands` commands formatted elsewhere (a ``RESPBufferWriter``'s bytes), in one copy.
    public mutating func append(commands: Int, formatted: UnsafeBufferPointer<UInt8>) {
        bytes.append(contentsOf: formatted)
        commandCount += commands
    }

    /// Appends a non-negative number in decimal ASCII.
    private mutating func appendDecimal(_ value: Int) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { buffer in
            var writer = RESPBufferWriter(buffer.baseAddress!)
            writer.decimal(value)
            bytes.append(contentsOf: writer.written)
        }
    }
}
