/// `replay`: sends captured device traffic to a server and checks every answer.
import Codec8
import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// One captured unit of device traffic and the answer a correct server gives it.
public enum ReplayUnit: Sendable, Equatable {
    /// An IMEI login: answered 01 (starts a new connection when one is open).
    case login(String)
    /// The keep-alive byte: no answer.
    case keepAlive
    /// A valid AVL packet: answered with its record count.
    case avl([UInt8], records: Int)
    /// A valid Codec 12-15 frame: never answered.
    case message([UInt8])
    /// Bytes the server must refuse: no ACK, connection closed.
    case invalid([UInt8], category: String)
}

/// What one device sent, in order.
public struct ReplaySession: Sendable, Equatable {
    public var name: String
    public var units: [ReplayUnit]

    public init(name: String, units: [ReplayUnit]) {
        self.name = name
        self.units = units
    }

    /// The IMEI of the first login, if the session has one.
    public var imei: String? {
        for unit in units { if case .login(let imei) = unit { return imei } }
        return nil
    }

    /// Classifies one unit with the codec's own decoder.
    static func classify(_ bytes: [UInt8], maxDataLength: Int) -> ReplayUnit {
        do throws(Codec8Error) {
            return try StandaloneFrame.withDecoded(bytes, maxDataLength: maxDataLength) { frame -> ReplayUnit in
                switch frame {
                case .keepAlive: .keepAlive
                case .login(let imei): .login(imei.description)
                case .frame(.avl(let packet)): .avl(bytes, records: packet.recordCount)
                case .frame(.message): .message(bytes)
                }
            }
        } catch {
            return .invalid(bytes, category: error.category)
        }
    }

    /// A hex file: one frame per line, `#` comments, blank lines ignored, read as `decode` reads it.
    public static func fromHex(_ bytes: [UInt8], name: String, maxDataLength: Int) throws(ReplayInputError) -> ReplaySession {
        var units: [ReplayUnit] = []
        var lines = HexLineReader(bytes: bytes)
        try lines.forEachLine { (line) throws(ReplayInputError) in
            switch line.content {
            case .blank: break
            case .notHex: throw ReplayInputError("\(name):\(line.number): not hex")
            case .bytes(let frame): units.append(classify(Array(frame), maxDataLength: maxDataLength))
            }
        }
        return ReplaySession(name: name, units: units)
    }

    /// The device-to-server flows of a capture, one session each: the flows to `serverPort`, or (nil)
    /// every flow whose first bytes are an IMEI login. Each flow is cut into units the way the server
    /// frames it; once a unit is invalid, the rest of the flow is that one invalid unit (the server closes).
    public static func fromCapture(
        _ bytes: [UInt8],
        name: String,
        serverPort: UInt16?,
        maxDataLength: Int
    ) throws(ReplayInputError) -> [ReplaySession] {
        var sessions: [ReplaySession] = []
        for flow in try ReplayInputError.flows(of: bytes, name: name).tcp {
            if let serverPort, flow.destinationPort != serverPort { continue }
            var units: [ReplayUnit] = []
            var offset = 0
            var cutter = TeltonikaFrameCutter(maxDataLength: maxDataLength)
            while offset < flow.payload.count {
                let rest = Array(flow.payload[offset...])
                let cut: TeltonikaFrameCutter.Cut
                do throws(Codec8Error) {
                    cut = try cutter.next(rest)
                } catch {
                    units.append(.invalid(rest, category: error.category))
                    break
                }
                switch cut {
                case .needMore:
                    units.append(.invalid(rest, category: "truncated"))
                    offset = flow.payload.count
                case .keepAlive:
                    units.append(.keepAlive)
                    offset += 1
                case .login(let length), .frame(let length):
                    units.append(classify(Array(rest.prefix(length)), maxDataLength: maxDataLength))
                    offset += length
                }
                if case .invalid = units.last { break }
            }
            guard case .login = units.first else { continue }  // not a device's side of a connection
            sessions.append(ReplaySession(name: "\(name) \(flow.source)>\(flow.destination)", units: units))
        }
        return sessions
    }
}

public struct ReplayInputError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }

    /// The flows of capture `name`; a capture that cannot be read is an input error naming it.
    static func flows(of bytes: [UInt8], name: String) throws(ReplayInputError) -> Capture.Flows {
        do {
            return try Capture.flows(in: bytes)
        } catch {
            throw ReplayInputError("\(name): \(error)")
        }
    }
}

/// How a replay runs.
public struct ReplayOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 5027
    /// Where captured UDP datagrams go (the server's UDP_PORT).
    public var udpPort = 5027
    /// How many times a datagram is sent again when its ACK does not come within the response timeout.
    public var udpResends = 2
    /// Frames per second over all connections (0: as fast as the answers come).
    public var rate: Double = 0
    /// How many times each session is replayed.
    public var loop = 1
    /// Sessions replayed at once.
    public var concurrency = 1
    /// How long to wait for a login answer, an ACK, or the close after an invalid frame; for a datagram
    /// the server must refuse, how long it must stay silent.
    public var responseTimeout: Double = 10
    /// The IMEI for sessions that have none (hex files without a login line).
    public var imei: String? = nil

    public init() {}
}

/// The outcome of a replay. `mismatched` counts every answer that differs from what the protocol
/// demands: a wrong or missing ACK, an ACK for a frame the server must refuse, a refused login.
public struct ReplayReport: Sendable, Equatable {
    public var sessions = 0
    public var connections = 0
    public var framesSent = 0
    public var acked = 0
    public var recordsAcked = 0
    public var rejected = 0
    public var messages = 0
    public var keepAlives = 0
    public var mismatched = 0
    public var connectErrors = 0
    /// UDP datagrams sent (first sends; also counted in `framesSent`), and sends again after a timeout.
    public var datagrams = 0
    public var resends = 0
    public var seconds = 0.0
    /// The first mismatches, described (at most 20 kept).
    public var problems: [String] = []

    public var isClean: Bool { mismatched == 0 && connectErrors == 0 && framesSent > 0 }

    public var summary: String {
        let rate = seconds > 0 ? Double(framesSent) / seconds : 0
        return "replay: sessions=\(sessions) connections=\(connections) sent=\(framesSent) acked=\(acked) records_acked=\(recordsAcked) "
            + "rejected=\(rejected) messages=\(messages) keepalives=\(keepAlives) mismatched=\(mismatched) "
            + "connect_errors=\(connectErrors) " + (datagrams > 0 ? "datagrams=\(datagrams) resends=\(resends) " : "")
            + "seconds=\(String(format: "%.3f", seconds)) frames_per_s=\(String(format: "%.1f", rate))"
    }

    /// Counts an answer that differs from what the protocol demands, and keeps its description.
    mutating func mismatch(_ text: String) {
        mismatched += 1
        if problems.count < 20 { problems.append(text) }
    }

    /// Counts a server that could not be reached, and keeps the description.
    mutating func connectError(_ text: String) {
        connectErrors += 1
        if problems.count < 20 { problems.append(text) }
    }

    mutating func merge(_ other: ReplayReport) {
        sessions += other.sessions
        connections += other.connections
        framesSent += other.framesSent
        acked += other.acked
        recordsAcked += other.recordsAcked
        rejected += other.rejected
        messages += other.messages
        keepAlives += other.keepAlives
        mismatched += other.mismatched
        connectErrors += other.connectErrors
        datagrams += other.datagrams
        resends += other.resends
        problems += other.problems.prefix(max(0, 20 - problems.count))
    }
}

/// Replays sessions (TCP) and datagram flows (UDP) against a server with blocking sockets,
/// `concurrency` at a time, and checks every answer.
public final class Replayer: Sendable {
    private let sessions: [ReplaySession]
    private let datagramFlows: [ReplayDatagramFlow]
    let options: ReplayOptions
    private let total = NIOLockedValueBox(ReplayReport())
    let pacer: Pacer?

    public init(sessions: [ReplaySession], datagramFlows: [ReplayDatagramFlow] = [], options: ReplayOptions) {
        self.sessions = sessions
        self.datagramFlows = datagramFlows
        self.options = options
        self.pacer = options.rate > 0 ? Pacer(perSecond: options.rate) : nil
    }

    /// Frames and datagrams to send in all (for progress).
    public var plannedFrames: Int {
        let frames = sessions.reduce(0) { total, session in
            total + session.units.filter { if case .login = $0 { false } else { true } }.count
        }
        return (frames + datagramFlows.reduce(0) { $0 + $1.datagrams.count }) * options.loop
    }

    /// One replay job: a TCP session or a UDP flow, by index.
    private enum Work {
        case session(Int)
        case datagramFlow(Int)
    }

    /// The report so far (for progress).
    public var progress: ReplayReport { total.withLockedValue { $0 } }

    /// Runs every session `loop` times; returns the merged report.
    public func run() -> ReplayReport {
        let started = Date()
        // Copy k of session s: the original IMEI for the first copy, distinct IMEIs for the others, so
        // parallel copies do not replace each other's connections.
        let work = sessions.indices.map(Work.session) + datagramFlows.indices.map(Work.datagramFlow)
        let jobs = (0..<options.loop).flatMap { copy in work.map { (work: $0, copy: copy) } }
        let next = NIOLockedValueBox(0)
        let group = DispatchGroup()
        for _ in 0..<max(1, min(options.concurrency, jobs.count)) {
            group.enter()
            Thread.detachNewThread { [self] in
                while true {
                    let index = next.withLockedValue { n -> Int in
                        defer { n += 1 }
                        return n
                    }
                    guard index < jobs.count else { break }
                    let job = jobs[index]
                    let copy = job.copy == 0 ? 0 : index
                    let report: ReplayReport
                    switch job.work {
                    case .session(let s): report = replay(sessions[s], copy: copy)
                    case .datagramFlow(let f): report = replay(datagramFlows[f], copy: copy)
                    }
                    total.withLockedValue { $0.merge(report) }
                }
                group.leave()
            }
        }
        group.wait()
        var report = total.withLockedValue { $0 }
        report.seconds = Date().timeIntervalSince(started)
        return report
    }

    /// The IMEI for copy `copy` of a session: the original, or the original with its last six digits
    /// replaced by the copy number.
    static func imei(_ original: String, copy: Int) -> String {
        guard copy > 0 else { return original }
        return String(original.dropLast(6)) + String(format: "%06d", copy % 1_000_000)
    }

    private func replay(_ session: ReplaySession, copy: Int) -> ReplayReport {
        var report = ReplayReport()
        report.sessions = 1
        var connection: Connection? = nil
        var imei = session.imei ?? options.imei
        if let override = options.imei { imei = override }
        func problem(_ index: Int, _ text: String) { report.mismatch("\(session.name) frame \(index + 1): \(text)") }
        /// An open, logged-in connection, or nil (counted) when none can be had.
        func open(_ index: Int) -> Connection? {
            guard let id = imei else { return nil }
            guard let c = Connection(host: options.host, port: options.port) else {
                report.connectError("\(session.name): cannot connect to \(options.host):\(options.port)")
                return nil
            }
            report.connections += 1
            pacer?.wait()
            c.send(IMEI(Self.imei(id, copy: copy))!.loginFrame)
            let answer = c.receive(1, timeout: options.responseTimeout)
            guard answer == .bytes([1]) else {
                problem(index, "login \(Self.imei(id, copy: copy)) answered \(answer), expected 01")
                return nil
            }
            return c
        }
        for (index, unit) in session.units.enumerated() {
            if case .login(let id) = unit {
                // A login line: a new connection for what follows (the first one opens lazily).
                if options.imei == nil { imei = id }
                if connection != nil { connection = open(index) }
                continue
            }
            if connection == nil { connection = open(index) }
            guard let c = connection else { break }
            pacer?.wait()
            report.framesSent += 1
            switch unit {
            case .login:
                break
            case .keepAlive:
                c.send([TeltonikaFramer.keepAliveByte])
                report.keepAlives += 1
            case .message(let bytes):
                c.send(bytes)
                report.messages += 1
            case .avl(let bytes, let records):
                c.send(bytes)
                let expected = AVLAck.bytes(count: UInt32(records))
                let answer = c.receive(4, timeout: options.responseTimeout)
                if answer == .bytes(expected) {
                    report.acked += 1
                    report.recordsAcked += records
                } else {
                    problem(index, "expected ACK \(records), got \(answer)")
                    connection = nil
                }
            case .invalid(let bytes, let category):
                c.send(bytes)
                // A truncated frame is only incomplete to the server: it waits for the rest. The capture
                // ended there, so end the stream too; the server must then close without an ACK.
                if category == "truncated" { c.shutdownWrite() }
                let answer = c.receive(1, timeout: options.responseTimeout)
                if answer == .closed([]) {
                    report.rejected += 1
                } else {
                    problem(index, "a \(category) frame must be refused (no ACK, closed), got \(answer)")
                }
                connection = nil
            }
        }
        return report
    }

    /// Spaces sends evenly at a global rate.
    final class Pacer: Sendable {
        private let interval: Double
        private let nextSlot = NIOLockedValueBox(Date())

        init(perSecond: Double) { interval = 1 / perSecond }

        func wait() {
            let slot = nextSlot.withLockedValue { next -> Date in
                let slot = max(next, Date())
                next = slot.addingTimeInterval(interval)
                return slot
            }
            let delay = slot.timeIntervalSinceNow
            if delay > 0 { usleep(useconds_t(delay * 1_000_000)) }
        }
    }

    /// A blocking TCP client socket.
    final class Connection {
        enum Answer: Equatable, CustomStringConvertible {
            case bytes([UInt8])
            case closed([UInt8])
            case timeout([UInt8])

            var description: String {
                switch self {
                case .bytes(let b): Hex.encode(b)
                case .closed(let b): b.isEmpty ? "the connection closed" : "\(Hex.encode(b)) then the connection closed"
                case .timeout(let b): b.isEmpty ? "nothing (timeout)" : "\(Hex.encode(b)) then nothing (timeout)"
                }
            }
        }

        private let fd: Int32

        init?(host: String, port: Int) {
            guard let fd = connectedSocket(host: host, port: port, type: Int32(SOCK_STREAM.rawValue)) else { return nil }
            self.fd = fd
        }

        deinit { close(fd) }

        func send(_ bytes: [UInt8]) {
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return }  // the answer (closed) tells
                offset += n
            }
        }

        /// Sends FIN: no more bytes from this side.
        func shutdownWrite() { _ = shutdown(fd, Int32(SHUT_WR)) }

        func receive(_ count: Int, timeout: Double) -> Answer {
            var out: [UInt8] = []
            let deadline = Date().addingTimeInterval(timeout)
            while out.count < count {
                let left = deadline.timeIntervalSinceNow
                guard left > 0 else { return .timeout(out) }
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, Int32(left * 1000) + 1) <= 0 { continue }
                var buffer = [UInt8](repeating: 0, count: count - out.count)
                let n = recv(fd, &buffer, buffer.count, 0)
                if n <= 0 { return .closed(out) }
                out += buffer[0..<n]
            }
            return .bytes(out)
        }
    }
}

/// A blocking socket of `type` (stream or datagram) connected to `host:port` (the first address it
/// resolves to); nil when it cannot be had.
func connectedSocket(host: String, port: Int, type: Int32) -> Int32? {
    var hints = addrinfo()
    hints.ai_socktype = type
    var list: UnsafeMutablePointer<addrinfo>? = nil
    guard getaddrinfo(host, String(port), &hints, &list) == 0, let info = list else { return nil }
    defer { freeaddrinfo(list) }
    let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
    guard fd >= 0 else { return nil }
    guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
        close(fd)
        return nil
    }
    return fd
}
