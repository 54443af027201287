/// The log backend: one JSON object (or text line) per event on stderr, level changeable at run time.
import Codec8
import Foundation
import Logging
import NIOConcurrencyHelpers
import Synchronization

extension Logger {
    /// This logger at `info` whatever `LOG_LEVEL` says, for the few lines that tell the process' life
    /// (starting, listening, draining, stopped, settings reloaded): an operator who sets `warning` to quiet
    /// the server still sees when it started, where it listens and how it stopped.
    public var lifecycle: Logger {
        var logger = self
        logger.logLevel = .info
        return logger
    }
}

/// A swift-log backend writing one line per event to standard error: a JSON object
/// (`{"ts":…,"level":…,"event":…,"msg":…,"instance_id":…, <metadata>}`) or, for people, plain text.
///
/// The `event` metadata key names the event (`device.login`, `frame.rejected`, …); OPERATIONS.md
/// ("Log events") lists them all. In JSON, a value given as a number or a `Bool`
/// (`.stringConvertible(42)`, `.stringConvertible(true)`) is written as a JSON number or `true`/`false`, so
/// a log pipeline can sum and compare it; everything else is a JSON string. Writes are serialised by a
/// lock; each line is one `write(2)`.
public struct LineLogHandler: LogHandler {
    public enum Format: String, Sendable {
        case json
        case text
    }

    public var metadata: Logger.Metadata = [:]
    /// The process-wide level (``setLevel(_:)``, e.g. on SIGHUP), unless this logger set its own.
    public var logLevel: Logger.Level {
        get { ownLevel ?? Logger.Level.allCases[LineLogHandler.level.load(ordering: .relaxed)] }
        set { ownLevel = newValue }
    }
    private var ownLevel: Logger.Level? = nil
    private let label: String
    private let format: Format
    private let instanceID: String

    private static let lock = NIOLock()
    private static let level = Atomic<Int>(Logger.Level.allCases.firstIndex(of: .info)!)

    /// Changes the level of every logger that did not set its own, at once.
    public static func setLevel(_ newLevel: Logger.Level) {
        level.store(Logger.Level.allCases.firstIndex(of: newLevel)!, ordering: .relaxed)
    }

    public init(label: String, format: Format, instanceID: String) {
        self.label = label
        self.format = format
        self.instanceID = instanceID
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let line = Self.line(
            level: event.level,
            message: event.message,
            metadata: merged,
            format: format,
            instanceID: instanceID,
            milliseconds: UInt64(Date().timeIntervalSince1970 * 1000)
        )
        LineLogHandler.lock.withLock {
            line.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = write(STDERR_FILENO, raw.baseAddress! + offset, raw.count - offset)
                    if n <= 0 { break }
                    offset += n
                }
            }
        }
    }

    /// One log line, newline included: what ``log(event:)`` writes.
    static func line(
        level: Logger.Level,
        message: Logger.Message,
        metadata: Logger.Metadata,
        format: Format,
        instanceID: String,
        milliseconds: UInt64
    ) -> [UInt8] {
        var merged = metadata
        let eventName = merged.removeValue(forKey: "event").map { "\($0)" } ?? "log"
        var line: [UInt8] = []
        line.reserveCapacity(256)
        switch format {
        case .json:
            JSONText.appendRaw("{\"ts\":", to: &line)
            JSONText.appendISO8601(milliseconds: milliseconds, to: &line)
            JSONText.appendRaw(",\"level\":", to: &line)
            JSONText.appendString(level.rawValue, to: &line)
            JSONText.appendRaw(",\"event\":", to: &line)
            JSONText.appendString(eventName, to: &line)
            JSONText.appendRaw(",\"msg\":", to: &line)
            JSONText.appendString(message.description, to: &line)
            JSONText.appendRaw(",\"instance_id\":", to: &line)
            JSONText.appendString(instanceID, to: &line)
            for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
                line.append(UInt8(ascii: ","))
                JSONText.appendString(key, to: &line)
                line.append(UInt8(ascii: ":"))
                appendJSON(value, to: &line)
            }
            line.append(UInt8(ascii: "}"))
        case .text:
            JSONText.appendISO8601(milliseconds: milliseconds, to: &line)
            line.removeFirst()
            line.removeLast()
            line.append(contentsOf: " \(level.rawValue.uppercased()) \(eventName): \(message) instance_id=\(instanceID)".utf8)
            for (key, value) in merged.sorted(by: { $0.key < $1.key }) { line.append(contentsOf: " \(key)=\(value)".utf8) }
        }
        line.append(0x0A)
        return line
    }

    /// A metadata value in JSON: integers and finite floating-point numbers as numbers, `Bool` as
    /// `true`/`false`, anything else (strings included, even "42") as a string.
    private static func appendJSON(_ value: Logger.MetadataValue, to line: inout [UInt8]) {
        guard case .stringConvertible(let convertible) = value else {
            JSONText.appendString("\(value)", to: &line)
            return
        }
        switch convertible {
        case let flag as Bool:
            JSONText.appendRaw(flag ? "true" : "false", to: &line)
        case let integer as any BinaryInteger:
            line.append(contentsOf: "\(integer)".utf8)
        case let number as Double where number.isFinite:
            line.append(contentsOf: "\(number)".utf8)
        default:
            JSONText.appendString(convertible.description, to: &line)
        }
    }
}
