/// Why a frame, login or record was rejected, with the evidence.
///
/// Every case maps to exactly one stable ``category`` name. Those names are a contract: they appear in
/// the `decode` command's output, in log lines and in metric labels, and the fixture corpus uses them.
/// Where several checks fail, the first in this order is reported: truncated, bad preamble, too large,
/// length mismatch, CRC, record count, malformed record, unsupported codec, bad IMEI.
public enum Codec8Error: Error, Equatable, Sendable {
    /// The input ended before the frame did: `needed` bytes in all, `available` present.
    case truncated(needed: Int, available: Int)
    /// A packet must start with four zero bytes; `byte` at `offset` is not zero.
    case badPreamble(offset: Int, byte: UInt8)
    /// The declared data-field length is above the configured maximum (checked before any body is read).
    case tooLarge(declared: UInt32, limit: Int)
    /// The frame's declared size disagrees with the bytes present or with its own inner size field.
    case lengthMismatch(declared: Int, actual: Int)
    /// The CRC field (`received`, 4 bytes, upper two must be zero) differs from the CRC computed over the data field.
    case crcMismatch(received: UInt32, computed: UInt16)
    /// Number of Data 1 and Number of Data 2 differ.
    case recordCountMismatch(header: UInt8, trailer: UInt8)
    /// Record `index` (0-based) is not well formed at byte `offset` of the frame.
    case malformedRecord(index: Int, offset: Int, reason: MalformedReason)
    /// The codec byte is not one this server decodes (AVL 0x08/0x8E/0x10, messages 0x0C–0x0F).
    case unsupportedCodec(UInt8)
    /// The login frame is not an IMEI this server accepts.
    case badIMEI(IMEIProblem)

    /// What exactly is wrong inside a record or message body.
    public enum MalformedReason: Equatable, Sendable {
        /// The record (or message payload) needs bytes past the end of the data field.
        case overrun
        /// Bytes are left in the data field after the last record.
        case trailingBytes(Int)
        /// "N of Total IO" disagrees with the sum of the group counts.
        case ioCountMismatch(declared: Int, counted: Int)
        /// A message payload is shorter than its codec's fixed fields (timestamp, IMEI).
        case payloadTooShort(codec: UInt8, size: Int)
    }

    /// Why a login was refused.
    public enum IMEIProblem: Equatable, Sendable {
        /// The login's length field is outside the accepted lengths (see ``IMEI/acceptedLengths``).
        case length(Int)
        /// A byte of the IMEI is not an ASCII digit.
        case nonDigit(offset: Int, byte: UInt8)
    }

    /// The stable category name: `truncated`, `bad_preamble`, `too_large`, `length_mismatch`,
    /// `crc_mismatch`, `record_count_mismatch`, `malformed_record`, `unsupported_codec`, `bad_imei`.
    public var category: String {
        switch self {
        case .truncated: "truncated"
        case .badPreamble: "bad_preamble"
        case .tooLarge: "too_large"
        case .lengthMismatch: "length_mismatch"
        case .crcMismatch: "crc_mismatch"
        case .recordCountMismatch: "record_count_mismatch"
        case .malformedRecord: "malformed_record"
        case .unsupportedCodec: "unsupported_codec"
        case .badIMEI: "bad_imei"
        }
    }

    /// Every category name, in the order the checks run.
    public static let allCategories = [
        "truncated", "bad_preamble", "too_large", "length_mismatch", "crc_mismatch",
        "record_count_mismatch", "malformed_record", "unsupported_codec", "bad_imei",
    ]
}

extension Codec8Error: CustomStringConvertible {
    /// A sentence for people: what was wrong and the evidence.
    public var description: String {
        switch self {
        case .truncated(let needed, let available):
            return "frame truncated: needs \(needed) bytes, \(available) present"
        case .badPreamble(let offset, let byte):
            return "bad preamble: byte \(offset) is 0x\(hex2(byte)), expected 00 00 00 00"
        case .tooLarge(let declared, let limit):
            return "declared data length \(declared) exceeds the limit of \(limit) bytes"
        case .lengthMismatch(let declared, let actual):
            return "length mismatch: the frame declares \(declared) bytes, \(actual) present"
        case .crcMismatch(let received, let computed):
            return "CRC mismatch: frame carries 0x\(hex8(received)), computed 0x\(hex4(computed))"
        case .recordCountMismatch(let header, let trailer):
            return "record count mismatch: Number of Data 1 is \(header), Number of Data 2 is \(trailer)"
        case .malformedRecord(let index, let offset, let reason):
            let what: String
            switch reason {
            case .overrun: what = "runs past the end of the data field"
            case .trailingBytes(let n): what = "is followed by \(n) unused bytes in the data field"
            case .ioCountMismatch(let declared, let counted):
                what = "declares \(declared) IO elements but its groups hold \(counted)"
            case .payloadTooShort(let codec, let size):
                what = "is a codec 0x\(hex2(codec)) message whose payload of \(size) bytes is too short"
            }
            return "malformed record \(index) at byte \(offset): it \(what)"
        case .unsupportedCodec(let codec):
            return "unsupported codec 0x\(hex2(codec))"
        case .badIMEI(.length(let n)):
            return "bad IMEI: length \(n) (accepted: \(IMEI.acceptedLengths.map(String.init).joined(separator: " or ")) digits)"
        case .badIMEI(.nonDigit(let offset, let byte)):
            return "bad IMEI: byte \(offset) is 0x\(hex2(byte)), not an ASCII digit"
        }
    }
}

@inline(__always) func hexDigit(_ v: UInt8) -> UInt8 { v < 10 ? 0x30 + v : 0x57 + v }

func hexString<T: FixedWidthInteger>(_ v: T, digits: Int) -> String {
    var out = [UInt8](repeating: 0x30, count: digits)
    var x = v
    for i in stride(from: digits - 1, through: 0, by: -1) {
        out[i] = hexDigit(UInt8(truncatingIfNeeded: x & 0xF))
        x >>= 4
    }
    return String(decoding: out, as: UTF8.self)
}

func hex2(_ v: UInt8) -> String { hexString(v, digits: 2) }
func hex4(_ v: UInt16) -> String { hexString(v, digits: 4) }
func hex8(_ v: UInt32) -> String { hexString(v, digits: 8) }
