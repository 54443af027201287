/// The `replay` subcommand.
import ArgumentParser
import Codec8
import Foundation
import IngestTools
import Lifecycle

#if canImport(Glibc)
import Glibc
#endif

/// `teltonika-ingest replay`: sends captured device traffic to a running server and checks every answer.
struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay captured device traffic (hex files, pcap/pcapng) against a server and check its answers.",
        discussion: """
            Inputs: hex files (one frame per line, '#' comments, as `decode` reads them; the first IMEI \
            line logs in, or --imei) and pcap/pcapng captures (each TCP flow from a device is reassembled \
            and replays as one device; flows to --capture-port, or every flow that starts with an IMEI \
            login). Every AVL frame must be ACKed with its record count; a frame the protocol refuses \
            (bad CRC, truncated, ...) must get no ACK and a closed connection (then the replay reconnects); \
            Codec 12-15 frames and keep-alives get no answer.
            UDP: each captured UDP flow from a device (to --capture-port, or every flow that carries a \
            Teltonika datagram) replays as one device from a socket of its own, to --udp-port: one \
            datagram at a time, each waiting for its ACK, which must carry the datagram's packet ID, AVL \
            packet ID and record count; without an ACK within --response-timeout the same datagram is sent \
            again, at most --udp-resends times (counted as resends). A datagram the protocol refuses must \
            get no answer within --response-timeout (counted as rejected). Copies (--loop) and --imei \
            re-encode valid datagrams under the copy's IMEI.
            With --loop or --concurrency, copies after the first use the IMEI with its last six digits \
            replaced by the copy number, so parallel copies do not replace each other.
            Prints one summary line (with datagrams= and resends= when UDP was replayed); a progress bar \
            on a terminal. Exit status: 0 when every answer was \
            right, 1 on any mismatch or connection failure, 2 on usage errors or unreadable input.
            """
    )

    @Argument(help: "Hex files and pcap/pcapng captures.")
    var files: [String]

    @OptionGroup var server: ServerAddress

    @Option(help: "IMEI to log in with (for hex files without an IMEI line; overrides the captured ones).")
    var imei: String?

    @Option(help: "Frames per second over all connections (0: as fast as the answers come).")
    var rate: Double = 0

    @Option(help: "Replay every session this many times.")
    var loop = 1

    @Option(help: "Sessions replayed at once.")
    var concurrency = 1

    @Option(help: "Seconds to wait for each answer (for a refused datagram: the silence it must get).")
    var responseTimeout: Double = 10

    @Option(
        help:
            "In captures, the server port whose inbound TCP and UDP flows are devices (default: flows that start with a login, UDP flows that carry a Teltonika datagram)."
    )
    var capturePort: UInt16?

    @Option(help: "Server UDP port for captured datagrams (the server's UDP_PORT; default: --port).")
    var udpPort: Int?

    @Option(help: "Times a datagram is sent again when its ACK does not come within --response-timeout.")
    var udpResends = 2

    @Option(help: "Largest accepted data-field length (as the server's MAX_FRAME_BYTES).")
    var maxFrameBytes = TeltonikaFramer.defaultMaxDataLength

    func validate() throws {
        if let imei, IMEI(imei) == nil { throw ValidationError("--imei must be 15 or 16 ASCII digits, got '\(imei)'") }
        if loop < 1 || concurrency < 1 { throw ValidationError("--loop and --concurrency must be at least 1") }
        if rate < 0 || responseTimeout <= 0 { throw ValidationError("--rate must be >= 0 and --response-timeout > 0") }
        if let udpPort, !(1...65535).contains(udpPort) { throw ValidationError("--udp-port must be 1-65535") }
        if udpResends < 0 { throw ValidationError("--udp-resends must be 0 or more") }
    }

    func run() throws {
        var sessions: [ReplaySession] = []
        var datagramFlows: [ReplayDatagramFlow] = []
        do {
            for path in files {
                guard let data = FileManager.default.contents(atPath: path) else { throw ReplayInputError("cannot read '\(path)'") }
                let bytes = [UInt8](data)
                if bytes.count >= 4 && (bytes.starts(with: [0x0a, 0x0d, 0x0d, 0x0a]) || Self.isPcapMagic(bytes)) {
                    let found = try ReplaySession.fromCapture(bytes, name: path, serverPort: capturePort, maxDataLength: maxFrameBytes)
                    let udp = try ReplayDatagramFlow.fromCapture(bytes, name: path, serverPort: capturePort, maxDataLength: maxFrameBytes)
                    if found.isEmpty && udp.isEmpty { StandardIO.writeStderr("teltonika-ingest replay: \(path): no device flow found\n") }
                    sessions += found
                    datagramFlows += udp
                } else {
                    let session = try ReplaySession.fromHex(bytes, name: path, maxDataLength: maxFrameBytes)
                    guard session.imei != nil || imei != nil else {
                        throw ValidationError("\(path) has no IMEI line: give --imei")
                    }
                    sessions.append(session)
                }
            }
        } catch let error as ReplayInputError {
            StandardIO.writeStderr("teltonika-ingest replay: \(error)\n")
            terminate(.usage)
        }
        var options = ReplayOptions()
        options.host = server.host
        options.port = server.port
        options.udpPort = udpPort ?? server.port
        options.udpResends = udpResends
        options.rate = rate
        options.loop = loop
        options.concurrency = concurrency
        options.responseTimeout = responseTimeout
        options.imei = imei
        let replayer = Replayer(sessions: sessions, datagramFlows: datagramFlows, options: options)
        let progress = isatty(STDERR_FILENO) == 1 ? ProgressBar(replayer: replayer) : nil
        progress?.start()
        let report = replayer.run()
        progress?.stop()
        for problem in report.problems { StandardIO.writeStderr("replay: mismatch: \(problem)\n") }
        StandardIO.writeStdout(Array((report.summary + "\n").utf8))
        if !report.isClean { terminate(.failure) }
    }

    static func isPcapMagic(_ b: [UInt8]) -> Bool {
        let magics: [[UInt8]] = [
            [0xd4, 0xc3, 0xb2, 0xa1], [0xa1, 0xb2, 0xc3, 0xd4], [0x4d, 0x3c, 0xb2, 0xa1], [0xa1, 0xb2, 0x3c, 0x4d],
        ]
        return magics.contains { b.starts(with: $0) }
    }
}

/// A one-line progress bar on standard error, redrawn every 200 ms.
final class ProgressBar: @unchecked Sendable {
    private let replayer: Replayer
    private var running = true
    private let lock = NSLock()

    init(replayer: Replayer) { self.replayer = replayer }

    func start() {
        Thread.detachNewThread { [self] in
            while lock.withLock({ running }) {
                draw()
                usleep(200_000)
            }
        }
    }

    func stop() {
        lock.withLock { running = false }
        draw()
        StandardIO.writeStderr("\n")
    }

    private func draw() {
        let p = replayer.progress
        let planned = max(1, replayer.plannedFrames)
        let done = min(planned, p.framesSent)
        let width = 30
        let filled = done * width / planned
        let bar = String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled)
        StandardIO.writeStderr("\r[\(bar)] \(done)/\(planned) frames  acked=\(p.acked) rejected=\(p.rejected) mismatched=\(p.mismatched) ")
    }
}
