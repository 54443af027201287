/// The bounded hand-over between the event loops (which submit jobs) and the publisher thread.
import Foundation
import NIOCore
import Prometheus

/// A FIFO of publish jobs bounded in records, shared by the event loops and the publisher thread.
///
/// Capacity counts a job's records from `submit` until it is completed through ``complete(_:_:)``
/// (queued, taken, or being retried), so a full queue means that many records are waiting for Redis.
/// The publisher thread sleeps in ``wait(until:wakeOnWork:)``; a submit or a stop request wakes it.
final class PublishQueue: @unchecked Sendable {
    /// Records the queue may hold.
    let capacity: Int
    private let metrics: IngestMetrics
    private let condition = NSCondition()
    // Guarded by `condition`:
    /// Jobs not yet taken start at `head`; a taken slot is set to nil at once, so a sent job's commands
    /// are not kept alive by the queue.
    private var jobs: [PublishJob?] = []
    private var head = 0
    private var held = 0
    private var submissions = 0
    /// Bumped by ``wake()``: ends any ``wait(until:wakeOnWork:)``.
    private var wakeups = 0
    private var stopDeadline: NIODeadline? = nil

    init(capacity: Int, metrics: IngestMetrics) {
        self.capacity = capacity
        self.metrics = metrics
    }

    /// Queues a job; false (and the job untouched) when it does not fit or a stop was requested.
    func submit(_ job: PublishJob) -> Bool {
        condition.lock()
        guard stopDeadline == nil, held + job.recordCount <= capacity else {
            condition.unlock()
            return false
        }
        jobs.append(job)
        held += job.recordCount
        submissions &+= 1
        metrics.publishQueueDepth.set(Int64(held))
        condition.broadcast()
        condition.unlock()
        return true
    }

    /// Records held: queued, taken, or retried, until completed.
    var heldRecords: Int {
        condition.lock()
        defer { condition.unlock() }
        return held
    }

    /// Takes queued jobs in order while they fit `maxRecords` (at least one, if any waits).
    func take(maxRecords: Int) -> [PublishJob] {
        condition.lock()
        defer { condition.unlock() }
        var batch: [PublishJob] = []
        var records = 0
        while head < jobs.count, batch.isEmpty || records + jobs[head]!.recordCount <= maxRecords {
            let job = jobs[head]!
            jobs[head] = nil
            head += 1
            records += job.recordCount
            batch.append(job)
        }
        compact()
        return batch
    }

    /// Takes every queued job (the stop deadline passed).
    func takeAll() -> [PublishJob] {
        take(maxRecords: .max)
    }

    /// What the publisher thread needs to decide, read under one lock at `now`.
    struct Front {
        /// Jobs at the front that are cancelled or past their deadline (they complete unsent). Jobs
        /// behind a live one stay: deadlines grow along the queue.
        var dead: [PublishJob]
        /// Whether live jobs wait to be taken.
        var queued: Bool
        /// The deadline of the first live job waiting (the earliest: every job gets the same timeout).
        var firstDeadline: NIODeadline?
        /// When the first live job waiting was made (the oldest waiting).
        var firstEnqueued: NIODeadline? = nil
        /// The stop deadline, once a stop was requested.
        var stopDeadline: NIODeadline?
    }

    /// Takes the dead jobs at the front and reports what is left.
    func front(at now: NIODeadline) -> Front {
        condition.lock()
        defer { condition.unlock() }
        var dead: [PublishJob] = []
        while head < jobs.count, let job = jobs[head], job.isCancelled || job.deadline <= now {
            jobs[head] = nil
            head += 1
            dead.append(job)
        }
        compact()
        let first = head < jobs.count ? jobs[head] : nil
        return Front(
            dead: dead,
            queued: first != nil,
            firstDeadline: first?.deadline,
            firstEnqueued: first?.enqueued,
            stopDeadline: stopDeadline
        )
    }

    /// Completes a taken job: its records leave the queue's count, then its owner is told.
    func complete(_ job: PublishJob, _ outcome: PublishOutcome) {
        complete(CollectionOfOne(job), outcome)
    }

    /// Completes jobs with one outcome: one lock for all of them, one task per event loop
    /// (``PublishJob/complete(_:_:)``).
    func complete(_ jobs: some Collection<PublishJob>, _ outcome: PublishOutcome) {
        guard !jobs.isEmpty else { return }
        let records = jobs.reduce(0) { $0 + $1.recordCount }
        condition.lock()
        held -= records
        metrics.publishQueueDepth.set(Int64(held))
        condition.unlock()
        PublishJob.complete(jobs, outcome)
    }

    /// Sleeps until `deadline`, a stop request, or, with `wakeOnWork`, a job submitted after the call.
    func wait(until deadline: NIODeadline, wakeOnWork: Bool) {
        condition.lock()
        defer { condition.unlock() }
        let seen = submissions
        let stopSeen = stopDeadline
        let woken = wakeups
        while NIODeadline.now() < deadline, stopDeadline == stopSeen, wakeups == woken, !(wakeOnWork && submissions != seen) {
            _ = condition.wait(until: Date(timeIntervalSinceNow: Double((deadline - .now()).nanoseconds) / 1e9))
        }
    }

    /// Wakes the publisher from its wait, work or not (something outside the queue needs it).
    func wake() {
        condition.lock()
        wakeups &+= 1
        condition.broadcast()
        condition.unlock()
    }

    /// Refuses new jobs from now on and wakes the publisher; the first deadline given stands.
    func requestStop(deadline: NIODeadline) {
        condition.lock()
        if stopDeadline == nil { stopDeadline = deadline }
        condition.broadcast()
        condition.unlock()
    }

    /// Drops taken slots once they are most of the array (amortised O(1) per job). Caller holds the lock.
    private func compact() {
        if head > 1024 && head * 2 > jobs.count {
            jobs.removeFirst(head)
            head = 0
        } else if head == jobs.count && head > 0 {
            jobs.removeAll(keepingCapacity: true)
            head = 0
        }
    }
}
