#!/usr/bin/env bash
# Instructions per ACKed record (issue 19): the yardstick that holds on a busy machine, where CPU time per
# record does not. The release server runs under valgrind's callgrind against a throwaway redis-server,
# with its defaults (device registry and commands on), and the fleet simulator (not under valgrind) sends
# a fixed workload: BENCH_DEVICES devices, each logs in and sends its packets one at a time, each ACKed
# only after Redis confirmed it. It runs twice, with BENCH_PACKETS_SMALL and BENCH_PACKETS_LARGE packets
# per device; the difference in the server's instructions over the difference in ACKed records is the
# cost per record, start-up, shutdown and warm-up cancelled (scripts/callgrind-per-record.py, which also
# prints the functions that cost the most per record).
#
#   scripts/bench-instructions.sh          build (scripts/release.sh), run both sizes, print the figures
#
# Counts include every thread of the server (event loops, the publisher, the metrics port), not Redis or
# the simulator. They move by a few percent between runs: batching depends on timing. valgrind 3.19
# cannot read the DWARF 5 of the static stdlib, so the binary is profiled after `objcopy --strip-debug`.
# Then, with strace installed, the system calls per packet the same way (BENCH_SYSCALLS=0 skips them).
# Env: BENCH_BIN (skip the build), BENCH_DEVICES (50), BENCH_RECORDS (10 per packet), BENCH_PACKETS_SMALL
# (10), BENCH_PACKETS_LARGE (50), BENCH_TOP (20 functions), BENCH_KEEP (a directory to keep the profiles in).
# Figures: docs/PERFORMANCE.md ("Instructions per record").
set -euo pipefail
cd "$(dirname "$0")/.."

devices="${BENCH_DEVICES:-50}"
records="${BENCH_RECORDS:-10}"
small="${BENCH_PACKETS_SMALL:-10}"
large="${BENCH_PACKETS_LARGE:-50}"
top="${BENCH_TOP:-20}"

if ! command -v valgrind >/dev/null; then
    echo "bench-instructions: valgrind is not installed (apt-get install valgrind): skipped" >&2
    exit 0
fi
source scripts/bench-common.sh
objcopy --strip-debug "$bin" "$work/teltonika-ingest"
start_redis
# The binary's own revision is in its teltonika_build_info; with BENCH_BIN the working tree's may differ.
if [ -n "${BENCH_BIN:-}" ]; then
    what="binary $BENCH_BIN (BENCH_BIN)"
else
    what="revision $(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- Sources || echo ' (modified)')"
fi
echo "bench-instructions: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $what"
echo "workload: $devices devices, $records records per packet, $small then $large packets per device (simulate --seed 19)"

acked() { python3 -c 'import json, sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["records_acked"])' <"$work/$1.json"; }

profile() {  # profile NAME PACKETS TOOL: the server under TOOL (callgrind, or strace) for one workload
    local device_port metrics_port server_pid tool_pid
    device_port="$(free_port)"
    metrics_port="$(free_port)"
    local tool=(valgrind --tool=callgrind --callgrind-out-file="$work/$1.out")
    if [[ "$3" == strace ]]; then tool=(strace -f -c -o "$work/$1.strace"); fi
    env TELTONIKA_HOST=127.0.0.1 TELTONIKA_PORT="$device_port" METRICS_HOST=127.0.0.1 METRICS_PORT="$metrics_port" \
        REDIS_URL="redis://127.0.0.1:$redis_port" REDIS_TELEMETRY_STREAM="bench:$1" LOG_LEVEL=warning \
        "${tool[@]}" "$work/teltonika-ingest" serve 2>"$work/$1.log" &
    tool_pid=$!
    pids+=("$tool_pid")
    for _ in $(seq 600); do curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
    if ! curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1; then
        echo "bench-instructions: the server under $3 did not become ready" >&2
        cat "$work/$1.log" >&2
        exit 1
    fi
    # valgrind runs the server in its own process; strace runs it as its child, which gets the signal.
    server_pid="$tool_pid"
    if [[ "$3" == strace ]]; then server_pid="$(pgrep -P "$tool_pid" | head -1)"; fi
    "$bin" simulate --host 127.0.0.1 --port "$device_port" --devices "$devices" --duration 3600 \
        --packets-per-device "$2" --records-per-packet "$records" --codec mixed --seed 19 \
        --response-timeout-ms 120000 --json >"$work/$1.json"
    kill -TERM "$server_pid"
    wait "$tool_pid" 2>/dev/null || true
}

profile small "$small" callgrind
profile large "$large" callgrind
small_records="$(acked small)"
large_records="$(acked large)"
expected=$((devices * records))
if [[ "$small_records" != $((expected * small)) || "$large_records" != $((expected * large)) ]]; then
    echo "bench-instructions: ACKed $small_records and $large_records records, expected $((expected * small)) and $((expected * large))" >&2
    exit 1
fi
scripts/callgrind-per-record.py "$work/small.out" "$small_records" "$work/large.out" "$large_records" "$top"
# System calls per packet, the same way (the kernel's share of the CPU, which instructions leave out). Calls
# that run on timers (epoll_wait, futex) depend on how long the runs take, so read those with care.
if [[ "${BENCH_SYSCALLS:-1}" != 0 ]] && command -v strace >/dev/null; then
    profile small-strace "$small" strace
    profile large-strace "$large" strace
    packets=$((devices * (large - small)))
    echo
    echo "system calls per packet ($records records; the larger run minus the smaller, strace -f -c):"
    join -j 2 -a 2 -e 0 -o 0,1.1,2.1 \
        <(awk '$NF != "total" && $4 ~ /^[0-9]+$/ { print $4, $NF }' "$work/small-strace.strace" | sort -k2,2) \
        <(awk '$NF != "total" && $4 ~ /^[0-9]+$/ { print $4, $NF }' "$work/large-strace.strace" | sort -k2,2) \
        | awk -v p="$packets" '{ d = ($3 - $2) / p; t += d; if (d >= 0.05 || d <= -0.05) printf "%10.2f  %s\n", d, $1 } END { printf "%10.2f  in all\n", t }' \
        | sort -rn
fi
if [[ -n "${BENCH_KEEP:-}" ]]; then
    mkdir -p "$BENCH_KEEP"
    cp "$work"/small.out "$work"/large.out "$work"/*.json "$BENCH_KEEP"/
fi
