/// The `decode` subcommand: hex frames in, JSON lines out.
import ArgumentParser
import Codec8
import IngestTools
import Lifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `teltonika-ingest decode`: hex frames in, one JSON line each out.
struct DecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Decode hex frames (one per line) into JSON lines.",
        discussion: """
            Reads hex frames, one per line, from the FILEs (or standard input when none is given or \
            FILE is -). Whitespace inside a line is ignored; '#' starts a comment. Each line that holds \
            hex gives one JSON object on standard output:
              {"line":N,"kind":"avl","codec":"8E","records":[...]}     records in docs/record-schema.md form
              {"line":N,"kind":"imei","imei":"..."}                    an IMEI login
              {"line":N,"kind":"ping"}                                 the keep-alive byte FF
              {"line":N,"kind":"message","codec":"12","type":6,...}    Codec 12/13/14/15 (imei, timestamp, text)
              {"line":N,"kind":"udp","packet_id":N,"avl_packet_id":N,...}  a UDP datagram (imei, codec, records, ack)
              {"line":N,"kind":"error","error":"crc_mismatch","message":"..."}
            Error categories: truncated, bad_preamble, too_large, length_mismatch, crc_mismatch, \
            record_count_mismatch, malformed_record, unsupported_codec, bad_imei; bad_hex for a line \
            that is not hex. Records carry device_id from --imei, else from the latest IMEI line of \
            the same input, else null.
            UDP: a line whose length field counts the rest of the line and whose IMEI length field is 15 \
            or 16 is decoded as a UDP datagram (no TCP frame or login looks like that); with --udp every \
            line is, and one that is not a valid datagram is an error line. A datagram's records carry \
            its own IMEI (--imei does not apply); "ack" is the 7-byte answer with every record accepted.
            Exit status: 0 when no line is an error, 1 otherwise, 2 on usage errors or unreadable input.
            """
    )

    @Argument(help: "Files of hex frames, one per line ('-' or none: standard input).")
    var files: [String] = []

    @Option(help: "IMEI to put in device_id of every record (15 or 16 digits).")
    var imei: String?

    @Option(help: "Largest accepted data-field length in bytes (as the server's MAX_FRAME_BYTES).")
    var maxFrameBytes: Int = TeltonikaFramer.defaultMaxDataLength

    @Flag(help: "Decode every line as a UDP datagram (default: only lines that look like one).")
    var udp = false

    func validate() throws {
        if let imei, IMEI(imei) == nil {
            throw ValidationError("--imei must be 15 or 16 ASCII digits, got '\(imei)'")
        }
        if maxFrameBytes < 1 { throw ValidationError("--max-frame-bytes must be at least 1") }
    }

    func run() throws {
        var report = FrameDecodeReport(deviceID: imei.flatMap { IMEI($0) }, maxDataLength: maxFrameBytes, udp: udp)
        var anyError = false
        var out: [UInt8] = []
        out.reserveCapacity(1 << 16)
        for path in files.isEmpty ? ["-"] : files {
            report.startInput()
            guard var input = HexLineReader(path: path) else {
                flush(&out)
                StandardIO.writeStderr("teltonika-ingest decode: cannot read '\(path)': \(String(cString: strerror(errno)))\n")
                terminate(.usage)
            }
            input.forEachLine { line in
                if report.process(line, to: &out) == .error { anyError = true }
                if out.count >= 1 << 16 { flush(&out) }
            }
        }
        flush(&out)
        if anyError { terminate(.failure) }
    }

    private func flush(_ out: inout [UInt8]) {
        StandardIO.writeStdout(out)
        out.removeAll(keepingCapacity: true)
    }
}
