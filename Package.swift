// swift-tools-version: 6.1
import PackageDescription

/// Settings every target shares (STYLE.md habit 15).
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

/// The build's revision: `TELTONIKA_REVISION` in the environment (scripts/release.sh sets it), compiled into
/// CBuildInfo alone (as `-Xcc -D...` it reached every C target, and each new revision rebuilt BoringSSL).
/// Characters outside `[A-Za-z0-9._+-]` are dropped: it becomes a C string literal.
let revision = String(
    (Context.environment["TELTONIKA_REVISION"] ?? "").filter { $0.isASCII && ($0.isLetter || $0.isNumber || "._+-".contains($0)) }
)

let package = Package(
    name: "teltonika-ingest",
    // macOS: the library and the binary build there; the test suites are Linux-only (Glibc, /proc,
    // prlimit, redis-server and openssl from apt), as is `make test`.
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "teltonika-ingest", targets: ["teltonika-ingest"]),
        .library(name: "Codec8", targets: ["Codec8"]),
    ],
    // Exact versions, so a release and an image build resolve what was tested, wherever they run. Not
    // Package.resolved: the development machines resolve github.com URLs from a local mirror whose commit
    // ids are not GitHub's, so a resolved file from one place does not resolve in the other; versions do.
    // The packages these depend on are pinned the same way below (their own manifests take ranges). Move a pin: change the version here, `swift package update`,
    // `make test`, and say why in the commit.
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio", exact: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl", exact: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", exact: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", exact: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", exact: "2.13.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", exact: "0.2.0"),
        // Dependencies of the above.
        .package(url: "https://github.com/apple/swift-async-algorithms.git", exact: "1.1.4"),
        .package(url: "https://github.com/apple/swift-atomics.git", exact: "1.3.0"),
        .package(url: "https://github.com/apple/swift-collections.git", exact: "1.6.0"),
        .package(url: "https://github.com/apple/swift-numerics.git", exact: "1.1.1"),
        .package(url: "https://github.com/apple/swift-system.git", exact: "1.8.1"),
    ],
    targets: [
        // Pure protocol: bytes in, values out. No NIO, no Foundation I/O, no Redis.
        .target(name: "Codec8", swiftSettings: swiftSettings),
        // hiredis 0.14 (libhiredis-dev). A plain module map: hiredis' pkg-config flags draw a SwiftPM warning.
        .systemLibrary(name: "CHiredis", path: "Sources/CHiredis"),
        // OpenSSL 3.0 (libssl-dev) for rediss://: hiredis 0.14 has no TLS. A plain module map, as for CHiredis.
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL"),
        // The build's revision (`revision` above; "unknown" without one).
        .target(
            name: "CBuildInfo",
            cSettings: revision.isEmpty ? [] : [.define("TELTONIKA_REVISION", to: "\"\(revision)\"")]
        ),
        // The fatal-signal handler: async-signal-safe, so written in C.
        .target(name: "CCrashHandler"),
        // Redis on the wire: the hiredis connection (TLS through OpenSSL), RESP writing, REDIS_URL. No server, no NIO.
        .target(name: "RedisWire", dependencies: ["CHiredis", "COpenSSL"], swiftSettings: swiftSettings),
        // The device server (acceptor, sessions, publisher, metrics port).
        .target(
            name: "Ingest",
            dependencies: [
                "Codec8", "RedisWire", "CBuildInfo", "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Process life: signals, drain, crash handling, exit statuses.
        .target(
            name: "Lifecycle",
            dependencies: [
                "CCrashHandler",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Engineer-facing tools behind the subcommands (decode; replay and simulate later).
        .target(
            name: "IngestTools",
            dependencies: [
                "Codec8",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        ),
        // The binary: only wires the modules together.
        .executableTarget(
            name: "teltonika-ingest",
            dependencies: [
                "Codec8", "Ingest", "RedisWire", "Lifecycle", "IngestTools",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The fixture corpus, JSON comparison, test certificates and a TLS redis-server, shared by the test targets.
        // It names the pinned packages no other target names (all are built anyway, for swift-nio and
        // hdrhistogram-swift), only so that SwiftPM does not warn that their pins are unused.
        .target(
            name: "FixtureSupport",
            dependencies: [
                "Codec8",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Numerics", package: "swift-numerics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            path: "Tests/FixtureSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "Codec8Tests",
            dependencies: ["Codec8", "FixtureSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IngestTests",
            dependencies: [
                "Codec8", "Ingest", "RedisWire", "FixtureSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "Codec8", "Ingest", "RedisWire", "FixtureSupport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RedisWireTests",
            dependencies: ["RedisWire", "FixtureSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CLITests",
            dependencies: [
                "Codec8", "Lifecycle", "FixtureSupport", "IngestTools",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
