#!/usr/bin/env bash
# Server CPU per ACKed record at peak, for comparing release binaries back to back (issue 19): for each round,
# each binary in turn gets a fresh server on a throwaway redis-server (flushed between runs) and the C device
# fleet at full speed for BENCH_SECONDS; prints records/s, ACK p99, the server's user + system CPU per record
# (/proc/PID/stat) and the publisher thread's voluntary context switches per batch (/proc/PID/task/*/status,
# teltonika_publish_batch_size_records_count). Alternating the binaries spreads this machine's drift over both.
#
#   scripts/bench-peak-cpu.sh BINARY [BINARY ...]
#
# Env: BENCH_ROUNDS (4), BENCH_SECONDS (10), BENCH_DEVICES (200), BENCH_RECORDS (10), BENCH_FLEET (c).
# Not part of make bench (which measures one binary, scripts/bench-e2e.sh). Figures: docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BINARY [BINARY ...]" >&2; exit 2; }
binaries=("$@")
export BENCH_BIN="${binaries[0]}"  # bench-common.sh builds nothing then
rounds="${BENCH_ROUNDS:-4}"
seconds="${BENCH_SECONDS:-10}"
devices="${BENCH_DEVICES:-200}"
records="${BENCH_RECORDS:-10}"
source scripts/bench-common.sh
start_redis

publisher_switches() {  # the publisher thread is the one named after its dispatch queue (…default-qos)
    local total=0 t
    for t in /proc/"$1"/task/*; do
        if grep -q 'qos' "$t/comm" 2>/dev/null; then
            total=$((total + $(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status")))
        fi
    done
    echo "$total"
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); devices=$devices seconds=$seconds fleet=$fleet_kind"
for round in $(seq "$rounds"); do
    for b in "${binaries[@]}"; do
        bin="$b"
        redis-cli -p "$redis_port" FLUSHALL >/dev/null
        start_server "peak$round"
        cpu0="$(cpu_seconds "$server_pid")"; user0="$(cpu_seconds "$server_pid" user)"
        switches0="$(publisher_switches "$server_pid")"
        fleet --host 127.0.0.1 --port "$device_port" --devices "$devices" --duration "$seconds" \
            --records-per-packet "$records" >"$work/run.json"
        cpu1="$(cpu_seconds "$server_pid")"; user1="$(cpu_seconds "$server_pid" user)"
        switches1="$(publisher_switches "$server_pid")"
        batches="$(curl -s "http://127.0.0.1:$metrics_port/metrics" | awk '$1 == "teltonika_publish_batch_size_records_count" { print $2 }')"
        kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
        python3 - "$work/run.json" "$cpu0" "$cpu1" "$user0" "$user1" "$switches0" "$switches1" "$batches" "$b" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
cpu0, cpu1, user0, user1, sw0, sw1, batches = (float(x) for x in sys.argv[2:9])
n = max(1, r["records_acked"])
us = lambda seconds: seconds / n * 1e6
print(f"{sys.argv[9]}: {r['acked_per_s']:>9,.0f} records/s  ACK p99 {float(r['ack_p99_ms']):6.2f} ms  "
      f"server {us(cpu1 - cpu0):.3f} µs/record (user {us(user1 - user0):.3f})  "
      f"publisher switches per batch {(sw1 - sw0) / max(1, batches):.1f}")
PY
    done
done
