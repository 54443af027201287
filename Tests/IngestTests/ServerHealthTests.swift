import Dispatch
import NIOCore
import NIOPosix
import Testing

@testable import Ingest

/// `/healthz`'s check: every device event loop runs a no-op task within the timeout, or it is not alive.
@Suite(.timeLimit(.minutes(1)))
struct ServerHealthTests {
    @Test func testABlockedEventLoopIsNotAlive() async throws {
        let devices = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let metricsLoop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let publisher = RedisPublisherTests.publisher(FakeRedis(.init()))
        let health = ServerHealth(publisher: publisher, eventLoops: devices)
        let probe = metricsLoop.next()
        #expect(try await health.eventLoopsRespond(on: probe, timeout: .seconds(5)).get(), "both loops answer")

        // One device loop stuck in a handler: not alive (the metrics port answers 503).
        let blocked = DispatchSemaphore(value: 0)
        let loops = Array(devices.makeIterator())
        loops[1].execute { blocked.wait() }
        #expect(try await health.eventLoopsRespond(on: probe, timeout: .milliseconds(200)).get() == false)
        blocked.signal()
        #expect(try await health.eventLoopsRespond(on: probe, timeout: .seconds(5)).get(), "alive again once it runs")
        try await devices.shutdownGracefully()
        try await metricsLoop.shutdownGracefully()
    }
}
