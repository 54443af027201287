import Dispatch
import Testing

/// Runs a test off Swift's cooperative thread pool, on a thread of its own.
///
/// Swift Testing calls a synchronous test from an async context, so a test that blocks (waits for a
/// process, a socket, a condition) holds one of the pool's threads, and the pool has one per core: on
/// this project's 2-core machines two blocking integration tests left every async test (and every test's
/// time limit) without a thread for minutes, and async unit tests failed their timing on a starved task.
/// Suites whose tests block carry `.blocking`; their tests then run on ``BlockingTestExecutor``.
public struct BlockingTrait: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    public func provideScope(
        for test: Test,
        testCase: Test.Case?,
        performing function: @Sendable () async throws -> Void
    ) async throws {
        guard testCase != nil else { return try await function() }
        try await withTaskExecutorPreference(BlockingTestExecutor.shared) { try await function() }
    }
}

extension Trait where Self == BlockingTrait {
    /// The suite's tests block their thread: they run off the cooperative pool (``BlockingTrait``).
    public static var blocking: Self { BlockingTrait() }
}

/// A task executor that runs each job on a thread of libdispatch's overcommitting pool, which adds a
/// thread whenever every existing one is busy (a serial queue per job targets that pool): a job that
/// blocks never delays another.
public final class BlockingTestExecutor: TaskExecutor {
    public static let shared = BlockingTestExecutor()
    private static let mark = DispatchSpecificKey<Bool>()

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        let queue = DispatchQueue(label: "teltonika-tests.blocking")
        queue.setSpecific(key: Self.mark, value: true)
        queue.async { job.runSynchronously(on: executor) }
    }

    /// Whether the caller runs on one of its threads (a test checks that `.blocking` tests do).
    public static var isCurrent: Bool { DispatchQueue.getSpecific(key: mark) == true }
}
