/// Where Redis is and how to log in: `redis://[user:password@]host:port[/db]`, the same over TLS as
/// `rediss://…`, or `unix:///path[?db=N]`.
public struct RedisURL: Sendable, Equatable, CustomStringConvertible {
    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    public var endpoint: Endpoint
    public var username: String?
    public var password: String?
    /// Database number for `SELECT`; 0 (the default database) sends none.
    public var database: Int
    /// TLS (`rediss://`): the connection is encrypted and the server's certificate verified.
    public var tls: Bool

    public init(endpoint: Endpoint, username: String? = nil, password: String? = nil, database: Int = 0, tls: Bool = false) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
    }

    /// Why a text is not a Redis URL.
    public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Parses a URL; throws when it is not one of the accepted forms.
    public init(parsing text: String) throws(ParseError) {
        let forms = "redis://[user:password@]host:port[/db], rediss://[user:password@]host:port[/db] or unix:///path"
        let bad = ParseError(description: "expected \(forms), got '\(text)'")
        if text.hasPrefix("unix://") {
            var rest = String(text.dropFirst("unix://".count))
            var database = 0
            if let q = rest.firstIndex(of: "?") {
                let query = rest[rest.index(after: q)...]
                rest = String(rest[..<q])
                guard query.hasPrefix("db="), let db = Int(query.dropFirst(3)), db >= 0 else { throw bad }
                database = db
            }
            guard rest.hasPrefix("/") else { throw bad }
            self.init(endpoint: .unix(path: rest), database: database)
            return
        }
        let tls = text.hasPrefix("rediss://")
        guard tls || text.hasPrefix("redis://") else { throw bad }
        var rest = Substring(text.dropFirst(tls ? "rediss://".count : "redis://".count))
        var username: String? = nil
        var password: String? = nil
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                let user = credentials[..<colon]
                username = user.isEmpty ? nil : RedisURL.percentDecoded(user)
                password = RedisURL.percentDecoded(credentials[credentials.index(after: colon)...])
            } else {
                password = RedisURL.percentDecoded(credentials)
            }
        }
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let db = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !db.isEmpty {
                guard let n = Int(db), n >= 0 else { throw bad }
                database = n
            }
        }
        var host = String(rest)
        var port = 6379
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else { throw bad }
            port = p
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw bad }
        self.init(endpoint: .tcp(host: host, port: port), username: username, password: password, database: database, tls: tls)
    }

    /// `host:port` or the socket path, for logs and to compare endpoints.
    public var endpointDescription: String {
        switch endpoint {
        case .tcp(let host, let port): "\(host.contains(":") ? "[\(host)]" : host):\(port)"
        case .unix(let path): path
        }
    }

    /// The URL with the password hidden, for logs.
    public var description: String {
        let auth = password == nil ? "" : "\(username ?? ""):***@"
        switch endpoint {
        case .tcp(let host, let port):
            let scheme = tls ? "rediss://" : "redis://"
            return "\(scheme)\(auth)\(host.contains(":") ? "[\(host)]" : host):\(port)" + (database == 0 ? "" : "/\(database)")
        case .unix(let path):
            return "unix://\(path)" + (database == 0 ? "" : "?db=\(database)")
        }
    }

    private static func percentDecoded(_ s: Substring) -> String {
        var out: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let c = it.popFirst() {
            if c == UInt8(ascii: "%"), it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) {
                out.append(v)
                it = it.dropFirst(2)
            } else {
                out.append(c)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
