/// The settings of a simulated fleet (devices, rate, faults).
import Codec8

/// What `teltonika-ingest simulate` runs: the fleet, the link and the faults.
public struct SimulatorConfiguration: Sendable {
    /// Which codec the devices speak.
    public enum CodecChoice: String, Sendable, CaseIterable {
        case codec8 = "8"
        case codec8Extended = "8E"
        /// Each device picks 8 or 8E (half each, by the seed), as a mixed real fleet does.
        case mixed
    }

    /// How the devices reach the server.
    public enum Transport: String, Sendable, CaseIterable {
        /// A connection per device: IMEI login, then packets, each answered by a 4-byte ACK.
        case tcp
        /// A socket per device: each packet one datagram carrying the IMEI, answered by a 7-byte ACK.
        case udp
    }

    // MARK: Fleet

    public var devices: Int
    public var transport = Transport.tcp
    /// Seconds during which new packets are sent.
    public var durationSeconds: Double
    /// Packets each device sends, after which it stops (0: as many as the duration allows).
    public var packetsPerDevice = 0
    public var host: String = "127.0.0.1"
    public var port: Int = 5027
    public var recordsPerPacket: Int = 10
    public var codec: CodecChoice = .mixed
    /// Device `i` logs in as `imeiBase + i` (15 digits).
    public var imeiBase: UInt64 = 350_000_000_000_000
    public var seed: UInt64 = 1
    /// Event-loop threads (0: one per core).
    public var threads: Int = 0

    // MARK: Pace and faults

    /// Packets per second per device; 0: the next packet as soon as the ACK is in.
    public var packetsPerSecond: Double = 0
    /// How long a device waits for the login answer or an ACK before it reconnects.
    public var responseTimeoutMs: Int = 5000
    /// Bytes per second a device's link carries (written in small chunks); 0: no limit.
    public var slowLinkBytesPerSecond: Int = 0
    /// Mean seconds a connection lives before the device drops it and reconnects; 0: never.
    public var churnSeconds: Double = 0
    /// Share of packets whose first send carries a broken CRC.
    public var corruptRatio: Double = 0
    /// UDP: share of right ACKs a device ignores on purpose, as if lost, so that it sends the same
    /// datagram again after the response timeout.
    public var dropAcksRatio: Double = 0
    /// Idle milliseconds after which a device sends the keep-alive byte 0xFF; 0: never.
    public var keepaliveMs: Int = 0
    /// Keep every ACKed record key for a later check against the stream.
    public var keepAckLog = false

    /// How a device answers the Codec 12/14 commands it receives (TCP).
    public enum CommandAnswer: String, Sendable, CaseIterable {
        /// A response (type 0x06) `ok: <command>` after ``commandAnswerDelayMs``.
        case answer
        /// No answer at all.
        case never
        /// Codec 14: a nACK (type 0x11) after the delay; Codec 12 (which has none): no answer.
        case nack
    }

    public var commandAnswer = CommandAnswer.answer
    /// Milliseconds between a command received and its answer written (longer than the server's
    /// `COMMAND_TIMEOUT_MS` makes the answer late).
    public var commandAnswerDelayMs = 50

    // MARK: Reconnect backoff

    /// First reconnect delay; doubles per failed attempt up to ``backoffCapMs``, half of it jittered.
    public var backoffBaseMs: Int = 100
    public var backoffCapMs: Int = 5000

    public init(devices: Int, durationSeconds: Double) {
        self.devices = devices
        self.durationSeconds = durationSeconds
    }

    /// The IMEI of device `index`.
    public func imei(of index: Int) -> IMEI {
        let digits = String(imeiBase + UInt64(index))
        return IMEI(String(repeating: "0", count: max(0, 15 - digits.count)) + digits)!
    }

    /// The largest IMEI a 15-digit login can carry.
    public static let maxIMEI: UInt64 = 999_999_999_999_999
}
