/// The no-loss oracle behind `simulate --verify`: every ACKed record stored, in the order its device sent it.
import Codec8

/// The no-loss oracle: every ACKed (device, timestamp) must be in the stream, the first stored copies of a
/// device's ACKed records in the order the device sent them.
///
/// Feed it every entry of the stream, shard after shard, each shard in stream order
/// (``add(deviceID:payload:recordID:)``); entries of other devices (IMEIs outside the fleet's range) are
/// ignored. A record is told by its device and its `timestamp_ms` (the simulator's timestamps are unique
/// and increasing per device). Checks:
/// - **missing**: an ACKed record with no copy (unless `MAXLEN` trimming explains it: ``Outcome/trimmed``);
/// - **order**: a device's records live in one shard, so the first copy of each ACKed record must come after
///   the first copies of the records the device had ACKed before it. A resend after a lost ACK stores a
///   second copy later, which is no violation: consumers dedupe it;
/// - **duplicates**: extra copies are counted (over UDP they fail the check: the server answers a resend
///   without storing it again), and labelled by the entries' `record_id`: ``Outcome/duplicateRecords``
///   counts the `(device_id, record_id)` stored more than once, the key consumers dedupe on;
/// - **record_id**: the copies of one record that carry a `record_id` must carry the same one (stable across
///   resends, as docs/record-schema.md promises), else consumers could not dedupe them.
public struct SimulationVerification {
    public struct Outcome: Sendable, Equatable {
        public var ackedRecords = 0
        /// ACKed keys absent from the stream (and not explained by trimming).
        public var missing = 0
        /// ACKed keys absent from a trimmed stream that come, for their device, before its oldest key still
        /// in the stream: `MAXLEN` trimming removed them (the server publishes a device's packets in ACK order).
        public var trimmed = 0
        /// Extra copies of keys of the fleet in the stream.
        public var duplicates = 0
        /// Distinct `(device_id, record_id)` stored more than once.
        public var duplicateRecords = 0
        /// Up to 10 of them, as `<IMEI>/<record_id>x<copies>`.
        public var firstDuplicates: [String] = []
        /// ACKed records whose first copy comes before the first copy of a record their device sent (and had
        /// ACKed) earlier.
        public var orderViolations = 0
        /// The first of them, described.
        public var firstOrderViolation: String?
        /// Copies whose `record_id` differs from the first labelled copy's of the same record (entries without
        /// one, written by a server before `record_id` or by hand, are neither labelled nor counted here).
        public var recordIDMismatches = 0
        /// Whether a duplicate fails the check: over UDP the server answers a resend without storing it
        /// again, so none may be there; over TCP a resend after a lost ACK is stored again, by design.
        public var duplicatesFail = false
        /// Stream entries of the fleet's devices.
        public var streamEntries = 0
        /// Entries whose payload had no readable `timestamp_ms`.
        public var unreadable = 0
        /// Up to 10 missing keys, for the error message.
        public var firstMissing: [String] = []

        /// The oracle's verdict: an ACKed record is missing or out of order, a record's copies are not
        /// labelled alike, or (UDP) a record was stored twice.
        public var failed: Bool {
            missing > 0 || orderViolations > 0 || recordIDMismatches > 0 || (duplicatesFail && duplicates > 0)
        }
    }

    /// One stored copy of a record of the fleet.
    private struct Copy {
        var timestampMs: UInt64
        var recordID: String?
    }

    private let configuration: SimulatorConfiguration
    private let ackLog: [[UInt64]]
    /// Per device, its copies in the order read (stream order within its shard).
    private var seen: [[Copy]]
    private var unreadable = 0
    /// Whether entries were removed from the stream (XINFO STREAM: `entries-added` above `length`); with
    /// shards, from any shard (prefer ``trimmedShards``).
    public var streamTrimmed = false
    /// Keys the stream is split into (`REDIS_STREAM_SHARDS`), and which of them were trimmed: a device's
    /// records are in its shard only, so only that shard's trimming explains them missing.
    public var shards = 1
    public var trimmedShards: Set<Int> = []

    public init(result: SimulationResult) {
        self.init(configuration: result.configuration, ackLog: result.ackLog)
    }

    /// - Parameter ackLog: per device index, the timestamps of its ACKed records in the order it sent them.
    public init(configuration: SimulatorConfiguration, ackLog: [[UInt64]]) {
        self.configuration = configuration
        self.ackLog = ackLog
        seen = Array(repeating: [], count: configuration.devices)
    }

    /// One stream entry: its `device_id`, its `payload` JSON and its `record_id` (nil when it has none).
    public mutating func add(deviceID: String, payload: String, recordID: String? = nil) {
        guard let imei = UInt64(deviceID), imei >= configuration.imeiBase else { return }
        let index = imei - configuration.imeiBase
        guard index < UInt64(seen.count) else { return }
        guard let ts = Self.timestampMs(in: payload) else {
            unreadable += 1
            return
        }
        seen[Int(index)].append(Copy(timestampMs: ts, recordID: recordID))
    }

    /// Reads `"timestamp_ms":N` from a compact payload (docs/record-schema.md).
    static func timestampMs(in payload: String) -> UInt64? {
        let key = Array("\"timestamp_ms\":".utf8)
        let bytes = Array(payload.utf8)
        guard bytes.count > key.count else { return nil }
        var i = 0
        while i + key.count <= bytes.count {
            if bytes[i] == key[0], bytes[i..<(i + key.count)].elementsEqual(key) {
                var j = i + key.count
                var value: UInt64 = 0
                var digits = 0
                while j < bytes.count, bytes[j] >= 0x30, bytes[j] <= 0x39 {
                    let (m, o1) = value.multipliedReportingOverflow(by: 10)
                    let (a, o2) = m.addingReportingOverflow(UInt64(bytes[j] - 0x30))
                    if o1 || o2 { return nil }
                    value = a
                    digits += 1
                    j += 1
                }
                return digits > 0 ? value : nil
            }
            i += 1
        }
        return nil
    }

    public func outcome() -> Outcome {
        var outcome = Outcome()
        outcome.unreadable = unreadable
        outcome.duplicatesFail = configuration.transport == .udp
        for device in seen.indices {
            let imei = configuration.imei(of: device)
            let acked = device < ackLog.count ? ackLog[device] : []
            let copies = check(seen[device], of: imei, acked: acked, into: &outcome)
            let trimmed = streamTrimmed || trimmedShards.contains(StreamShards.shard(of: imei, count: shards))
            var anyStored = false
            for ts in acked {
                outcome.ackedRecords += 1
                if copies[ts] != nil {
                    anyStored = true
                } else if trimmed && !anyStored {
                    outcome.trimmed += 1
                } else {
                    outcome.missing += 1
                    if outcome.firstMissing.count < 10 { outcome.firstMissing.append("\(imei):\(ts)") }
                }
            }
        }
        return outcome
    }

    /// Counts one device's copies into `outcome` (entries, duplicates, `record_id` labels, the order of
    /// first copies) and returns, per timestamp, how many copies there are.
    private func check(_ stored: [Copy], of imei: IMEI, acked: [UInt64], into outcome: inout Outcome) -> [UInt64: Int] {
        outcome.streamEntries += stored.count
        let sentAs = Dictionary(acked.enumerated().map { ($0.element, $0.offset) }, uniquingKeysWith: { first, _ in first })
        var copies: [UInt64: Int] = [:]
        var firstLabel: [UInt64: String] = [:]
        var byRecordID: [String: Int] = [:]
        var latest: (position: Int, timestampMs: UInt64)?
        for copy in stored {
            let earlier = copies[copy.timestampMs, default: 0]
            copies[copy.timestampMs] = earlier + 1
            if let recordID = copy.recordID {
                byRecordID[recordID, default: 0] += 1
                if let first = firstLabel[copy.timestampMs] {
                    if first != recordID { outcome.recordIDMismatches += 1 }
                } else {
                    firstLabel[copy.timestampMs] = recordID
                }
            }
            // The first copy of an ACKed record: after the first copies of those sent before it.
            guard earlier == 0, let position = sentAs[copy.timestampMs] else { continue }
            if let latest, position < latest.position {
                outcome.orderViolations += 1
                if outcome.firstOrderViolation == nil {
                    outcome.firstOrderViolation =
                        "\(imei): timestamp_ms=\(copy.timestampMs) (ACKed record \(position + 1)) first stored after "
                        + "timestamp_ms=\(latest.timestampMs) (ACKed record \(latest.position + 1))"
                }
            } else {
                latest = (position, copy.timestampMs)
            }
        }
        outcome.duplicates += stored.count - copies.count
        for (recordID, count) in byRecordID.sorted(by: { $0.key < $1.key }) where count > 1 {
            outcome.duplicateRecords += 1
            if outcome.firstDuplicates.count < 10 { outcome.firstDuplicates.append("\(imei)/\(recordID)x\(count)") }
        }
        return copies
    }
}
