/// Reads back pre-formatted RESP commands: where each one is, and its arguments, without copying.

/// Finds the commands in bytes that ``RESPWriter`` wrote (RESP arrays of bulk strings, back to back),
/// so a router can read a command's key and send some of a batch's commands again on their own.
///
/// ```
/// *3\r\n $4\r\n XLEN\r\n ...      one command: "*" count CRLF, then count times
///  ^ count  ^ "$" length CRLF, length bytes, CRLF
/// ```
///
/// Anything else (an inline command, a truncated or malformed array, a length that runs past the end)
/// is nil: these bytes come from our own writer, so that is a bug to report, never to guess around.
/// `bytes` is indexed from 0 (an array, or an `UnsafeRawBufferPointer` such as a ``RESPBuffer``'s).
public enum RESPCommandScanner {
    /// The byte range of each command in `bytes`, in order; nil unless `bytes` is whole commands.
    public static func commands<Bytes: RandomAccessCollection<UInt8>>(in bytes: Bytes) -> [Range<Int>]? where Bytes.Index == Int {
        precondition(bytes.startIndex == 0, "RESPCommandScanner: bytes are indexed from 0")
        var ranges: [Range<Int>] = []
        var index = 0
        while index < bytes.count {
            guard let end = skipCommand(bytes, from: index) else { return nil }
            ranges.append(index..<end)
            index = end
        }
        return ranges
    }

    /// The byte range of each argument (a bulk string's contents) of the command starting at `start`,
    /// at most `limit` of them; nil when no whole command starts there.
    public static func arguments<Bytes: RandomAccessCollection<UInt8>>(
        in bytes: Bytes,
        command start: Int,
        limit: Int = .max
    ) -> [Range<Int>]? where Bytes.Index == Int {
        precondition(bytes.startIndex == 0, "RESPCommandScanner: bytes are indexed from 0")
        var index = start
        guard let count = header(bytes, at: &index, marker: UInt8(ascii: "*")) else { return nil }
        var arguments: [Range<Int>] = []
        for _ in 0..<count {
            guard arguments.count < limit else { break }
            guard let argument = bulk(bytes, at: &index) else { return nil }
            arguments.append(argument)
        }
        return arguments
    }

    /// Where the command starting at `start` ends; nil when it is not whole.
    private static func skipCommand<Bytes: RandomAccessCollection<UInt8>>(_ bytes: Bytes, from start: Int) -> Int?
    where Bytes.Index == Int {
        var index = start
        guard let count = header(bytes, at: &index, marker: UInt8(ascii: "*")), count > 0 else { return nil }
        for _ in 0..<count {
            guard bulk(bytes, at: &index) != nil else { return nil }
        }
        return index
    }

    /// Reads `$<length>\r\n<bytes>\r\n` at `index`, moving past it; the contents' range.
    private static func bulk<Bytes: RandomAccessCollection<UInt8>>(_ bytes: Bytes, at index: inout Int) -> Range<Int>?
    where Bytes.Index == Int {
        guard let length = header(bytes, at: &index, marker: UInt8(ascii: "$")) else { return nil }
        let end = index + length
        guard end + 2 <= bytes.count, bytes[end] == 0x0D, bytes[end + 1] == 0x0A else { return nil }
        defer { index = end + 2 }
        return index..<end
    }

    /// Reads `<marker><decimal>\r\n` at `index`, moving past it; the number.
    private static func header<Bytes: RandomAccessCollection<UInt8>>(_ bytes: Bytes, at index: inout Int, marker: UInt8) -> Int?
    where Bytes.Index == Int {
        guard index < bytes.count, bytes[index] == marker else { return nil }
        var i = index + 1
        var value = 0
        var digits = 0
        while i < bytes.count, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") {
            guard digits < 10 else { return nil }
            value = value * 10 + Int(bytes[i] - UInt8(ascii: "0"))
            digits += 1
            i += 1
        }
        guard digits > 0, i + 1 < bytes.count, bytes[i] == 0x0D, bytes[i + 1] == 0x0A else { return nil }
        index = i + 2
        return value
    }
}
