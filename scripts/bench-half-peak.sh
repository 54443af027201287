#!/usr/bin/env bash
# ACK latency at a paced rate, for comparing release binaries back to back (issue 19's half-peak figure): for each
# round, each binary in turn gets a fresh server on a throwaway redis-server (flushed between runs) and the C
# device fleet paced at BENCH_RATE packets/s per device for BENCH_SECONDS; prints records/s, ACK p50/p99/p999 and
# the publisher's mean batch (teltonika_publish_batch_size_records). Runs on this 2-vCPU machine are bimodal (small
# or large batches): compare several rounds, alternated so the machine's drift falls on every binary.
#
#   scripts/bench-half-peak.sh BINARY [BINARY ...]
#
# Env: BENCH_RATE (92.9: half of a 371,729 records/s peak with 200 devices of 10-record packets), BENCH_ROUNDS (3),
# BENCH_SECONDS (10), BENCH_DEVICES (200), BENCH_RECORDS (10). Not part of make bench (scripts/bench-e2e.sh
# measures one binary at half its own peak). Figures: docs/PERFORMANCE.md ("Issue 19, third pass").
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BINARY [BINARY ...]" >&2; exit 2; }
binaries=("$@")
export BENCH_BIN="${binaries[0]}"  # bench-common.sh builds nothing then
rate="${BENCH_RATE:-92.9}"
rounds="${BENCH_ROUNDS:-3}"
seconds="${BENCH_SECONDS:-10}"
devices="${BENCH_DEVICES:-200}"
records="${BENCH_RECORDS:-10}"
source scripts/bench-common.sh
start_redis

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); devices=$devices rate=$rate seconds=$seconds fleet=$fleet_kind"
for round in $(seq "$rounds"); do
    for b in "${binaries[@]}"; do
        bin="$b"
        redis-cli -p "$redis_port" FLUSHALL >/dev/null
        start_server "half$round"
        fleet --host 127.0.0.1 --port "$device_port" --devices "$devices" --duration "$seconds" \
            --records-per-packet "$records" --rate "$rate" >"$work/run.json"
        curl -s "http://127.0.0.1:$metrics_port/metrics" >"$work/metrics.txt"
        kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
        python3 - "$work/run.json" "$work/metrics.txt" "$b" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
m = {}
for line in open(sys.argv[2]):
    if line.startswith("teltonika_publish_batch_size_records_"):
        name, value = line.rsplit(" ", 1)
        m[name] = float(value)
batch = m.get("teltonika_publish_batch_size_records_sum", 0) / max(1, m.get("teltonika_publish_batch_size_records_count", 0))
print(f"{sys.argv[3]}: {r['acked_per_s']:>9,.0f} records/s  ACK p50 {float(r['ack_p50_ms']):6.2f}  p99 {float(r['ack_p99_ms']):6.2f}  "
      f"p999 {float(r['ack_p999_ms']):6.2f} ms  mean batch {batch:.0f} records")
PY
    done
done
