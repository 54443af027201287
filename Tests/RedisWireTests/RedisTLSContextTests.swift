import FixtureSupport
import Foundation
import RedisWire
import Testing

/// `RedisTLSContext` refuses bad inputs at startup and names the one at fault.
struct RedisTLSContextTests {
    private let certificates = sharedCertificates

    @Test func testValidOptionsBuildAndStayReadable() throws {
        let options = RedisTLSOptions(
            caFile: certificates.caFile,
            certFile: certificates.clientCert,
            keyFile: certificates.clientKey,
            serverName: "redis.internal"
        )
        #expect(try RedisTLSContext(options: options).options == options)
        #expect(try RedisTLSContext(options: RedisTLSOptions()).options == RedisTLSOptions())
    }

    @Test func testMissingCAFile() {
        let path = certificates.directory + "/missing-ca.pem"
        let error = #expect(throws: RedisTLSContext.SetupError.self) { try RedisTLSContext(options: .init(caFile: path)) }
        #expect(error?.input == .caFile)
        #expect(error?.message.contains(path) == true)
        #expect(error?.message.contains("No such file or directory") == true, "\(String(describing: error))")
    }

    @Test func testCAFileThatIsNotPEM() throws {
        let path = certificates.directory + "/not-a-certificate.pem"
        try Data("hello\n".utf8).write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: RedisTLSContext.SetupError.self) { try RedisTLSContext(options: .init(caFile: path)) }
        #expect(error?.input == .caFile)
        #expect(error?.message.contains(path) == true, "\(String(describing: error))")
    }

    @Test func testCertificateWithoutKey() {
        let options = RedisTLSOptions(caFile: certificates.caFile, certFile: certificates.clientCert)
        let error = #expect(throws: RedisTLSContext.SetupError.self) { try RedisTLSContext(options: options) }
        #expect(error?.input == .keyFile)
        #expect(error?.message.contains(certificates.clientCert) == true)
    }

    @Test func testKeyWithoutCertificate() {
        let options = RedisTLSOptions(caFile: certificates.caFile, keyFile: certificates.clientKey)
        let error = #expect(throws: RedisTLSContext.SetupError.self) { try RedisTLSContext(options: options) }
        #expect(error?.input == .certFile)
        #expect(error?.message.contains(certificates.clientKey) == true)
    }

    @Test func testKeyThatDoesNotMatchTheCertificate() {
        let options = RedisTLSOptions(caFile: certificates.caFile, certFile: certificates.clientCert, keyFile: certificates.serverKey)
        let error = #expect(throws: RedisTLSContext.SetupError.self) { try RedisTLSContext(options: options) }
        #expect(error?.input == .keyFile)
        #expect(error?.message.contains(certificates.serverKey) == true)
        #expect(error?.message.contains(certificates.clientCert) == true)
        #expect(error?.message.contains("mismatch") == true, "\(String(describing: error))")
    }

    @Test func testMissingCertificateFile() {
        let path = certificates.directory + "/missing-client.pem"
        let options = RedisTLSOptions(caFile: certificates.caFile, certFile: path, keyFile: certificates.clientKey)
        let error = #expect(throws: RedisTLSContext.SetupError.self) { try RedisTLSContext(options: options) }
        #expect(error?.input == .certFile)
        #expect(error?.message.contains(path) == true)
        #expect(error?.description.hasPrefix("certFile: ") == true)
    }
}
