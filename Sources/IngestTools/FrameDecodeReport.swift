/// What `decode` prints for one hex frame: its JSON line and its exit-status class.
import Codec8

/// The heart of `teltonika-ingest decode`: one hex line in, one JSON line out.
///
/// Lines are hex frames; ASCII whitespace is ignored and `#` starts a comment. Blank and
/// comment-only lines produce nothing. Output objects, one per line that holds hex:
///
/// ```
/// {"line":N,"kind":"avl","codec":"8E","records":[<payload JSON>, ...]}
/// {"line":N,"kind":"imei","imei":"356307042441013"}
/// {"line":N,"kind":"ping"}
/// {"line":N,"kind":"message","codec":"12","type":6,"text":"...","payload_hex":"..."}   (+ imei, timestamp)
/// {"line":N,"kind":"error","error":"crc_mismatch","message":"..."}
/// ```
/// `device_id` in records is the `--imei` value, else the IMEI of the latest login line of the same
/// input, else null. A line that is not hex is reported with the input error `bad_hex`.
public struct FrameDecodeReport {
    /// The device ID given on the command line; wins over login lines.
    public let fixedDeviceID: IMEI?
    /// The data-field length cap, as for the server.
    public let maxDataLength: Int
    private var loginDeviceID: IMEI?
    private var encoder = RecordJSONEncoder()

    public init(deviceID: IMEI?, maxDataLength: Int = TeltonikaFramer.defaultMaxDataLength) {
        fixedDeviceID = deviceID
        self.maxDataLength = maxDataLength
    }

    /// Starts a new input (forgets the IMEI of earlier login lines).
    public mutating func startInput() {
        loginDeviceID = nil
    }

    /// The outcome of one line.
    public enum Outcome: Equatable, Sendable {
        /// Blank or comment: nothing written.
        case skipped
        /// A login, keep-alive, AVL packet or message.
        case decoded
        /// An error line was written.
        case error
    }

    /// Appends the JSON line (with its newline) for input line `number` to `out`.
    public mutating func process(line: some StringProtocol, number: Int, to out: inout [UInt8]) -> Outcome {
        let content = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        guard content.utf8.contains(where: { !isSpace($0) }) else { return .skipped }
        JSONText.appendRaw("{\"line\":", to: &out)
        JSONText.appendDecimal(UInt64(number), to: &out)
        defer { JSONText.appendRaw("}\n", to: &out) }
        guard let bytes = Hex.decode(content), !bytes.isEmpty else {
            appendError(category: "bad_hex", message: "not an even number of hex digits", to: &out)
            return .error
        }
        do throws(Codec8Error) {
            try StandaloneFrame.withDecoded(bytes, maxDataLength: maxDataLength) { appendDecoded($0, to: &out) }
            return .decoded
        } catch {
            appendError(category: error.category, message: error.description, to: &out)
            return .error
        }
    }

    private mutating func appendDecoded(_ frame: StandaloneFrame, to out: inout [UInt8]) {
        switch frame {
        case .keepAlive:
            JSONText.appendRaw(",\"kind\":\"ping\"", to: &out)
        case .login(let imei):
            loginDeviceID = imei
            JSONText.appendRaw(",\"kind\":\"imei\",\"imei\":", to: &out)
            JSONText.appendString(imei.description, to: &out)
        case .frame(.avl(let packet)):
            JSONText.appendRaw(",\"kind\":\"avl\",\"codec\":", to: &out)
            JSONText.appendString(packet.codec.name, to: &out)
            JSONText.appendRaw(",\"records\":[", to: &out)
            var first = true
            for record in packet.records {
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                encoder.append(record, deviceID: fixedDeviceID ?? loginDeviceID, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .frame(.message(let message)):
            JSONText.appendRaw(",\"kind\":\"message\",", to: &out)
            message.appendJSONMembers(to: &out)
        }
    }

    private func appendError(category: String, message: String, to out: inout [UInt8]) {
        JSONText.appendRaw(",\"kind\":\"error\",\"error\":", to: &out)
        JSONText.appendString(category, to: &out)
        JSONText.appendRaw(",\"message\":", to: &out)
        JSONText.appendString(message, to: &out)
    }
}

private func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D }
