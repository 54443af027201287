/// The standard `process_*` metrics, read from /proc at each scrape (the descriptor count every few seconds).
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `process_open_fds`, counted in /proc/self/fd every ``interval`` on the metrics port's loop rather than
/// in each scrape: the walk is linear in open descriptors (about 7 ms at 10,000 connections), so a scrape
/// would grow with the connections. The value read is at most ``interval`` old.
final class OpenFileCount: Sendable {
    static let interval = TimeAmount.seconds(5)
    private let value = Atomic<Int>(-1)

    func refresh() { value.store(ProcessMetrics.countOpenFDs(), ordering: .relaxed) }

    /// The last count (counted now if there was none yet).
    var current: Int {
        let last = value.load(ordering: .relaxed)
        if last >= 0 { return last }
        refresh()
        return value.load(ordering: .relaxed)
    }
}

/// The standard Prometheus process metrics, read from /proc at scrape time (Linux).
struct ProcessMetrics {
    var residentBytes: Double = 0
    var virtualBytes: Double = 0
    var openFDs: Double = 0
    var maxFDs: Double = 0
    var cpuSeconds: Double = 0
    var startTimeSeconds: Double = 0

    /// - Parameter openFDs: the descriptor count (``OpenFileCount``); counted now when nil.
    static func read(openFDs: Int? = nil) -> ProcessMetrics {
        var m = ProcessMetrics()
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let pageSize = Double(sysconf(Int32(_SC_PAGESIZE)))
        // /proc/self/stat: fields after the parenthesised command name, which may itself hold spaces.
        if let stat = readFile("/proc/self/stat"), let close = stat.lastIndex(of: UInt8(ascii: ")")) {
            let fields = stat[(close + 2)...].split(separator: UInt8(ascii: " ")).map { Double(String(decoding: $0, as: UTF8.self)) ?? 0 }
            // Field numbers (man 5 proc) minus 3: state is fields[0] (field 3).
            if fields.count > 21 {
                m.cpuSeconds = (fields[11] + fields[12]) / ticks  // utime, stime
                m.virtualBytes = fields[20]  // vsize
                m.residentBytes = fields[21] * pageSize  // rss pages
                if let boot = bootTimeSeconds { m.startTimeSeconds = boot + fields[19] / ticks }  // starttime
            }
        }
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 { m.maxFDs = Double(limit.rlim_cur) }
        m.openFDs = Double(openFDs ?? countOpenFDs())
        return m
    }

    /// Open descriptors, from /proc/self/fd (linear in their number).
    static func countOpenFDs() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return 0 }
        var count = 0
        while let entry = readdir(dir) {
            if entry.pointee.d_name.0 != UInt8(ascii: ".") { count += 1 }
        }
        closedir(dir)
        return count - 1  // minus the directory's own descriptor
    }

    func emit(into buffer: inout [UInt8]) {
        func metric(_ name: String, _ type: String, _ help: String, _ value: Double) {
            buffer.append(contentsOf: "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(format(value))\n".utf8)
        }
        metric("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpuSeconds)
        metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", residentBytes)
        metric("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", virtualBytes)
        metric("process_open_fds", "gauge", "Number of open file descriptors.", openFDs)
        metric("process_max_fds", "gauge", "Maximum number of open file descriptors.", maxFDs)
        metric("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", startTimeSeconds)
    }

    private func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    /// System boot time (UNIX seconds): fixed, so read once.
    private static let bootTimeSeconds = bootTime()

    /// System boot time (UNIX seconds), from the `btime` line of /proc/stat.
    private static func bootTime() -> Double? {
        guard let stat = readFile("/proc/stat") else { return nil }
        for line in stat.split(separator: UInt8(ascii: "\n")) where line.starts(with: "btime ".utf8) {
            return Double(String(decoding: line.dropFirst(6), as: UTF8.self))
        }
        return nil
    }

    private static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }
}
