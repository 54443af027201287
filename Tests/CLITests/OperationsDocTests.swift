import FixtureSupport
import Foundation
import Testing

/// Docs move with code: every log event, metric and setting the sources use has its row in OPERATIONS.md.
struct OperationsDocTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let sources: String = {
        let enumerator = FileManager.default.enumerator(at: root.appendingPathComponent("Sources"), includingPropertiesForKeys: nil)!
        var text = ""
        for case let url as URL in enumerator where url.pathExtension == "swift" || url.pathExtension == "c" {
            text += (try? String(contentsOf: url, encoding: .utf8)) ?? ""
        }
        return text
    }()

    static let operations = try! String(contentsOf: root.appendingPathComponent("OPERATIONS.md"), encoding: .utf8)

    static func matches(_ pattern: String) -> Set<String> {
        let regex = try! NSRegularExpression(pattern: pattern)
        let range = NSRange(sources.startIndex..., in: sources)
        return Set(regex.matches(in: sources, range: range).map { String(sources[Range($0.range(at: 1), in: sources)!]) })
    }

    @Test func testEveryLogEventIsDocumented() {
        let events = OperationsDocTests.matches(#""event": "([a-z_]+\.[a-z_]+)""#)
            .union(OperationsDocTests.matches(#"\\"event\\":\\"([a-z_]+\.[a-z_]+)\\""#))  // the C crash handler's line
        #expect(events.count >= 20)
        for event in events { #expect(OperationsDocTests.operations.contains("`\(event)`"), "log event \(event)") }
    }

    @Test func testEveryMetricIsDocumented() {
        let metrics = OperationsDocTests.matches(#""((?:teltonika|process)_[a-z_]+)""#)
        #expect(metrics.count >= 20)
        for metric in metrics { #expect(OperationsDocTests.operations.contains("`\(metric)`"), "metric \(metric)") }
    }

    @Test func testEverySettingIsDocumented() {
        let settings = OperationsDocTests.matches(#"(?:string|int)\(\s*"([A-Z_]+)""#)
            .union(OperationsDocTests.matches(#"env: "([A-Z_]+)""#))
            .union(OperationsDocTests.matches(#"environment\["([A-Z_]+)"\]"#))
        #expect(settings.count >= 17)
        for env in settings { #expect(OperationsDocTests.operations.contains("`\(env)`"), "setting \(env)") }
    }
}
