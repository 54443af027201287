import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import Ingest

/// A job's two flags: cancelled (seen by the publisher), and completed once whoever completes it first.
struct PublishJobTests {
    static func job(_ outcomes: NIOLockedValueBox<[PublishOutcome]>) -> PublishJob {
        PublishJob(commands: [], commandCount: 0, recordCount: 1, deadline: .now() + .seconds(60)) { outcome in
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
}
