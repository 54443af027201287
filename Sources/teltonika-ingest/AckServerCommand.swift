/// The hidden `ack-server` subcommand.
import ArgumentParser
import IngestTools
import Lifecycle

/// `teltonika-ingest ack-server` (hidden): ACKs every packet at once, no Redis. For benchmarks (the
/// simulator's own ceiling) and the simulator's tests.
struct AckServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ack-server",
        abstract: "Test and bench helper: accept logins and ACK every AVL packet at once, without Redis.",
        discussion: """
            Prints 'ack-server: listening on HOST:PORT' on standard error once it listens, then serves \
            until killed. The CRC is not checked.
            """,
        shouldDisplay: false
    )

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on (0: any free port).")
    var port = 5027

    @Option(help: "Leave the first N packets of each device (IMEI) unanswered, across its connections.")
    var withholdAcks = 0

    @Flag(help: "Print one line per packet on standard error (IMEI, number, records, first timestamp, CRC, acked).")
    var logPackets = false

    @Option(help: "Event-loop threads (0: one per core).")
    var threads = 0

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0-65535") }
        guard withholdAcks >= 0 else { throw ValidationError("--withhold-acks must be 0 or more") }
        guard threads >= 0 else { throw ValidationError("--threads must be 0 or more") }
    }

    func run() async throws {
        var options = AckAllServer.Options()
        options.host = host
        options.port = port
        options.withholdAcks = withholdAcks
        options.threads = threads
        if logPackets { options.packetLog = { StandardIO.writeStderr($0) } }
        let server: AckAllServer
        do {
            server = try await AckAllServer(options: options)
        } catch {
            StandardIO.writeStderr("teltonika-ingest ack-server: cannot listen on \(host):\(port): \(error)\n")
            terminate(.failure)
        }
        StandardIO.writeStderr("ack-server: listening on \(host):\(server.port)\n")
        try await server.run()
    }
}
