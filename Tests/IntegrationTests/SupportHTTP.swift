/// Test support: one-shot HTTP GETs and Prometheus scrape parsing.
import FixtureSupport
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct HTTPResult {
    var status: Int
    var body: String
}

/// A one-shot HTTP/1.1 GET on 127.0.0.1 (`Connection: close`, read to EOF).
func httpGet(port: Int, path: String, timeout: Double = 10) throws -> HTTPResult {
    let fd = try connectLoopback(port: port)
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        response += buffer[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let headerEnd = text.range(of: "\r\n\r\n") else { throw TestFailure("no HTTP response from \(path): \(text)") }
    let statusLine = text[..<headerEnd.lowerBound].split(separator: "\r\n").first ?? ""
    let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") ?? 0
    return HTTPResult(status: status, body: String(text[headerEnd.upperBound...]))
}

/// A Prometheus text exposition, as series → value.
struct Scrape {
    let text: String
    let values: [String: Double]

    init(text: String) {
        self.text = text
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " ") else { continue }
            values[String(line[..<space])] = Double(line[line.index(after: space)...])
        }
        self.values = values
    }

    /// The value of one series, written as in the exposition (`name{label="v",...}`); nil when the
    /// series is absent (a check for 0 must not pass on a series that does not exist).
    subscript(_ series: String) -> Double? { values[series] }

    /// The value of one series; throws when the series is absent.
    func value(_ series: String) throws -> Double {
        guard let value = values[series] else { throw TestFailure("no series \(series) in the scrape") }
        return value
    }

    /// Metric names (without labels, histogram suffixes kept).
    var names: Set<String> {
        Set(values.keys.map { String($0.prefix { $0 != "{" }) })
    }
}
