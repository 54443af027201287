/// A packet's (or device message's) Redis commands, what became of them, and who is told.
import NIOCore
import RedisWire
import Synchronization

/// Why a job was given up unconfirmed (the `reason` label of `teltonika_publish_failed_total`).
public enum PublishFailure: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Its deadline (`PUBLISH_TIMEOUT_MS`) passed before Redis confirmed it.
    case timeout
    /// The drain's deadline passed first.
    case shutdown

    public var description: String {
        switch self {
        case .timeout: "Redis did not confirm in time"
        case .shutdown: "shutdown deadline passed"
        }
    }
}

/// What became of a publish job. Only `.stored` allows an ACK.
public enum PublishOutcome: Sendable, Equatable {
    /// Redis answered every command of the job with a stream id.
    case stored
    /// Redis did not confirm every command before the job's deadline (down, failing, or timed out):
    /// the outcome is unknown, so nothing may be ACKed. The device sends the records again.
    case expired(PublishFailure)
    /// The job was cancelled (its connection closed) or the publisher stopped before sending it.
    case dropped
}

/// One packet's worth of Redis commands, and who to tell when Redis has answered.
public final class PublishJob: Sendable {
    /// RESP-formatted commands (one `XADD` per record), written by the event loop before the job was made,
    /// only read after (the publisher sends them from where they are).
    let commands: RESPBuffer
    /// Number of commands in `commands`, so replies to wait for.
    var commandCount: Int { commands.commandCount }
    /// Records the job holds: what it costs in queue capacity.
    public let recordCount: Int
    /// A device message (Codec 12-15) for the responses stream, not telemetry records: not counted in
    /// `teltonika_records_published_total`.
    let isMessage: Bool
    /// After this instant an unconfirmed job completes `.expired`.
    let deadline: NIODeadline
    /// When the job was made (for the publish-duration histogram).
    let enqueued = NIODeadline.now()
    /// Where the completion runs (the device's connection's event loop), or nil: where it is called.
    let eventLoop: (any EventLoop)?
    private let completion: @Sendable (PublishOutcome) -> Void
    /// ``cancelledFlag`` and ``completedFlag``, set once each: an atomic in the job itself, not a locked box
    /// of its own (one allocation and three lock round trips fewer per packet).
    private let flags = Atomic<UInt8>(0)
    private static var cancelledFlag: UInt8 { 1 }
    private static var completedFlag: UInt8 { 2 }

    /// `completion` runs on `eventLoop` when one is given, else on the thread that completes the job.
    init(
        commands: RESPBuffer,
        recordCount: Int,
        deadline: NIODeadline,
        isMessage: Bool = false,
        eventLoop: (any EventLoop)? = nil,
        completion: @escaping @Sendable (PublishOutcome) -> Void
    ) {
        self.commands = commands
        self.eventLoop = eventLoop
        self.recordCount = recordCount
        self.isMessage = isMessage
        self.deadline = deadline
        self.completion = completion
    }

    /// The connection closed: skip the job if it has not been sent yet.
    public func cancel() {
        flags.bitwiseOr(Self.cancelledFlag, ordering: .relaxed)
    }

    var isCancelled: Bool { flags.load(ordering: .relaxed) & Self.cancelledFlag != 0 }

    /// Calls the completion once (on the job's event loop, if it has one); later calls do nothing.
    func complete(_ outcome: PublishOutcome) {
        guard claim() else { return }
        if let eventLoop {
            eventLoop.execute { self.completion(outcome) }
        } else {
            completion(outcome)
        }
    }

    /// Completes `jobs` with one outcome, as ``complete(_:)`` each, but with one task per event loop for all of
    /// its jobs (in order), not one per job: the publisher completes a batch of a few hundred jobs between
    /// two batches, Redis idle meanwhile, and a task per job (two locks each, shared with the loop) took up
    /// to a third of that cycle at half the peak rate (docs/PERFORMANCE.md, "Issue 19, third pass").
    static func complete(_ jobs: some Sequence<PublishJob>, _ outcome: PublishOutcome) {
        var groups: [(loop: any EventLoop, jobs: [PublishJob])] = []
        for job in jobs where job.claim() {
            guard let loop = job.eventLoop else {
                job.completion(outcome)
                continue
            }
            if let index = groups.firstIndex(where: { $0.loop === loop }) {
                groups[index].jobs.append(job)
            } else {
                groups.append((loop, [job]))
            }
        }
        for (loop, jobs) in groups {
            loop.execute {
                for job in jobs { job.completion(outcome) }
            }
        }
    }

    /// Sets the completed flag; true for the one caller that set it.
    private func claim() -> Bool {
        flags.bitwiseOr(Self.completedFlag, ordering: .acquiringAndReleasing).oldValue & Self.completedFlag == 0
    }
}
