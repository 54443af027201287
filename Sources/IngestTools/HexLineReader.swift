/// Hex captures read as bytes: lines cut on `\n` in large chunks, hex decoded with a table.
import Codec8

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One line of a hex capture, as ``HexLineReader`` hands it over (valid only inside the call).
public struct HexLine {
    /// What the line holds once its comment is cut off.
    public enum Content {
        /// Only ASCII whitespace (space, tab, CR, LF) before the first `#`, or nothing.
        case blank
        /// The frame: the hex digits before the first `#`, decoded.
        case bytes(UnsafeRawBufferPointer)
        /// Something before the first `#` that is neither a hex digit nor whitespace, or an odd digit count.
        case notHex
    }

    /// 1 for the first line of the input.
    public let number: Int
    /// The line as read, with its `\n` when it has one (the last line of an input may not).
    public let bytes: UnsafeRawBufferPointer
    /// Where the comment starts: the offset of the first `#` in ``bytes``, nil when there is none.
    public let commentOffset: Int?
    public let content: Content
}

/// The lines of a hex capture (one frame per line, `#` starts a comment, ASCII whitespace ignored), read
/// from a file, standard input or bytes in memory, for `decode` and `replay`.
///
/// The input is read in chunks of `chunkBytes` into one buffer that is reused (and grown only for a line
/// longer than it); lines are cut on `\n` bytes with `memchr`, so `\r\n` ends a line too (the `\r` is
/// whitespace) and a last line without `\n` is still a line. The hex before the first `#` is decoded by
/// ``Hex/decode(_:into:)`` into a second reused buffer. Nothing is allocated per line, and no byte becomes
/// a `Character`: the `String`-based reading this replaced spent 96 % of `decode`'s time there.
public struct HexLineReader: ~Copyable {
    /// Fills the buffer it is given from the start; returns the bytes written, 0 at the end (negative: an
    /// error, which also ends the input, as `getline` did).
    public typealias Source = (UnsafeMutableRawBufferPointer) -> Int

    /// 256 KiB: big enough that a read costs nothing per line, small enough to stay in the L2 cache.
    public static let defaultChunkBytes = 1 << 18

    private let source: Source
    private let closeOnDeinit: Int32?
    private var buffer: UnsafeMutableRawBufferPointer
    /// Where the first unread line starts, where the bytes read so far end, how far `\n` was searched.
    private var start = 0
    private var end = 0
    private var scanned = 0
    private var sourceEnded = false
    private var frame: UnsafeMutableRawBufferPointer
    private var number = 0

    /// Reads from `source` (tests feed it in chunks of any size).
    public init(chunkBytes: Int = defaultChunkBytes, source: @escaping Source) {
        self.init(chunkBytes: chunkBytes, source: source, closing: nil)
    }

    /// Reads file `path`, or standard input for `-`; nil when it cannot be opened (see `errno`).
    public init?(path: String, chunkBytes: Int = defaultChunkBytes) {
        let fd = path == "-" ? dup(STDIN_FILENO) : open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        self.init(chunkBytes: chunkBytes, source: { Self.read(fd, into: $0) }, closing: fd)
    }

    /// Reads `bytes`, copied out `chunkBytes` at a time.
    public init(bytes: [UInt8], chunkBytes: Int = defaultChunkBytes) {
        var offset = 0
        self.init(chunkBytes: chunkBytes) { buffer in
            let n = min(buffer.count, bytes.count - offset)
            if n > 0 {
                bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + n])) }
            }
            offset += n
            return n
        }
    }

    private init(chunkBytes: Int, source: @escaping Source, closing fd: Int32?) {
        precondition(chunkBytes > 0, "HexLineReader: chunkBytes must be positive")
        self.source = source
        closeOnDeinit = fd
        buffer = .allocate(byteCount: chunkBytes, alignment: 16)
        frame = .allocate(byteCount: 1024, alignment: 16)
    }

    deinit {
        buffer.deallocate()
        frame.deallocate()
        if let closeOnDeinit { close(closeOnDeinit) }
    }

    /// Calls `body` with every line in order, each valid only during its call.
    public mutating func forEachLine<E: Error>(_ body: (HexLine) throws(E) -> Void) throws(E) {
        while let range = nextLine() {
            number += 1
            let bytes = UnsafeRawBufferPointer(rebasing: buffer[range])
            let comment = bytes.isEmpty ? nil : memchr(bytes.baseAddress!, Int32(UInt8(ascii: "#")), bytes.count)
            let commentOffset = comment.map { bytes.baseAddress!.distance(to: UnsafeRawPointer($0)) }
            let content = decode(UnsafeRawBufferPointer(rebasing: bytes[..<(commentOffset ?? bytes.count)]))
            try body(HexLine(number: number, bytes: bytes, commentOffset: commentOffset, content: content))
        }
    }

    /// The hex of `text` decoded into ``frame`` (grown when too small).
    private mutating func decode(_ text: UnsafeRawBufferPointer) -> HexLine.Content {
        if frame.count < text.count / 2 {
            frame.deallocate()
            frame = .allocate(byteCount: text.count, alignment: 16)
        }
        guard let count = Hex.decode(text, into: frame) else { return .notHex }
        return count == 0 ? .blank : .bytes(UnsafeRawBufferPointer(rebasing: frame[..<count]))
    }

    /// The bytes of the next line in ``buffer``, its `\n` included; nil at the end of the input.
    private mutating func nextLine() -> Range<Int>? {
        while true {
            if scanned < end, let newline = memchr(buffer.baseAddress! + scanned, 0x0A, end - scanned) {
                let lineEnd = buffer.baseAddress!.distance(to: newline) + 1
                let line = start..<lineEnd
                start = lineEnd
                scanned = lineEnd
                return line
            }
            scanned = end
            if sourceEnded {
                guard start < end else { return nil }
                let line = start..<end
                start = end
                return line
            }
            refill()
        }
    }

    /// Moves the unfinished line to the front of ``buffer`` (doubling it when the line fills it), then
    /// reads more after it.
    private mutating func refill() {
        if start > 0 {
            if start < end { memmove(buffer.baseAddress!, buffer.baseAddress! + start, end - start) }
            end -= start
            scanned -= start
            start = 0
        }
        if end == buffer.count {
            let larger = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * buffer.count, alignment: 16)
            larger.copyMemory(from: UnsafeRawBufferPointer(buffer))
            buffer.deallocate()
            buffer = larger
        }
        let n = source(UnsafeMutableRawBufferPointer(rebasing: buffer[end...]))
        if n > 0 { end += n } else { sourceEnded = true }
    }

    /// `read(2)` retried on EINTR.
    private static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress!, buffer.count)
            if n < 0 && errno == EINTR { continue }
            return n
        }
    }
}
