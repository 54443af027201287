/// The binary's entry point: the subcommands.
import ArgumentParser
import Lifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `teltonika-ingest`: the Teltonika device server and its tools.
@main
struct TeltonikaIngest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "teltonika-ingest",
        abstract: "Ingestion server for Teltonika GPS trackers, and its tools.",
        subcommands: [
            ServeCommand.self, DecodeCommand.self, ReplayCommand.self, SimulateCommand.self, CommandCommand.self, DeviceCommand.self,
            AckServerCommand.self,
        ],
        defaultSubcommand: ServeCommand.self
    )

    /// Parses and runs a subcommand; usage errors exit with ``ExitStatus/usage`` (2), not ArgumentParser's 64.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                exit(withError: error)  // --help, --version: printed, exit 0
            }
            let message = fullMessage(for: error)
            if code == .validationFailure {
                if !message.isEmpty { StandardIO.writeStderr(message + "\n") }
                terminate(ExitStatus.usage)
            }
            exit(withError: error)
        }
    }
}

/// Ends the process with `status`.
func terminate(_ status: ExitStatus) -> Never {
    exit(status.rawValue)
}
