/// The `--host`/`--port` options that `replay` and `simulate` share.
import ArgumentParser

/// `--host` and `--port` of a running server, as `replay` and `simulate` both take them.
struct ServerAddress: ParsableArguments {
    @Option(help: "Server address.")
    var host = "127.0.0.1"

    @Option(help: "Server port.")
    var port = 5027

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1-65535") }
    }
}
