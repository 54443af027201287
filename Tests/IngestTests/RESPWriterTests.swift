import RedisWire
import Testing

/// The RESP bytes the publisher pipelines: exact, lengths in decimal.
struct RESPWriterTests {
    @Test func testACommandIsAnArrayOfBulkStrings() {
        var writer = RESPWriter()
        writer.beginCommand(arguments: 3)
        writer.bulk("XLEN")
        writer.bulk(string: "s")
        writer.bulk([UInt8]())
        #expect(String(decoding: writer.bytes, as: UTF8.self) == "*3\r\n$4\r\nXLEN\r\n$1\r\ns\r\n$0\r\n\r\n")
        #expect(writer.commandCount == 1)
    }

    @Test(arguments: [0, 9, 10, 99, 100, 65_535, 1_000_000_007])
    func testLengthsInDecimal(_ n: Int) {
        var writer = RESPWriter()
        writer.beginCommand(arguments: n)
        #expect(String(decoding: writer.bytes, as: UTF8.self) == "*\(n)\r\n")
    }

    @Test func testAFormattedPrefixStartsACommand() {
        let prefix = RESPWriter.formatted(arguments: 2, leading: [Array("PING".utf8)])
        var writer = RESPWriter()
        writer.beginCommand(prefix: prefix)
        writer.bulk("hi")
        #expect(String(decoding: writer.bytes, as: UTF8.self) == "*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n")
        #expect(writer.commandCount == 1)
    }
}

/// The pointer writer the stream entries are formatted with: the same bytes as ``RESPWriter``'s, within
/// its bound.
struct RESPBufferWriterTests {
    /// Writes `values` as one command of bulk strings with a ``RESPBufferWriter`` sized by its bounds.
    static func command(_ values: [[UInt8]]) -> [UInt8] {
        let bound = values.reduce(8) { $0 + RESPBufferWriter.bulkBound($1.count) }
        var out = [UInt8](repeating: 0xEE, count: bound)
        let written = out.withUnsafeMutableBufferPointer { buffer in
            var writer = RESPBufferWriter(buffer.baseAddress!)
            Array("*\(values.count)\r\n".utf8).withUnsafeBytes { writer.raw($0) }
            for value in values { writer.bulk(value) }
            return writer.count
        }
        #expect(written <= bound)
        return Array(out[..<written])
    }

    /// Lengths on each side of a change in digit count, and a literal.
    @Test(arguments: [0, 1, 9, 10, 99, 100, 999, 1000, 10_000, 65_536])
    func testBulkStringsMatchRESPWriter(_ length: Int) {
        let value = (0..<length).map { UInt8(truncatingIfNeeded: $0) }
        var reference = RESPWriter()
        reference.beginCommand(arguments: 3)
        reference.bulk("XADD")
        reference.bulk(value)
        reference.bulk([UInt8]())
        #expect(Self.command([Array("XADD".utf8), value, []]) == reference.bytes)
    }

    @Test(arguments: [0, 7, 10, 12_345, Int(Int32.max), Int.max])
    func testDecimalsAreExact(_ n: Int) {
        var out = [UInt8](repeating: 0, count: 40)
        let written = out.withUnsafeMutableBufferPointer { buffer in
            var writer = RESPBufferWriter(buffer.baseAddress!)
            writer.decimal(n)
            writer.bulk("ok")
            return Array(writer.written)
        }
        #expect(String(decoding: written, as: UTF8.self) == "\(n)$2\r\nok\r\n")
    }

    @Test func testAppendedCommandsAreCounted() {
        var writer = RESPWriter()
        let bytes = Self.command([Array("PING".utf8)])
        bytes.withUnsafeBufferPointer { writer.append(commands: 1, formatted: $0) }
        bytes.withUnsafeBufferPointer { writer.append(commands: 1, formatted: $0) }
        #expect(writer.bytes == bytes + bytes)
        #expect(writer.commandCount == 2)
    }
}
