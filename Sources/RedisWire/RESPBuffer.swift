/// RESP commands in memory of their own that does not move once written: a publish job's commands.

#if canImport(Glibc)
import Glibc
#endif

/// Pre-formatted RESP commands in a buffer of their own, written once through ``RESPBufferWriter`` and then
/// only read.
///
/// Why not `[UInt8]`: the publisher sends a batch of these with one `writev`, straight from where they were
/// written (``RedisConnection/write(_:)``), instead of copying each into hiredis' output buffer first; an
/// array's storage may only be pointed at inside `withUnsafeBytes`. And the stream entries are written into
/// it directly, where an array was first written in a scratch buffer, then appended (two copies of every
/// record's bytes fewer: about 7 % of the server's CPU at peak, docs/PERFORMANCE.md).
///
/// Thread safety: one thread writes it (an event loop), then hands it over through a lock (the publish
/// queue), after which it is only read. Nothing checks that: keep it so.
public final class RESPBuffer: @unchecked Sendable {
    // `@exclusivity(unchecked)`: no run-time exclusivity check on these (about 250 instructions per record
    // otherwise, a third of what writing the record costs). Safe here: one thread at a time, and no access
    // to one of them overlaps another access to it (no `inout` of them escapes `write`).

    /// The memory (nil while nothing was reserved); ``capacity`` bytes, the first ``count`` written.
    @exclusivity(unchecked) private var base: UnsafeMutableRawPointer?
    /// Bytes written.
    @exclusivity(unchecked) public private(set) var count = 0
    /// Bytes reserved.
    @exclusivity(unchecked) public private(set) var capacity = 0
    /// Commands written (one reply each).
    @exclusivity(unchecked) public private(set) var commandCount = 0

    /// An empty buffer with `capacity` bytes reserved.
    public init(capacity: Int = 0) {
        if capacity > 0 { resize(to: capacity) }
    }

    /// A copy of `writer`'s commands.
    public convenience init(_ writer: RESPWriter) {
        self.init(copying: writer.bytes, commands: writer.commandCount)
    }

    /// A copy of `bytes`, which hold `commands` whole commands.
    public convenience init(copying bytes: [UInt8], commands: Int) {
        self.init(capacity: bytes.count)
        bytes.withUnsafeBytes { source in
            write(commands: commands, bound: source.count) { $0.raw(source) }
        }
    }

    deinit {
        free(base)
    }

    /// The bytes written. Valid only while this buffer is alive, which the compiler does not ensure for a
    /// temporary: hold it in something that outlives the use (a job in an array), or `withExtendedLifetime` it.
    /// They never move once written, except by a later ``write(commands:bound:_:)`` (the writing thread's).
    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base, count: count)
    }

    /// A copy of the bytes written.
    public var array: [UInt8] {
        withExtendedLifetime(self) { Array(bytes) }
    }

    /// Writes `commands` commands of at most `bound` bytes through `body`, growing the buffer first when
    /// they might not fit (to at least twice its size: a buffer reserved too small is copied rarely).
    /// Writing more than `bound` bytes stops the process: it would have written past the memory.
    public func write(commands: Int, bound: Int, _ body: (inout RESPBufferWriter) -> Void) {
        if capacity - count < bound || base == nil { resize(to: max(count + bound, 2 * capacity, 64)) }
        var writer = RESPBufferWriter(base!.assumingMemoryBound(to: UInt8.self) + count)
        body(&writer)
        precondition(writer.count <= bound, "RESPBuffer: \(writer.count) bytes written, \(bound) reserved")
        count += writer.count
        commandCount += commands
    }

    /// Gives back reserved memory beyond what was written when it is more than a quarter of it (a job
    /// waits in the publish queue, which is bounded in records, not bytes).
    public func trim() {
        if capacity - count > count / 4 { resize(to: count) }
    }

    private func resize(to size: Int) {
        guard size != capacity else { return }
        if size == 0 {
            free(base)
            base = nil
            capacity = 0
            return
        }
        guard let grown = realloc(base, size) else { fatalError("RESPBuffer: out of memory (\(size) bytes)") }
        base = grown
        capacity = size
    }
}
