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

/// Reads lines from a file or standard input with `getline`.
final class LineInput {
    private let file: UnsafeMutablePointer<FILE>
    private var buffer: UnsafeMutablePointer<CChar>? = nil
    private var capacity = 0

    /// Opens `path`, or standard input for `-`; nil when it cannot be read (see `errno`).
    init?(path: String) {
        guard let f = path == "-" ? fdopen(dup(STDIN_FILENO), "r") : fopen(path, "r") else { return nil }
        file = f
    }

    deinit {
        free(buffer)
        fclose(file)
    }

    /// The next line with its newline, or nil at the end.
    func nextLine() -> String? {
        let n = getline(&buffer, &capacity, file)
        guard n >= 0, let buffer else { return nil }
        return String(decoding: UnsafeRawBufferPointer(start: buffer, count: n), as: UTF8.self)
    }
}
