#!/usr/bin/env bash
# Server CPU per ACKed record at peak, or ACK latency at a paced rate, for comparing release binaries back to
# back (issue 19): for each round, each binary in turn gets a fresh server on a throwaway redis-server (flushed
# between runs) and the C device fleet for BENCH_SECONDS, at full speed or, with BENCH_RATE, paced at that many
# packets/s per device; prints records/s, ACK p50/p99/p999, the server's user + system CPU per record
# (/proc/PID/stat), the publisher thread's voluntary context switches per batch (/proc/PID/task/*/status,
# teltonika_publish_batch_size_records_count), the mean batch, Redis' CPU per record and the machine's idle
# cores (/proc/stat) over the run. Alternating the binaries spreads this
# machine's drift over both; paced runs on 2 vCPUs are bimodal (small or large batches): compare several rounds.
#
#   scripts/bench-peak-cpu.sh BINARY [BINARY ...]
#   BENCH_RATE=92.9 BENCH_ROUNDS=6 scripts/bench-peak-cpu.sh BINARY [BINARY ...]   (half of a 371,729 records/s peak)
#
# Env: BENCH_ROUNDS (4), BENCH_SECONDS (10), BENCH_DEVICES (200), BENCH_RECORDS (10), BENCH_RATE (unpaced),
# BENCH_FLEET (c), BENCH_SERVER_ENV (server settings, e.g. "EVENT_LOOP_THREADS=1"; for one binary only, give a
# wrapper script that sets them and execs it). Not part of make bench (which measures one binary, scripts/bench-e2e.sh). Figures:
# docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BINARY [BINARY ...]" >&2; exit 2; }
binaries=("$@")
export BENCH_BIN="${binaries[0]}"  # bench-common.sh builds nothing then
rounds="${BENCH_ROUNDS:-4}"
seconds="${BENCH_SECONDS:-10}"
devices="${BENCH_DEVICES:-200}"
records="${BENCH_RECORDS:-10}"
pace=()
if [ -n "${BENCH_RATE:-}" ]; then pace=(--rate "$BENCH_RATE"); fi
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

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); devices=$devices seconds=$seconds rate=${BENCH_RATE:-full} fleet=$fleet_kind"
for round in $(seq "$rounds"); do
    for b in "${binaries[@]}"; do
        bin="$b"
        redis-cli -p "$redis_port" FLUSHALL >/dev/null
        start_server "peak$round"
        cpu0="$(cpu_seconds "$server_pid")"; user0="$(cpu_seconds "$server_pid" user)"
        switches0="$(publisher_switches "$server_pid")"
        redis0="$(cpu_seconds "$redis_pid")"; idle0="$(idle_seconds)"; wall0="$(date +%s.%N)"
        fleet --host 127.0.0.1 --port "$device_port" --devices "$devices" --duration "$seconds" \
            --records-per-packet "$records" "${pace[@]}" >"$work/run.json"
        cpu1="$(cpu_seconds "$server_pid")"; user1="$(cpu_seconds "$server_pid" user)"
        switches1="$(publisher_switches "$server_pid")"
        redis1="$(cpu_seconds "$redis_pid")"; idle1="$(idle_seconds)"; wall1="$(date +%s.%N)"
        read -r batches batched < <(curl -s "http://127.0.0.1:$metrics_port/metrics" | awk '
            $1 == "teltonika_publish_batch_size_records_count" { n = $2 }
            $1 == "teltonika_publish_batch_size_records_sum" { s = $2 }
            END { print n + 0, s + 0 }')
        kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
        python3 - "$work/run.json" "$cpu0" "$cpu1" "$user0" "$user1" "$switches0" "$switches1" "$batches" "$batched" "$b" \
            "$redis0" "$redis1" "$idle0" "$idle1" "$wall0" "$wall1" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
cpu0, cpu1, user0, user1, sw0, sw1, batches, batched = (float(x) for x in sys.argv[2:10])
redis0, redis1, idle0, idle1, wall0, wall1 = (float(x) for x in sys.argv[11:17])
n = max(1, r["records_acked"])
us = lambda seconds: seconds / n * 1e6
print(f"{sys.argv[10]}: {r['acked_per_s']:>9,.0f} records/s  ACK p50/p99/p999 {float(r['ack_p50_ms']):.2f} / "
      f"{float(r['ack_p99_ms']):.2f} / {float(r['ack_p999_ms']):.2f} ms  server {us(cpu1 - cpu0):.3f} µs/record "
      f"(user {us(user1 - user0):.3f})  publisher switches per batch {(sw1 - sw0) / max(1, batches):.1f}  "
      f"mean batch {batched / max(1, batches):.0f} records  Redis {us(redis1 - redis0):.3f} µs/record  "
      f"idle {(idle1 - idle0) / (wall1 - wall0):.2f} cores")
PY
    done
done
