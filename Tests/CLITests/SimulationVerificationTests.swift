import IngestTools
import Testing

/// The `simulate --verify` oracle on hand-made streams: missing, order, duplicates by `record_id`.
struct SimulationVerificationTests {
    /// Two devices (IMEIs 350000000000000 and ...001).
    static let configuration = SimulatorConfiguration(devices: 2, durationSeconds: 1)

    /// A verification of `acked` (per device, timestamps in the order sent) fed `stream` in order:
    /// (device index, timestamp_ms, record_id).
    static func verify(acked: [[UInt64]], stream: [(Int, UInt64, String?)]) -> SimulationVerification.Outcome {
        var verification = SimulationVerification(configuration: configuration, ackLog: acked)
        for (device, ts, recordID) in stream {
            verification.add(
                deviceID: String(350_000_000_000_000 + UInt64(device)),
                payload: #"{"timestamp_ms":\#(ts),"priority":"low"}"#,
                recordID: recordID
            )
        }
        return verification.outcome()
    }

    /// Both devices' records interleaved in one key, each device's in order: nothing to report.
    @Test func testEveryACKedRecordStoredInOrderPasses() {
        let outcome = Self.verify(
            acked: [[1, 2, 3], [10, 20]],
            stream: [(0, 1, "a1"), (1, 10, "b10"), (0, 2, "a2"), (1, 20, "b20"), (0, 3, "a3")]
        )
        #expect(outcome.ackedRecords == 5 && outcome.streamEntries == 5)
        #expect(outcome.missing == 0 && outcome.orderViolations == 0 && outcome.duplicates == 0 && outcome.duplicateRecords == 0)
        #expect(outcome.recordIDMismatches == 0 && !outcome.failed)
    }

    /// A packet stored, its ACK lost, the packet sent again: two copies of each of its records, after later
    /// ones. Counted as duplicates and labelled by record_id; the first copies are in order: no failure.
    @Test func testAResendAfterALostACKIsADuplicateLabelledByRecordID() {
        let outcome = Self.verify(
            acked: [[1, 2, 3, 4], []],
            stream: [(0, 1, "a1"), (0, 2, "a2"), (0, 3, "a3"), (0, 2, "a2"), (0, 3, "a3"), (0, 4, "a4"), (0, 4, "a4")]
        )
        #expect(outcome.duplicates == 3)
        #expect(outcome.duplicateRecords == 3)
        #expect(outcome.firstDuplicates == ["350000000000000/a2x2", "350000000000000/a3x2", "350000000000000/a4x2"])
        #expect(outcome.orderViolations == 0 && outcome.missing == 0 && !outcome.failed)
    }

    /// A record first stored before one its device sent (and had ACKed) earlier: a violation, named. Entries
    /// of records never ACKed (sent, stored, the run ended before the ACK) are not part of the order.
    @Test func testARecordFirstStoredBeforeAnEarlierOneIsAnOrderViolation() {
        let outcome = Self.verify(
            acked: [[1, 2, 3], []],
            stream: [(0, 1, "a1"), (0, 3, "a3"), (0, 2, "a2"), (0, 99, "a99")]
        )
        #expect(outcome.orderViolations == 1)
        #expect(
            outcome.firstOrderViolation
                == "350000000000000: timestamp_ms=2 (ACKed record 2) first stored after timestamp_ms=3 (ACKed record 3)"
        )
        #expect(outcome.missing == 0 && outcome.failed)

        let unacked = Self.verify(acked: [[1, 2], []], stream: [(0, 1, "a1"), (0, 50, "a50"), (0, 2, "a2")])
        #expect(unacked.orderViolations == 0 && !unacked.failed)
        // A late copy of an earlier record is a duplicate, not a violation.
        let late = Self.verify(acked: [[1, 2], []], stream: [(0, 1, "a1"), (0, 2, "a2"), (0, 1, "a1")])
        #expect(late.orderViolations == 0 && late.duplicates == 1 && !late.failed)
    }

    /// An ACKed record with no copy is missing, named by device and timestamp.
    @Test func testAnACKedRecordWithoutACopyIsMissing() {
        let outcome = Self.verify(acked: [[1, 2], [7]], stream: [(0, 1, "a1"), (1, 7, "b7")])
        #expect(outcome.missing == 1 && outcome.firstMissing == ["350000000000000:2"] && outcome.failed)
    }

    /// Copies of one record under two record_ids: consumers could not dedupe them. An entry without one (a
    /// server before record_id, or one written by hand) is only not labelled.
    @Test func testCopiesOfARecordMustCarryOneRecordID() {
        let twoLabels = Self.verify(acked: [[1], []], stream: [(0, 1, "a1"), (0, 1, "zz")])
        #expect(twoLabels.recordIDMismatches == 1 && twoLabels.duplicates == 1 && twoLabels.failed)
        let unlabelled = Self.verify(acked: [[1, 2], []], stream: [(0, 1, nil), (0, 1, "a1"), (0, 2, "a2"), (0, 2, nil)])
        #expect(unlabelled.recordIDMismatches == 0 && unlabelled.duplicates == 2 && unlabelled.duplicateRecords == 0)
        #expect(!unlabelled.failed)
    }

    /// The numbers a run prints on its `verify:` line, in order.
    @Test func testOutcomeFieldsInOutputOrder() {
        let outcome = Self.verify(acked: [[1, 2], []], stream: [(0, 1, "a1"), (0, 1, "a1"), (0, 2, "a2")])
        #expect(
            outcome.fields.map { "\($0.name)=\($0.value)" }.joined(separator: " ")
                == "acked_records=2 missing=0 trimmed=0 duplicates=1 duplicate_records=1 order_violations=0 record_id_mismatches=0 "
                + "stream_entries=3"
        )
    }
}
