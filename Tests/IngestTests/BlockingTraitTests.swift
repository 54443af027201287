import FixtureSupport
import Testing

/// `.blocking` moves a suite's tests off the cooperative pool (a blocking test there starved the async
/// tests of the 2-core machine); tests without it stay on the pool.
@Suite(.blocking)
struct BlockingTraitTests {
    @Test func testABlockingSuitesTestRunsOnTheBlockingExecutor() {
        #expect(BlockingTestExecutor.isCurrent)
    }

    @Test func testAnAsyncTestResumesOnTheBlockingExecutorAfterASuspension() async throws {
        try await Task.sleep(for: .milliseconds(1))
        #expect(BlockingTestExecutor.isCurrent)
    }
}

struct CooperativePoolTests {
    @Test func testATestWithoutTheTraitRunsOnTheCooperativePool() {
        #expect(!BlockingTestExecutor.isCurrent)
    }
}
