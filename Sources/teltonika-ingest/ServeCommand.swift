import ArgumentParser
import Foundation
import Ingest
import Lifecycle
import Logging
import NIOCore
import NIOPosix

/// `teltonika-ingest serve`: the device server (the default subcommand).
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve Teltonika devices on TCP and publish their records to Redis Streams.",
        discussion: "Every setting comes from an environment variable or its flag (the flag wins):\n\n"
            + IngestConfiguration.settings.map { "  --\($0.flag) VALUE  (\($0.env))\n      \($0.help)" }.joined(separator: "\n")
            + "\n\nDefaults and guidance: OPERATIONS.md."
    )

    @Argument(parsing: .allUnrecognized, help: .hidden)
    var options: [String] = []

    func run() async throws {
        let configuration: IngestConfiguration
        do {
            configuration = try IngestConfiguration.load(environment: ProcessInfo.processInfo.environment, flags: try parseFlags())
        } catch let error as ConfigurationError {
            throw ValidationError("invalid setting \(error)")
        }
        let instanceID = configuration.instanceID.isEmpty ? ProcessInfo.processInfo.hostName : configuration.instanceID
        LoggingSystem.bootstrap { label in
            LineLogHandler(
                label: label,
                format: LineLogHandler.Format(rawValue: configuration.logFormat) ?? .json,
                instanceID: instanceID,
                level: Logger.Level(rawValue: configuration.logLevel) ?? .info
            )
        }
        let logger = Logger(label: "teltonika-ingest")
        try await IngestProcess(configuration: configuration, logger: logger).run()
    }

    /// `--name value` and `--name=value` pairs, checked against the known settings.
    private func parseFlags() throws -> [String: String] {
        let known = Set(IngestConfiguration.settings.map(\.flag))
        var flags: [String: String] = [:]
        var i = 0
        while i < options.count {
            let option = options[i]
            guard option.hasPrefix("--") else { throw ValidationError("unexpected argument '\(option)'") }
            var name = String(option.dropFirst(2))
            var value: String
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            } else {
                guard i + 1 < options.count else { throw ValidationError("--\(name) needs a value") }
                i += 1
                value = options[i]
            }
            guard known.contains(name) else { throw ValidationError("unknown option '--\(name)'") }
            flags[name] = value
            i += 1
        }
        return flags
    }
}
