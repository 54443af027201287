import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import RedisWire
import Testing

@testable import Ingest

/// A job's two flags: cancelled (seen by the publisher), and completed once whoever completes it first.
struct PublishJobTests {
    static func job(_ outcomes: NIOLockedValueBox<[PublishOutcome]>) -> PublishJob {
        PublishJob(commands: RESPBuffer(), recordCount: 1, deadline: .now() + .seconds(60)) { outcome in
            outcomes.withLockedValue { $0.append(outcome) }
        }
    }

    @Test func testCancelIsSeenAndDoesNotComplete() {
        let outcomes = NIOLockedValueBox<[PublishOutcome]>([])
        let job = Self.job(outcomes)
        #expect(!job.isCancelled)
        job.cancel()
        job.cancel()
        #expect(job.isCancelled)
        #expect(outcomes.withLockedValue { $0 }.isEmpty)
        job.complete(.dropped)
        #expect(job.isCancelled, "completing leaves the cancelled flag")
        #expect(outcomes.withLockedValue { $0 } == [.dropped])
    }

    /// The first outcome is the one its owner hears, even when threads race to complete it.
    @Test func testTheCompletionRunsOnceWhoeverCompletesFirst() {
        for _ in 0..<200 {
            let outcomes = NIOLockedValueBox<[PublishOutcome]>([])
            let job = Self.job(outcomes)
            DispatchQueue.concurrentPerform(iterations: 4) { i in job.complete(i == 0 ? .stored : .expired(.timeout)) }
            #expect(outcomes.withLockedValue { $0 }.count == 1)
            job.complete(.dropped)
            #expect(outcomes.withLockedValue { $0 }.count == 1, "a later completion does nothing")
            #expect(!job.isCancelled, "completing does not cancel")
        }
    }

    /// A batch completed at once: a job without an event loop hears at once; the others on their own loop, in
    /// the batch's order, only when the loop runs; a job completed before is not completed again.
    @Test func testABatchCompletesEachJobOnceOnItsLoopInOrder() throws {
        let a = EmbeddedEventLoop()
        let b = EmbeddedEventLoop()
        let heard = NIOLockedValueBox<[String]>([])
        func job(_ name: String, on loop: EmbeddedEventLoop?) -> PublishJob {
            PublishJob(commands: RESPBuffer(), recordCount: 1, deadline: .now() + .seconds(60), eventLoop: loop) { outcome in
                if let loop { #expect(loop.inEventLoop, "\(name) on its loop") }
                heard.withLockedValue { $0.append("\(name):\(outcome == .stored ? "stored" : "other")") }
            }
        }
        let done = job("done", on: a)
        done.complete(.dropped)
        a.run()
        #expect(heard.withLockedValue { $0 } == ["done:other"])
        let jobs = [job("a1", on: a), job("b1", on: b), job("free", on: nil), job("a2", on: a), done, job("b2", on: b)]
        PublishJob.complete(jobs, .stored)
        #expect(heard.withLockedValue { $0 } == ["done:other", "free:stored"], "loop jobs wait for their loop")
        b.run()
        a.run()
        #expect(heard.withLockedValue { $0 } == ["done:other", "free:stored", "b1:stored", "b2:stored", "a1:stored", "a2:stored"])
        PublishJob.complete(jobs, .expired(.timeout))
        a.run()
        b.run()
        #expect(heard.withLockedValue { $0 }.count == 6, "completed once")
    }
}
