#!/usr/bin/env bash
# `decode` and `replay` on a large hex capture (issue 19): µs per record end to end, release build.
#
#   scripts/bench-decode.sh            build (scripts/release.sh), write the input, time both
#
# The input is scripts/make-decode-bench-input.py's (deterministic: 30,000 Codec 8/8E packets, 269,439
# records, 52.8 MB), written once to $BENCH_DECODE_INPUT (default .build/decode-bench.hex). decode:
# `teltonika-ingest decode FILE > /dev/null`, best wall time of BENCH_RUNS (default 5) after a warm-up,
# with hyperfine when it is installed; µs per record = seconds / records. replay: the same file against
# a port nobody listens on, so the run is reading and classifying every frame, then one refused connect.
# BENCH_CALLGRIND=1 adds the top entries of valgrind's callgrind on the first 1,200 lines (about 2 MB).
# Env: BENCH_BIN (skip the build), BENCH_DECODE_INPUT, BENCH_RUNS, BENCH_CALLGRIND. Figures: docs/PERFORMANCE.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

bin="${BENCH_BIN:-}"
if [[ -z "$bin" ]]; then bin="$(scripts/release.sh | tail -1)"; fi
input="${BENCH_DECODE_INPUT:-$root/.build/decode-bench.hex}"
runs="${BENCH_RUNS:-5}"
if [[ ! -s "$input" ]]; then scripts/make-decode-bench-input.py "$input" > /dev/null; fi
records="$("$bin" decode "$input" | grep -o '"timestamp_ms"' | wc -l)"
echo "bench-decode: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $(du -m "$input" | cut -f1) MB, $records records"

# Best wall seconds of $runs runs of "$@" (output to /dev/null), and the user+system seconds of that run.
best_of() {
    local best="" cpu="" times
    times="$(mktemp)"
    "$@" > /dev/null 2>&1 || true  # warm-up: the page cache, the binary
    for _ in $(seq "$runs"); do
        /usr/bin/time -f '%e %U %S' -o "$times" "$@" > /dev/null 2>&1 || true
        read -r wall user sys < <(tail -1 "$times")
        if [[ -z "$best" ]] || awk "BEGIN { exit !($wall < $best) }"; then
            best="$wall"
            cpu="$(awk "BEGIN { print $user + $sys }")"
        fi
    done
    rm -f "$times"
    echo "$best $cpu"
}

per_record() { awk "BEGIN { printf \"%.3f\", $1 * 1e6 / $records }"; }

if command -v hyperfine > /dev/null; then
    hyperfine --warmup 1 --runs "$runs" --style basic "$bin decode $input" --output=null
fi
read -r wall cpu <<< "$(best_of "$bin" decode "$input")"
echo "decode: best of $runs: ${wall} s wall ($(per_record "$wall") µs/record), ${cpu} s CPU ($(per_record "$cpu") µs/record)"
# For make bench's summary table (scripts/bench.sh).
if [[ -n "${BENCH_SUMMARY:-}" ]]; then
    printf 'decode of a %s MB capture, µs per record end to end (target <= 1)\t%s\n' "$(du -m "$input" | cut -f1)" "$(per_record "$wall")" >> "$BENCH_SUMMARY"
fi

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
read -r wall cpu <<< "$(best_of "$bin" replay "$input" --port "$port" --response-timeout 1)"
echo "replay input (read, classify, one refused connect): best of $runs: ${wall} s wall ($(per_record "$wall") µs/record), ${cpu} s CPU"
if [[ -n "${BENCH_SUMMARY:-}" ]]; then
    printf 'replay reading the same capture, µs per record\t%s\n' "$(per_record "$wall")" >> "$BENCH_SUMMARY"
fi

if [[ "${BENCH_CALLGRIND:-0}" == 1 ]] && command -v valgrind > /dev/null; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    head -n 1200 "$input" > "$work/slice.hex"
    # valgrind 3.19 cannot read the DWARF 5 of the toolchain's static stdlib; the symbol table is enough.
    objcopy --strip-debug "$bin" "$work/teltonika-ingest"
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$work/teltonika-ingest" decode "$work/slice.hex" \
        > /dev/null 2> "$work/valgrind.log"
    echo "callgrind, decode of the first 1,200 lines ($("$bin" decode "$work/slice.hex" | grep -o '"timestamp_ms"' | wc -l) records):"
    grep 'Collected' "$work/valgrind.log" | sed 's/^==[0-9]*== /  /'
    callgrind_annotate "$work/callgrind.out" 2> /dev/null | grep -E '^ *[0-9,]+ \(' | sed -n '2,13p' \
        | sed 's/ \[[^]]*\]$//; s/???://' | swift demangle --simplified | cut -c1-150
fi
