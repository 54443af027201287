import FixtureSupport
import Foundation
import NIOCore
import RedisWire
import Testing

@testable import Ingest

/// The hiredis transport against a real `redis-server` (plain TCP).
@Suite(.serialized, .timeLimit(.minutes(1)))
struct HiredisTransportTests {
    /// A batch larger than Redis answers at once (2,000 `XADD`s, about 44 KB of replies) is answered piece by
    /// piece: `answered` hears of the first jobs before the last are answered, each time with more, every one
    /// stored; then the whole batch is answered and in the stream.
    @Test func testALargeBatchIsReportedAnsweredPieceByPiece() throws {
        let certificates = TestCertificates.shared
        let server = try TLSRedisServer(
            certFile: certificates.serverCert,
            keyFile: certificates.serverKey,
            caFile: certificates.caFile,
            plainPort: true
        )
        defer { withExtendedLifetime(server) {} }
        let url = RedisURL(endpoint: .tcp(host: "127.0.0.1", port: server.plainPort!))
        let transport = HiredisTransport(try RedisConnection(url: url, timeoutMs: 5000), endpoint: "test")
        let jobs = (0..<2000).map { n in
            var writer = RESPWriter()
            writer.beginCommand(arguments: 5)
            for argument in ["XADD", "answered", "*", "n", String(n)] { writer.bulk(string: argument) }
            return PublishJob(commands: RESPBuffer(writer), recordCount: 1, deadline: .now() + .seconds(5)) { _ in }
        }
        var reported: [Int] = []
        let result = transport.send(jobs, replicaWait: nil) { answers in
            #expect(answers.allSatisfy { $0 == nil })
            reported.append(answers.count)
        }
        #expect(result.failure == nil)
        #expect(result.answers.count == 2000 && result.answers.allSatisfy { $0 == nil })
        #expect(!reported.isEmpty, "answered was never called")
        #expect(reported == reported.sorted() && Set(reported).count == reported.count, "\(reported)")
        #expect(reported.allSatisfy { $0 > 0 && $0 < 2000 }, "\(reported)")
        #expect(try transport.command(["XLEN", "answered"]) == .integer(2000))
    }
}
