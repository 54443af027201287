import FixtureSupport
import RedisWire
import Testing

/// `rediss://` against a real `redis-server` with TLS: the same commands and replies as the plain path, and
/// every way the handshake can fail named as such, never plain text, never a hang.
@Suite(.serialized, .blocking)
struct RedisTLSConnectionTests {
    private let certificates = sharedCertificates

    private func url(_ port: Int, host: String = "127.0.0.1", password: String? = nil, database: Int = 0) -> RedisURL {
        RedisURL(endpoint: .tcp(host: host, port: port), password: password, database: database, tls: true)
    }

    /// A TLS redis-server with a plain port too, and a connection over each (plain first).
    private func plainAndTLS(timeoutMs: Int) throws -> (server: TLSRedisServer, connections: [RedisConnection]) {
        let server = try startServer(plainPort: true)
        let plain = try RedisConnection(url: RedisURL(endpoint: .tcp(host: "127.0.0.1", port: server.plainPort!)), timeoutMs: timeoutMs)
        let tls = try RedisConnection(url: url(server.tlsPort), timeoutMs: timeoutMs, tls: testContext())
        return (server, [plain, tls])
    }

    // MARK: - Working

    @Test func testSetGetAndClientName() throws {
        let server = try startServer()
        let redis = try RedisConnection(url: url(server.tlsPort), timeoutMs: 2000, clientName: "tls-test", tls: testContext())
        #expect(try redis.command(["SET", "greeting", "hello"]) == .string("OK"))
        #expect(try redis.command(["GET", "greeting"]) == .string("hello"))
        #expect(try redis.command(["GET", "missing"]) == .null)
        #expect(try redis.command(["CLIENT", "GETNAME"]) == .string("tls-test"))
        #expect(try redis.command(["NOSUCHCOMMAND"]).isError)
        // Still usable after an error reply.
        #expect(try redis.command(["INCR", "n"]) == .integer(1))
    }

    @Test func testSameRepliesAsThePlainPath() throws {
        let server = try startServer(plainPort: true)
        let script: [[String]] = [
            ["SET", "k", "v"], ["GET", "k"], ["INCRBY", "n", "41"], ["RPUSH", "l", "a", "b", "c"], ["LRANGE", "l", "0", "-1"],
            ["GET", "nothing"], ["HSET", "k", "f", "v"], ["XADD", "s", "1-1", "f", "v"], ["DEL", "k", "n", "l", "s"],
        ]
        let plain = try RedisConnection(url: RedisURL(endpoint: .tcp(host: "127.0.0.1", port: server.plainPort!)), timeoutMs: 2000)
        let plainReplies = try script.map { try plain.command($0) }
        let tls = try RedisConnection(url: url(server.tlsPort), timeoutMs: 2000, tls: testContext())
        let tlsReplies = try script.map { try tls.command($0) }
        #expect(tlsReplies == plainReplies)
        #expect(tlsReplies[4] == .array([.string("a"), .string("b"), .string("c")]))
        #expect(tlsReplies[6].isError)
    }

    /// `replyError()`, the publisher's read of its `XADD` replies, over plain TCP and TLS: nil for a stream
    /// id, a status or a string; the message of an error reply; the replies stay in step.
    @Test func testReplyErrorNamesOnlyErrorReplies() throws {
        let (server, connections) = try plainAndTLS(timeoutMs: 2000)
        defer { withExtendedLifetime(server) {} }
        for (index, redis) in connections.enumerated() {
            var writer = RESPWriter()
            for command in [
                ["SET", "k\(index)", "v"], ["XADD", "k\(index)", "*", "f", "v"], ["XADD", "s\(index)", "*", "f", "v"],
                ["GET", "k\(index)"], ["MGET", "k\(index)", "missing"], ["INCR", "n\(index)"], ["GET", "missing"],
                ["LPUSH", "k\(index)", "x"],
            ] {
                writer.beginCommand(arguments: command.count)
                for argument in command { writer.bulk(string: argument) }
            }
            try redis.append(writer.bytes)
            #expect(try redis.replyError() == nil, "OK")
            #expect(try redis.replyError()?.hasPrefix("WRONGTYPE") == true)
            #expect(try redis.replyError() == nil, "a stream id")
            #expect(try redis.replyError() == nil, "a string")
            #expect(try redis.replyError() == nil, "an array")
            #expect(try redis.replyError() == nil, "an integer")
            #expect(try redis.replyError() == nil, "nil")
            let wrongType = "WRONGTYPE Operation against a key holding the wrong kind of value"
            #expect(try redis.replyError() == wrongType, "an error after them")
            // The reader has its own object functions back: whole replies again, in step.
            #expect(try redis.command(["XLEN", "s\(index)"]) == .integer(1), "in step")
            #expect(try redis.command(["MGET", "k\(index)", "missing"]) == .array([.string("v"), .null]))
            #expect(try redis.command(["GET", "k\(index)"]) == .string("v"))
        }
    }

    /// `awaitReplies`, as the publisher calls it before reading a big batch's replies, over plain TCP and TLS:
    /// the replies are all there and in step after it; a guess above what comes (a 7-byte `PONG` awaited as
    /// 100 KB) only waits its time, and the socket's low-water mark is back to 1 after it (else every later
    /// read would wait for the mark until the connection's timeout).
    @Test func testAwaitRepliesWaitsOnceAndLeavesReadsAsTheyWere() throws {
        let (server, connections) = try plainAndTLS(timeoutMs: 2000)
        defer { withExtendedLifetime(server) {} }
        for (index, redis) in connections.enumerated() {
            var writer = RESPWriter()
            for i in 0..<2000 {
                writer.beginCommand(arguments: 5)
                for argument in ["XADD", "await\(index)", "*", "field", String(repeating: "v", count: i % 50)] {
                    writer.bulk(string: argument)
                }
            }
            try redis.append(writer.bytes)
            try redis.awaitReplies(bytes: 2000 * 22, timeoutMs: 1000)
            var errors = 0
            for _ in 0..<2000 where try redis.replyError() != nil { errors += 1 }
            #expect(errors == 0)
            #expect(try redis.command(["XLEN", "await\(index)"]) == .integer(2000), "in step")

            var ping = RESPWriter()
            ping.beginCommand(arguments: 1)
            ping.bulk(string: "PING")
            try redis.append(ping.bytes)
            try redis.awaitReplies(bytes: 100_000, timeoutMs: 50)
            #expect(redis.receiveLowWaterMark == (index == 0 ? 1 : nil), "the mark is back to 1")
            #expect(try redis.reply() == .string("PONG"))
            #expect(try redis.command(["PING"]) == .string("PONG"), "short replies read at once again")
        }
    }

    /// The mark is never above ``RedisConnection/maxLowWaterMark``: a wait for a megabyte of replies where one
    /// reply 4 KiB over the mark comes returns when the reply is there, not after its 3 s (a larger mark clamps the window of
    /// the connection for its life and lengthened the ACK tail at half peak). Plain TCP only: over TLS the wait
    /// only sends.
    @Test func testAwaitRepliesWaitsForAtMostTheMaximumMark() throws {
        let server = try startServer(plainPort: true)
        let redis = try RedisConnection(url: RedisURL(endpoint: .tcp(host: "127.0.0.1", port: server.plainPort!)), timeoutMs: 5000)
        let value = String(repeating: "x", count: RedisConnection.maxLowWaterMark + 4096)
        #expect(try redis.command(["SET", "big", value]) == .string("OK"))
        try redis.append(RESPBuffer(copying: Array("*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".utf8), commands: 1).array)
        let clock = ContinuousClock()
        let start = clock.now
        try redis.awaitReplies(bytes: 1_000_000, timeoutMs: 3000)
        #expect(clock.now - start < .milliseconds(1500), "\(clock.now - start)")
        #expect(redis.receiveLowWaterMark == 1)
        #expect(try redis.reply() == .string(value))
    }

    /// A batch written in place (as the publisher sends its jobs' buffers), over plain TCP (`writev`) and TLS
    /// (queued): one command queued with `append` first, then 2,000 pieces of about 1 KB (2 MB: more than the
    /// socket takes at once, and more pieces than one `writev` takes), then a last one. Every command arrives
    /// whole and in order, and the replies are in step.
    @Test func testABatchWrittenInPlaceGoesOutWholeAndInOrder() throws {
        let (server, connections) = try plainAndTLS(timeoutMs: 5000)
        defer { withExtendedLifetime(server) {} }
        for (index, redis) in connections.enumerated() {
            let key = "batch\(index)"
            func rpush(_ value: String) -> RESPBuffer {
                var writer = RESPWriter()
                writer.beginCommand(arguments: 3)
                writer.bulk("RPUSH")
                writer.bulk(string: key)
                writer.bulk(string: value)
                return RESPBuffer(writer)
            }
            let pieces = (0..<2000).map { i in rpush("\(i):" + String(repeating: Character(UnicodeScalar(UInt8(97 + i % 26))), count: 1000))
            }
            let last = rpush("last")
            try redis.append(rpush("first").array)
            try withExtendedLifetime((pieces, last)) {
                try redis.write(pieces.lazy.map(\.bytes), then: last.bytes)
            }
            for i in 0..<2002 { #expect(try redis.reply() == .integer(Int64(i + 1))) }
            #expect(try redis.command(["LINDEX", key, "0"]) == .string("first"))
            for i in [0, 1, 1023, 1024, 1025, 1999] {
                guard case .string(let value) = try redis.command(["LINDEX", key, String(i + 1)]) else {
                    Issue.record("no element \(i + 1)")
                    continue
                }
                #expect(value.hasPrefix("\(i):") && value.count == "\(i):".count + 1000, "\(value.prefix(10))")
            }
            #expect(try redis.command(["LINDEX", key, "-1"]) == .string("last"))
        }
    }

    /// A batch to a server that stopped reading: over plain TCP the write itself times out (`SO_SNDTIMEO`), over
    /// TLS the reply that sends it; either way a timeout, and the connection stays failed.
    @Test func testAStalledBatchTimesOutThenUnusable() throws {
        let (server, connections) = try plainAndTLS(timeoutMs: 300)
        server.suspend()
        defer { server.resume() }
        let piece = RESPBuffer(
            copying: Array("*3\r\n$5\r\nRPUSH\r\n$1\r\nl\r\n$65536\r\n".utf8) + Array(repeating: 97, count: 65536) + [13, 10],
            commands: 1
        )
        for redis in connections {
            let pieces = Array(repeating: piece, count: 256)  // 16 MB: more than the socket buffers hold
            let error = #expect(throws: RedisConnection.Failure.self) {
                try withExtendedLifetime(pieces) { try redis.write(pieces.lazy.map(\.bytes)) }
                _ = try redis.reply()
            }
            #expect(error?.kind == .timeout, "\(String(describing: error))")
            let again = #expect(throws: RedisConnection.Failure.self) { try redis.command(["PING"]) }
            #expect(again == error)
        }
    }

    @Test func testPipelinedXADDs() throws {
        let server = try startServer()
        let redis = try RedisConnection(url: url(server.tlsPort), timeoutMs: 5000, tls: testContext())
        var writer = RESPWriter()
        for i in 0..<1000 {
            writer.beginCommand(arguments: 5)
            writer.bulk("XADD")
            writer.bulk("positions")
            writer.bulk("*")
            writer.bulk("record")
            writer.bulk(string: "record number \(i) with some padding to make the batch span several TLS records")
        }
        try redis.append(writer.bytes)
        var ids: [String] = []
        for _ in 0..<writer.commandCount {
            guard case .string(let id) = try redis.reply() else {
                Issue.record("not a stream id")
                return
            }
            ids.append(id)
        }
        #expect(ids.count == 1000)
        #expect(ids.allSatisfy { $0.split(separator: "-").count == 2 && $0.split(separator: "-").allSatisfy { UInt64($0) != nil } })
        #expect(Set(ids).count == 1000)
        #expect(try redis.command(["XLEN", "positions"]) == .integer(1000))
    }

    @Test func testReplyLargerThanOneRecord() throws {
        let server = try startServer()
        let redis = try RedisConnection(url: url(server.tlsPort), timeoutMs: 5000, tls: testContext())
        let value = String((0..<(1 << 20)).map { Character(UnicodeScalar(UInt8(ascii: "a") + UInt8($0 % 26))) })
        #expect(try redis.command(["SET", "big", value]) == .string("OK"))
        #expect(try redis.command(["STRLEN", "big"]) == .integer(1 << 20))
        #expect(try redis.command(["GET", "big"]) == .string(value))
    }

    @Test func testIPv6AndDatabase() throws {
        let server = try startServer()
        let redis = try RedisConnection(url: url(server.tlsPort, host: "::1", database: 3), timeoutMs: 2000, tls: testContext())
        #expect(try redis.command(["SET", "in3", "yes"]) == .string("OK"))
        let zero = try RedisConnection(url: url(server.tlsPort, host: "localhost"), timeoutMs: 2000, tls: testContext())
        #expect(try zero.command(["GET", "in3"]) == .null)
    }

    @Test func testAuth() throws {
        let server = try startServer(password: "s3cret")
        let redis = try RedisConnection(url: url(server.tlsPort, password: "s3cret"), timeoutMs: 2000, tls: testContext())
        #expect(try redis.command(["PING"]) == .string("PONG"))
        var withUser = url(server.tlsPort, password: "s3cret")
        withUser.username = "default"
        _ = try RedisConnection(url: withUser, timeoutMs: 2000, tls: testContext())

        let wrong = connectFailure(url(server.tlsPort, password: "wrong"), tls: try testContext())
        #expect(wrong.failure?.kind == .auth, "\(String(describing: wrong.failure))")
        let none = connectFailure(url(server.tlsPort), tls: try testContext())
        #expect(none.failure?.kind == .protocol, "\(String(describing: none.failure))")
        #expect(none.failure?.message.hasPrefix("NOAUTH") == true)
    }

    // MARK: - Verification

    /// OpenSSL's reason for a chain that ends in a CA we do not trust: redis-server sends the CA with its
    /// certificate (OpenSSL builds the chain from the server's `tls-ca-cert-file`), so it is "self-signed
    /// certificate in certificate chain"; a server that sends the leaf alone gets "unable to get local issuer
    /// certificate".
    private func namesAnUntrustedIssuer(_ failure: RedisConnection.Failure) -> Bool {
        failure.message.contains("self-signed certificate in certificate chain")
            || failure.message.contains("unable to get local issuer certificate")
    }

    @Test func testUnknownCA() throws {
        let server = try startServer()
        let result = connectFailure(url(server.tlsPort), tls: try testContext(RedisTLSOptions(caFile: certificates.otherCAFile)))
        #expect(result.failure?.kind == .tls)
        #expect(result.failure.map(namesAnUntrustedIssuer) == true, "\(String(describing: result.failure))")
    }

    @Test func testSystemTrustStoreIsTheDefault() throws {
        let server = try startServer()
        // No context: the system store, which does not hold the test CA.
        let result = connectFailure(url(server.tlsPort), tls: nil)
        #expect(result.failure?.kind == .tls)
        #expect(result.failure.map(namesAnUntrustedIssuer) == true, "\(String(describing: result.failure))")
    }

    @Test func testExpiredCertificate() throws {
        let server = try startServer(cert: certificates.expiredCert, key: certificates.expiredKey)
        let result = connectFailure(url(server.tlsPort), tls: try testContext())
        #expect(result.failure?.kind == .tls)
        #expect(result.failure?.message.contains("expired") == true, "\(String(describing: result.failure))")
    }

    @Test func testWrongHostName() throws {
        let server = try startServer(cert: certificates.wrongNameCert, key: certificates.wrongNameKey)
        let byName = connectFailure(url(server.tlsPort, host: "localhost"), tls: try testContext())
        #expect(byName.failure?.kind == .tls)
        #expect(byName.failure?.message.contains("hostname mismatch") == true, "\(String(describing: byName.failure))")
        let byAddress = connectFailure(url(server.tlsPort), tls: try testContext())
        #expect(byAddress.failure?.kind == .tls)
        #expect(byAddress.failure?.message.contains("IP address mismatch") == true, "\(String(describing: byAddress.failure))")
    }

    @Test func testServerNameOverride() throws {
        let server = try startServer()
        // 127.0.0.1 by address, checked as the DNS name localhost.
        let localhost = try testContext(RedisTLSOptions(caFile: certificates.caFile, serverName: "localhost"))
        let redis = try RedisConnection(url: url(server.tlsPort), timeoutMs: 2000, tls: localhost)
        #expect(try redis.command(["PING"]) == .string("PONG"))
        // The override is what gets checked, not the URL's host (which the certificate does name).
        let elsewhere = try testContext(RedisTLSOptions(caFile: certificates.caFile, serverName: "elsewhere.example"))
        let result = connectFailure(url(server.tlsPort), tls: elsewhere)
        #expect(result.failure?.kind == .tls)
        #expect(result.failure?.message.contains("hostname mismatch") == true, "\(String(describing: result.failure))")

        let wrongNameServer = try startServer(cert: certificates.wrongNameCert, key: certificates.wrongNameKey)
        let wrongName = try testContext(RedisTLSOptions(caFile: certificates.caFile, serverName: "wrong.example"))
        _ = try RedisConnection(url: url(wrongNameServer.tlsPort), timeoutMs: 2000, tls: wrongName)
    }

    @Test func testClientCertificates() throws {
        let server = try startServer(authClients: true)
        let without = connectFailure(url(server.tlsPort), tls: try testContext())
        #expect(without.failure != nil)
        // TLS 1.3: the handshake completes on the client's side; the server's refusal ends the session before the
        // first reply.
        #expect(without.failure?.kind == .tls, "\(String(describing: without.failure))")
        #expect(without.failure?.message.isEmpty == false)
        let options = RedisTLSOptions(caFile: certificates.caFile, certFile: certificates.clientCert, keyFile: certificates.clientKey)
        let redis = try RedisConnection(url: url(server.tlsPort), timeoutMs: 2000, tls: testContext(options))
        #expect(try redis.command(["PING"]) == .string("PONG"))
    }

    // MARK: - Wrong ports, timeouts, closing

    @Test func testTLSToAPlainPortFailsInTime() throws {
        let server = try startServer(plainPort: true)
        let result = connectFailure(url(server.plainPort!), timeoutMs: 1000, tls: try testContext())
        #expect(result.failure != nil)
        // Plain redis-server reads the ClientHello as an inline command with no end of line: it waits.
        #expect([.timeout, .tls].contains(result.failure?.kind))
        #expect(result.elapsed < .milliseconds(2000), "\(result.elapsed)")
    }

    @Test func testPlainToATLSPortFailsInTime() throws {
        let server = try startServer()
        let plain = RedisURL(endpoint: .tcp(host: "127.0.0.1", port: server.tlsPort))
        let result = connectFailure(plain, timeoutMs: 1000, tls: try testContext())
        #expect(result.failure != nil)
        #expect(result.elapsed < .milliseconds(2000), "\(result.elapsed)")
    }

    /// The handshake's timeout is the one given, applied once: not less, and well under twice it (a second
    /// wait would take 2 s), with room for a busy machine.
    @Test func testSilentServerTimesOut() throws {
        let listener = try SilentListener()
        let result = connectFailure(url(listener.port), timeoutMs: 1000, tls: try testContext())
        #expect(result.failure?.kind == .timeout, "\(String(describing: result.failure))")
        #expect(result.elapsed >= .milliseconds(950))
        #expect(result.elapsed < .milliseconds(1900), "\(result.elapsed)")
    }

    @Test func testConnectRefused() throws {
        let port = try freeLoopbackPort()
        let result = connectFailure(url(port), tls: try testContext())
        #expect(result.failure?.kind == .connect)
        #expect(result.failure?.message == "Connection refused")
    }

    @Test func testReplyTimeoutThenUnusable() throws {
        let server = try startServer()
        let redis = try RedisConnection(url: url(server.tlsPort), timeoutMs: 1000, tls: testContext())
        let clock = ContinuousClock()
        let start = clock.now
        // Bounds far from what a broken timeout takes (the 10 s `BLPOP`), not tight timings a busy machine misses.
        let error = #expect(throws: RedisConnection.Failure.self) { try redis.command(["BLPOP", "never", "10"]) }
        #expect(error?.kind == .timeout)
        #expect(clock.now - start < .milliseconds(5000))
        // As hiredis: the connection stays failed, the next call throws the same failure at once (not after
        // another 1 s timeout).
        let retried = clock.now
        let again = #expect(throws: RedisConnection.Failure.self) { try redis.command(["PING"]) }
        #expect(again == error)
        #expect(clock.now - retried < .milliseconds(500))
    }

    @Test func testServerClosingIsEOF() throws {
        let server = try startServer()
        let redis = try RedisConnection(url: url(server.tlsPort), timeoutMs: 2000, tls: testContext())
        #expect(try redis.command(["QUIT"]) == .string("OK"))
        let error = #expect(throws: RedisConnection.Failure.self) { try redis.reply() }
        #expect(error?.kind == .eof, "\(String(describing: error))")
    }

    @Test func testTLSNeedsATCPEndpoint() {
        let result = connectFailure(RedisURL(endpoint: .unix(path: "/tmp/none.sock"), tls: true), tls: nil)
        #expect(result.failure?.kind == .connect)
        #expect(result.failure?.message.contains("TLS needs a host and port") == true, "\(String(describing: result.failure))")
    }
}

extension RedisConnection.Reply {
    var isError: Bool {
        if case .error = self { return true }
        return false
    }
}
