import Codec8
import FixtureSupport
import Foundation
import IngestTools
import Testing

/// `replay`'s hex files, read by `HexLineReader` as `decode` reads them: CRLF files replay as LF files
/// do, and a line that is not hex is named by its number.
struct ReplayHexInputTests {
    static let sample = Array(try! Data(contentsOf: FixtureCorpus.directory.appendingPathComponent("sample-session.hex")))

    static func kinds(_ session: ReplaySession) -> [String] {
        session.units.map {
            switch $0 {
            case .login: "login"
            case .keepAlive: "ping"
            case .avl(_, let records): "avl:\(records)"
            case .message: "message"
            case .invalid(_, let category): "error:\(category)"
            }
        }
    }

    @Test func testSampleSessionWithLFAndCRLF() throws {
        let lf = try ReplaySession.fromHex(Self.sample, name: "s", maxDataLength: 16_384)
        #expect(Self.kinds(lf).sorted() == ["avl:1", "avl:1", "avl:1", "avl:2", "login", "message", "ping"], "\(Self.kinds(lf))")
        #expect(lf.imei == "356307042441013")
        let crlf = Self.sample.flatMap { $0 == 0x0A ? [0x0D, 0x0A] : [$0] }
        #expect(try ReplaySession.fromHex(crlf, name: "s", maxDataLength: 16_384) == lf)
    }

    @Test func testNotHexNamesTheLine() {
        let text = Array("# c\n000f333536333037303432343431303133\n00 0g\n".utf8)
        #expect(throws: Never.self) { try ReplaySession.fromHex(Array(text.prefix(39)), name: "f", maxDataLength: 100) }
        do {
            _ = try ReplaySession.fromHex(text, name: "f.hex", maxDataLength: 100)
            Issue.record("a line that is not hex must be refused")
        } catch {
            #expect(error.description == "f.hex:3: not hex")
        }
    }
}
