/// Unbuffered writes to stdout and stderr for the subcommands.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Unbuffered writes to the standard file descriptors (no shared `FILE*` globals).
enum StandardIO {
    /// Writes all of `bytes` to file descriptor `fd`, retrying on short writes and EINTR.
    static func write(_ bytes: [UInt8], to fd: Int32) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return
                }
                offset += n
            }
        }
    }

    static func writeStdout(_ bytes: [UInt8]) { write(bytes, to: STDOUT_FILENO) }

    static func writeStderr(_ text: String) { write(Array(text.utf8), to: STDERR_FILENO) }
}
