/// Replica confirmation for a batch spread over several connections (Redis Cluster: one per primary).

/// What a transport that spreads a batch over several connections reports beside the answers: each
/// job's connections, and which connections have every write confirmed by a `WAIT` that counted
/// enough replicas. A `WAIT` speaks only for writes on its own connection, so a job written on one
/// primary is confirmed by that primary's `WAIT` alone (`REDIS_MIN_REPLICAS` per primary), and a job
/// held on a connection that has closed can never be confirmed: it is written again.
struct SpreadWaits: Equatable {
    /// Connection ids are never reused in the process (a held job must not be confirmed by a later
    /// connection that happens to get its id).
    typealias ConnectionID = UInt64

    /// Per entry of ``BatchResult/answers``: the connections the job's commands were written on.
    var written: [[ConnectionID]]
    /// Open connections every write of which a `WAIT` has confirmed.
    var confirmed: Set<ConnectionID>
    /// Connections open after the batch.
    var open: Set<ConnectionID>
    /// A `WAIT` was answered with an error (not a short count): the publisher pauses as for a refusal.
    var waitRefused = false

    /// Jobs sorted by what the connections they were written on say now.
    struct Sorted<Job> {
        /// Every connection they were written on has its writes confirmed: stored.
        var confirmed: [Job] = []
        /// Written on open connections not yet confirmed: held, with their connections.
        var held: [(job: Job, on: [ConnectionID])] = []
        /// Written on a connection that has closed (or on none): written again.
        var lost: [Job] = []
        /// How many of `held` came from this batch (the rest were held before).
        var newlyHeld = 0
    }

    /// Sorts the jobs held from earlier batches and this batch's written jobs.
    func sort<Job>(held: [(job: Job, on: [ConnectionID])], written: [(job: Job, on: [ConnectionID])]) -> Sorted<Job> {
        var sorted = Sorted<Job>()
        for (index, entry) in (held + written).enumerated() {
            if entry.on.isEmpty || !entry.on.allSatisfy(open.contains) {
                sorted.lost.append(entry.job)
            } else if entry.on.allSatisfy(confirmed.contains) {
                sorted.confirmed.append(entry.job)
            } else {
                sorted.held.append(entry)
                if index >= held.count { sorted.newlyHeld += 1 }
            }
        }
        return sorted
    }
}
