import Testing

@testable import RedisWire

#if canImport(Glibc)
import Glibc
#endif

/// The publish jobs' command buffer, and how a batch written in part resumes.
struct RESPBufferTests {
    /// Commands written past what was reserved: the buffer grows and what was written before is kept, byte for
    /// byte; the count of commands adds up; trimming keeps the bytes.
    @Test func testGrowingKeepsWhatWasWritten() {
        let buffer = RESPBuffer(capacity: 10)
        var expected = RESPWriter()
        let prefix = RESPWriter.formatted(arguments: 2, leading: [Array("ECHO".utf8)])
        for i in 0..<200 {
            let value = Array(repeating: UInt8(ascii: "a") + UInt8(i % 26), count: i * 7)
            buffer.write(commands: 1, bound: 64 + RESPBufferWriter.bulkBound(value.count)) { w in
                prefix.withUnsafeBytes { w.raw($0) }
                w.bulk(value)
            }
            expected.beginCommand(arguments: 2)
            expected.bulk("ECHO")
            expected.bulk(value)
        }
        #expect(buffer.commandCount == 200)
        #expect(buffer.count == expected.bytes.count)
        #expect(buffer.capacity >= buffer.count)
        #expect(buffer.array == expected.bytes)
        buffer.trim()
        #expect(buffer.array == expected.bytes)
        #expect(buffer.capacity - buffer.count <= buffer.count / 4)
    }

    @Test func testACopyOfAWriter() {
        var writer = RESPWriter()
        writer.beginCommand(arguments: 1)
        writer.bulk("PING")
        let buffer = RESPBuffer(writer)
        #expect(buffer.array == Array("*1\r\n$4\r\nPING\r\n".utf8))
        #expect(buffer.commandCount == 1)
        #expect(RESPBuffer(copying: [], commands: 0).array == [])
    }

    /// A `writev` that wrote in part: whole pieces are skipped, the piece cut in two resumes after its
    /// written part, and the rest are untouched.
    @Test func testAPartialWriteResumesWhereItStopped() {
        let pieces: [[UInt8]] = [Array("abc".utf8), Array("defgh".utf8), Array("ij".utf8), Array("klmno".utf8)]
        let all = pieces.flatMap { $0 }
        for written in 0...all.count {
            for split in 1..<max(2, all.count - written) {
                var sent: [UInt8] = []
                let storage = pieces.map { piece in
                    let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: piece.count, alignment: 1)
                    memory.copyBytes(from: piece)
                    return memory
                }
                defer { storage.forEach { $0.deallocate() } }
                var iovecs = storage.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
                var first = 0
                // Written in two steps: `written` bytes, then up to `split` more, then the rest.
                for step in [written, split, all.count] {
                    let remaining = iovecs[first...].reduce(0) { $0 + $1.iov_len }
                    let n = min(step, remaining)
                    var left = n
                    for v in iovecs[first...] where left > 0 {
                        let take = min(left, v.iov_len)
                        sent += UnsafeRawBufferPointer(start: v.iov_base, count: take)
                        left -= take
                    }
                    RedisConnection.advance(&iovecs, first: &first, by: n)
                }
                #expect(sent == all, "written \(written), then \(split)")
                #expect(first == iovecs.count)
            }
        }
    }
}
