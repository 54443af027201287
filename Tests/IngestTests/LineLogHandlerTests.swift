import Foundation
import Logging
import Testing

@testable import Ingest

/// The log line as written: numbers and flags are JSON numbers and booleans, everything else a string.
struct LineLogHandlerTests {
    static func line(_ metadata: Logger.Metadata, format: LineLogHandler.Format = .json) -> String {
        let bytes = LineLogHandler.line(
            level: .info,
            message: "drained",
            metadata: metadata,
            format: format,
            instanceID: "ingest-1",
            milliseconds: 1_700_000_000_123
        )
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test func testNumbersAndFlagsAreJSONNumbersAndBooleans() throws {
        let text = Self.line([
            "event": "server.stopped", "exit_code": .stringConvertible(0), "abandoned_records": .stringConvertible(Int64(-2)),
            "seconds": .stringConvertible(1.25), "retry_in_ms": .stringConvertible(UInt16(400)),
            "redis_thread_finished": .stringConvertible(true), "in_flight": .stringConvertible(false),
            "imei": "356307042441013", "reason": "peer_closed",
        ])
        #expect(
            text
                == #"{"ts":"2023-11-14T22:13:20.123Z","level":"info","event":"server.stopped","msg":"drained","instance_id":"ingest-1","#
                + #""abandoned_records":-2,"exit_code":0,"imei":"356307042441013","in_flight":false,"reason":"peer_closed","#
                + #""redis_thread_finished":true,"retry_in_ms":400,"seconds":1.25}"# + "\n"
        )
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(object["exit_code"] as? Int == 0 && object["seconds"] as? Double == 1.25)
        #expect(object["imei"] as? String == "356307042441013", "a string of digits stays a string")
    }

    /// A value that is not a finite number stays a string: JSON has no NaN or infinity.
    @Test func testNonFiniteNumbersAndOtherValuesAreStrings() {
        let text = Self.line([
            "a": .stringConvertible(Double.nan), "b": .stringConvertible(Double.infinity), "c": .stringConvertible("42"),
        ])
        #expect(text.hasSuffix(#","a":"nan","b":"inf","c":"42"}"# + "\n"), "\(text)")
    }

    @Test func testTextFormatIsUnchanged() {
        let text = Self.line(
            ["event": "server.stopped", "exit_code": .stringConvertible(0), "finished": .stringConvertible(true)],
            format: .text
        )
        #expect(text == "2023-11-14T22:13:20.123Z INFO server.stopped: drained instance_id=ingest-1 exit_code=0 finished=true\n")
    }
}
