#!/usr/bin/env bash
# `make bench`: the Codec8 micro benchmarks (ordo-one/benchmark), then the server's instructions per ACKed
# record under callgrind (scripts/bench-instructions.sh; BENCH_INSTRUCTIONS=0 skips it), then the end-to-end benchmark
# (scripts/bench-e2e.sh: Redis ceiling, server under the C device fleet, latency, CPU, idle RSS), then the
# same per Redis topology (scripts/bench-redis.sh: plain, a replica with REDIS_MIN_REPLICAS=1, TLS), then
# `decode` and `replay` on a 50 MB hex capture (scripts/bench-decode.sh; BENCH_DECODE=0 skips it).
#
# The benchmarks are their own SwiftPM package in Benchmarks/, so the server's build never needs the
# harness. The plugin builds them in release mode first (2 to 4 minutes the first time on 2 cores).
# Extra arguments go to the benchmark plugin, e.g. `scripts/bench.sh --filter 'CRC.*'`; BENCH_E2E=0 skips
# the end-to-end part.
#
# `--scale` makes the tool print raw per-sample values: one sample is 1,000 records (or 1,000 KiB for
# the CRC buffer), so `Malloc (total)` is mallocs per 1,000 records and `Time` is µs per 1,000 records.
# Without it the tool divides by 1,000 and rounds, which would print 0.4 mallocs/record as 0.
# `Throughput (K)` is thousands of records (KiB for the CRC buffer) per second either way.
# How to read the output, and the figures of the last recorded run: docs/PERFORMANCE.md.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/Benchmarks"
# The figures of issue 19 gathered from the scripts below ("figure<TAB>value" lines), printed as one table
# at the end, so a run can be compared with the last one in docs/PERFORMANCE.md.
export BENCH_SUMMARY="${BENCH_SUMMARY:-$(mktemp)}"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
print_summary() {
    [ -s "$BENCH_SUMMARY" ] || return 0
    echo
    echo "summary ($(git -C "$root" rev-parse --short=12 HEAD); load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end):"
    echo "| figure | value |"
    echo "|---|---|"
    while IFS=$'\t' read -r name value; do echo "| $name | $value |"; done < "$BENCH_SUMMARY"
}
trap print_summary EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'),"\
     "load average $(cut -d' ' -f1-3 /proc/loadavg); $(swift --version 2>/dev/null | head -1)"
swift package --disable-sandbox benchmark --target Codec8Benchmarks --no-progress --scale "$@"
if [ "${BENCH_INSTRUCTIONS:-1}" != 0 ]; then
    "$root/scripts/bench-instructions.sh"
fi
if [ "${BENCH_E2E:-1}" != 0 ]; then
    "$root/scripts/bench-e2e.sh"
    "$root/scripts/bench-redis.sh"
    "$root/scripts/bench-hostile.sh"
fi
if [ "${BENCH_DECODE:-1}" != 0 ]; then
    "$root/scripts/bench-decode.sh"
fi
