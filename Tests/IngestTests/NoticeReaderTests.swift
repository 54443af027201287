import Codec8
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RedisWire
import Testing

@testable import Ingest

/// The notices reader against a stream in memory that answers `XREAD` as Redis does: `$` means after
/// the last entry at the time of the call, and a block with nothing new answers nil at once.
@Suite(.timeLimit(.minutes(1)))
struct NoticeReaderTests {
    final class Stream: RedisConnector, @unchecked Sendable {
        let lock = NIOLock()
        var entries: [(id: String, imei: String)] = [("5-0", "356307042441013")]
        /// The id each `XREAD` asked after.
        var asked: [String] = []
        /// Added just before the second `XREAD` is answered: between two calls, as a notice written while
        /// the reader was not blocked.
        let addedBetweenReads = (id: "9-0", imei: "356307042441014")

        var description: String { "fake-stream" }
        func connect() throws(RedisConnection.Failure) -> any RedisTransport { Transport(stream: self) }

        final class Transport: RedisTransport {
            let stream: Stream
            let endpoint = "fake"
            init(stream: Stream) { self.stream = stream }
            func send(_ jobs: [PublishJob], replicaWait: ReplicaWait?, answered: ([String?]) -> Void) -> BatchResult {
                BatchResult(answers: [])
            }

            func command(_ arguments: [String]) throws(RedisConnection.Failure) -> RedisConnection.Reply {
                stream.lock.withLock {
                    switch arguments[0] {
                    case "XREVRANGE":
                        return .array(
                            stream.entries.suffix(1).map { .array([.string($0.id), .array([.string("imei"), .string($0.imei)])]) }
                        )
                    case "XREAD":
                        let after = arguments.last!
                        stream.asked.append(after)
                        if stream.asked.count == 2 { stream.entries.append(stream.addedBetweenReads) }
                        let lastBefore = stream.entries.last!.id
                        let from = after == "$" ? lastBefore : after
                        let new = stream.entries.filter { Self.order($0.id) > Self.order(from) }
                        guard !new.isEmpty else { return .null }
                        let items = new.map { RedisConnection.Reply.array([.string($0.id), .array([.string("imei"), .string($0.imei)])]) }
                        return .array([.array([.string(arguments[arguments.count - 2]), .array(items)])])
                    default:
                        return .string("OK")
                    }
                }
            }

            static func order(_ id: String) -> Int { Int(id.split(separator: "-")[0])! }
        }
    }

    /// A notice added after the reader connected, while no `XREAD` was waiting, is read: the reader
    /// reads after a concrete id (the last entry's at connect), never `$` again. With `$` each time
    /// (as before), the second read skipped it.
    @Test func testANoticeAddedBetweenTwoReadsIsRead() async throws {
        let stream = Stream()
        let received = NIOLockedValueBox<[Notice]>([])
        let metrics = IngestMetrics()
        let reader = NoticeReader(
            key: "notices",
            connector: stream,
            timeoutMs: 100,
            read: metrics.commands.notices,
            errors: metrics.commands.storeErrors,
            logger: Logger(label: "test"),
            onNotice: { notice in received.withLockedValue { $0.append(notice) } },
            onResync: {}
        )
        reader.start()
        let deadline = Date().addingTimeInterval(20)
        while received.withLockedValue({ $0.isEmpty }) && stream.lock.withLock({ stream.asked.count }) < 5 && Date() < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        await reader.stop(deadline: .now() + .seconds(2))
        #expect(received.withLockedValue { $0 } == [Notice(imei: IMEI("356307042441014")!, session: nil)], "asked: \(stream.asked)")
        #expect(stream.lock.withLock { stream.asked.prefix(2) } == ["5-0", "5-0"], "from the last entry at connect, not $")
    }
}
