/// Test support: Debian's haproxy (`scripts/deps.sh`) in front of the server, `mode tcp` with `send-proxy-v2`.
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One haproxy process listening on a free loopback port and relaying every connection to `backendPort`
/// (from `backendSource`, 127.0.0.1 by default), each preceded by a PROXY v2 header naming the client.
/// With several backends, connections go round-robin; one that cannot connect (a dead instance) is
/// dispatched to another at each retry, and a backend failing its health check (a TCP connect every
/// 500 ms, no bytes sent) gets no new connections until it passes one.
final class HAProxyProcess {
    let process = Process()
    let port: Int
    private let directory: String

    convenience init(backendPort: Int, backendSource: String? = nil) throws {
        try self.init(backendPorts: [backendPort], backendSource: backendSource)
    }

    init(backendPorts: [Int], backendSource: String? = nil) throws {
        port = TestEnvironment.freePort()
        directory = NSTemporaryDirectory() + "haproxy-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let source = backendSource.map { " source \($0)" } ?? ""
        let check = backendPorts.count > 1 ? " check inter 500ms fall 1 rise 1" : ""
        let servers = backendPorts.enumerated().map { index, backendPort in
            "    server ingest\(index) 127.0.0.1:\(backendPort) send-proxy-v2\(source)\(check)"
        }.joined(separator: "\n")
        let configuration = """
            global
                maxconn 2000
            defaults
                mode tcp
                timeout connect 1s
                timeout client 60s
                timeout server 60s
                retries 3
                option redispatch 1
            frontend devices
                bind 127.0.0.1:\(port)
                default_backend ingest
            backend ingest
                balance roundrobin
            \(servers)

            """
        let path = directory + "/haproxy.cfg"
        try configuration.write(toFile: path, atomically: true, encoding: .utf8)
        let binary = ["/usr/sbin/haproxy", "/usr/bin/haproxy"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let binary else { throw TestFailure("haproxy is not installed (scripts/deps.sh installs it)") }
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["-db", "-f", path]  // foreground, no daemon
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Listening, seen in the kernel's socket table (a probe connection would reach the server as a device).
        let local = String(format: "0100007F:%04X", port)
        try waitFor(timeout: 10, "haproxy listening on \(port)") {
            guard process.isRunning else { throw TestFailure("haproxy exited with \(process.terminationStatus)") }
            return readWholeFile("/proc/net/tcp").split(separator: "\n").contains { line in
                let fields = line.split(separator: " ")
                return fields.count > 3 && fields[1] == local && fields[3] == "0A"
            }
        }
    }

    deinit {
        terminateAndWait(process)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A PROXY v2 header for TCP over IPv4 from `source`:`port` (dotted quad) to 127.0.0.1:5027, as a load balancer sends.
func proxyHeaderV4(source: String, port: UInt16 = 40_000, tlvs: [UInt8] = []) -> [UInt8] {
    let address = source.split(separator: ".").map { UInt8($0)! }
    let length = 12 + tlvs.count
    return proxySignature + [0x21, 0x11, UInt8(length >> 8), UInt8(length & 0xFF)] + address + [127, 0, 0, 1]
        + [UInt8(port >> 8), UInt8(port & 0xFF), 0x13, 0xA3] + tlvs
}

let proxySignature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
