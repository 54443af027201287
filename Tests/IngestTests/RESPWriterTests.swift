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
