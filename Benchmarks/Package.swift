// swift-tools-version: 6.1
// Micro benchmarks of the Codec8 module (ordo-one/benchmark). A separate package so that the
// server's own build never fetches or compiles the benchmark harness. Run with `make bench`.
import PackageDescription

let package = Package(
    name: "Codec8Benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "teltonika-ingest", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", exact: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "Codec8Benchmarks",
            dependencies: [
                .product(name: "Codec8", package: "teltonika-ingest"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/Codec8Benchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    ]
)
