import Codec8
import Dispatch
import FixtureSupport
import Foundation
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import Testing

@testable import Ingest

#if canImport(Glibc)
import Glibc
#endif

/// The whole device server in this process, under a ServiceGroup, with a fake Redis and its own
/// metrics: a device is served over real loopback TCP, then a graceful shutdown drains it.
@Suite(.timeLimit(.minutes(3)))
struct IngestServiceTests {
    /// A blocking loopback client, run off the task pool.
    final class Device: @unchecked Sendable {
        let fd: Int32

        init(port: Int) throws {
            fd = try connectLoopback(port: port)
            var tv = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }

        deinit { close(fd) }

        /// Sends `bytes`, then reads until `count` bytes or the peer closes.
        func exchange(_ bytes: [UInt8], expecting count: Int) async -> [UInt8] {
            await withCheckedContinuation { continuation in
                DispatchQueue.global().async { [self] in
                    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
                    var out: [UInt8] = []
                    var buffer = [UInt8](repeating: 0, count: 64)
                    while out.count < count {
                        let n = recv(fd, &buffer, min(buffer.count, count - out.count), 0)
                        if n <= 0 { break }
                        out += buffer[0..<n]
                    }
                    continuation.resume(returning: out)
                }
            }
        }
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    @Test func testADeviceIsServedThenTheServiceDrainsOnGracefulShutdown() async throws {
        var configuration = IngestConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.shutdownTimeoutMs = 20_000
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let redis = FakeRedis(.init())
        let metrics = IngestMetrics()
        let service = IngestService(configuration: configuration, logger: logger, connector: redis, metrics: metrics)
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: service)], gracefulShutdownSignals: [], logger: logger)
        )
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            var port = 0
            while port == 0 {
                port = service.listeningAddress?.port ?? 0
                try await Task.sleep(for: .milliseconds(5))
            }
            let device = try Device(port: port)
            #expect(await device.exchange(IMEI("356307042441013")!.loginFrame, expecting: 1) == [1])
            let records = (0..<3).map {
                AVLRecord(timestampMs: 1_700_000_000_000 + UInt64($0), ioElements: [IOElement(id: 1, value: .u8(1))])
            }
            #expect(await device.exchange(try AVLPacketEncoder.encode(records, codec: .codec8), expecting: 4) == AVLAck.bytes(count: 3))
            #expect(redis.batchesSent == [[3]], "one job of three records reached Redis before the ACK")

            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            #expect(await device.exchange([], expecting: 1) == [], "the drained session closed its connection")
        }
        let report = try #require(service.drainReport)
        #expect(report.isClean, "\(report)")
        #expect(report.connectionsCut == 0, "the session closed itself; the drain did not have to cut it at the deadline")
        var scrape: [UInt8] = []
        metrics.registry.emit(into: &scrape)
        let text = String(decoding: scrape, as: UTF8.self)
        #expect(text.contains("\nteltonika_acks_total 1\n"), "exactly one ACK, in this server's own registry")
        #expect(text.contains("\nteltonika_records_published_total 3\n"))
    }
}
