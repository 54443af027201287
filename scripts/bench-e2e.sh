#!/usr/bin/env bash
# End-to-end benchmark, run by `make bench` after the micro benchmarks (or alone):
#   1. a throwaway redis-server (no persistence) on a free port;
#   2. the release server under the device fleet at full speed (the peak): records/s, ACK latency,
#      server CPU per 100k records, and the pipeline depth the publisher used (mean batch size); every
#      ACKed record must have gone into the stream (XINFO STREAM's entries-added >= records ACKed, equal
#      when nothing was resent). Also where the machine's CPU went meanwhile: Redis', the fleet's and the
#      server's CPU per ACKed record and the idle cores (/proc/stat), and the rate the machine's cores
#      would allow at those costs with none idle (cores / the three costs summed), also as a ratio of
#      the ceiling: on 2 cores shared by the three it bounds the end-to-end ratio, whatever the server does;
#   3. this machine's ceiling: redis-benchmark with the stream's entry shape, best of pipeline 64 / 256 with
#      1 / 50 clients (issue 19's definition), and with one connection at that pipeline depth (as the
#      publisher has); the ratio peak / ceiling for each; and Redis' CPU per record in the ceiling's best
#      run, where it has a core to itself, beside its CPU per record at peak, where it shares them;
#   4. the server at half the peak rate: ACK latency p50/p99/p999;
#   5. the fleet's own ceiling against `ack-server` (ACKs without Redis);
#   6. RSS per idle logged-in connection with 19,000 connections open (issue 19's figure: this machine allows
#      20,000 descriptors), and the /metrics scrape time then.
# Env: BENCH_DEVICES (200), BENCH_SECONDS (15), BENCH_RECORDS (10 per packet), BENCH_IDLE (19000), BENCH_SERVER_ENV
# (server settings for every run, e.g. "EVENT_LOOP_THREADS=1"),
# BENCH_FLEET (c: tools/fleet/fleet.c, the default; swift: `teltonika-ingest simulate`), BENCH_BIN.
# Figures and how to read them: docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/.."

devices="${BENCH_DEVICES:-200}"
seconds="${BENCH_SECONDS:-15}"
records="${BENCH_RECORDS:-10}"
idle="${BENCH_IDLE:-19000}"

source scripts/bench-common.sh
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'; }
start_redis

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "run: devices=$devices seconds=$seconds records_per_packet=$records fleet=$fleet_kind"

# 2. Peak.
start_server peak
cpu0="$(cpu_seconds "$server_pid")"; redis_cpu0="$(cpu_seconds "$redis_pid")"; idle0="$(idle_seconds)"; wall0="$(date +%s.%N)"
fleet --host 127.0.0.1 --port "$device_port" --devices "$devices" --duration "$seconds" \
    --records-per-packet "$records" >"$work/peak.json"
cpu1="$(cpu_seconds "$server_pid")"; redis_cpu1="$(cpu_seconds "$redis_pid")"; idle1="$(idle_seconds)"; wall1="$(date +%s.%N)"
# Redis' CPU per ACKed record (µs) and the idle cores over the run.
split="$(python3 -c "print(f'{($redis_cpu1 - $redis_cpu0) / max(1, $(json_field records_acked <"$work/peak.json")) * 1e6:.3f} {($idle1 - $idle0) / ($wall1 - $wall0):.2f}')")"
peak_rps="$(json_field acked_per_s <"$work/peak.json")"
peak_records="$(json_field records_acked <"$work/peak.json")"
batch_sum="$(metric "$metrics_port" teltonika_publish_batch_size_records_sum)"
batch_count="$(metric "$metrics_port" teltonika_publish_batch_size_records_count)"
depth="$(python3 -c "print(max(1, round($batch_sum / max(1, $batch_count))))")"
cpu_per_100k="$(python3 -c "print(f'{($cpu1 - $cpu0) / max(1, $peak_records) * 100000:.3f}')")"
payload="$(redis-cli -p "$redis_port" --raw XRANGE bench:peak - + COUNT 1 | sed -n '9p')"
# Every ACKed record went into the stream (the no-loss promise, checked on the benchmark's own run too):
# entries-added, as the stream is capped (MAXLEN ~) below the records of a run.
stored="$(redis-cli -p "$redis_port" --raw XINFO STREAM bench:peak | grep -A1 '^entries-added$' | tail -1)"
resent="$(json_field resends <"$work/peak.json")"
if [ "$stored" -lt "$peak_records" ] || { [ "$resent" = 0 ] && [ "$stored" != "$peak_records" ]; }; then
    echo "bench: $stored records were added to the stream, $peak_records were ACKed ($resent resends)" >&2
    exit 1
fi
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true

# 3. Ceiling: the very entry shape of the stream (its fields, a payload and record_id of the run), by
#    redis-benchmark in two ways: the issue's (best of pipeline 64 / 256 with 1 / 50 clients) and the
#    publisher's own (one connection, the run's mean pipeline depth).
record_id="$(redis-cli -p "$redis_port" --raw XRANGE bench:peak - + COUNT 1 | sed -n '11p')"
xadd=(XADD bench:ceiling MAXLEN '~' 1000000 '*' ts 2026-11-22T10:00:00.000Z device_id 350000000000001 codec 8E
    payload "$payload" record_id "$record_id")
rate_of() {  # rate_of CLIENTS PIPELINE REQUESTS: redis-benchmark's requests per second, and Redis' CPU µs per request
    local redis0 redis1 rate
    redis0="$(cpu_seconds "$redis_pid")"
    rate="$(redis-benchmark -p "$redis_port" -c "$1" -P "$2" -n "$3" -q "${xadd[@]}" | tr '\r' '\n' \
        | grep 'requests per second' | tail -1 | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/')"
    redis1="$(cpu_seconds "$redis_pid")"
    echo "$rate $(python3 -c "print(f'{($redis1 - $redis0) / $3 * 1e6:.3f}')")"
}
n=$(( depth * 400 > 200000 ? depth * 400 : 200000 ))
read -r ceiling_depth _ < <(rate_of 1 "$depth" "$n")
# The best configuration's rate, and what Redis spent per record in it (with a core to itself: compare with
# its cost at peak, where it shares the cores with the server and the fleet).
ceiling=0
ceiling_redis_us=0
for clients in 1 50; do
    for pipeline in 64 256; do
        read -r rate redis_us < <(rate_of "$clients" "$pipeline" 400000)
        if python3 -c "import sys; sys.exit(0 if $rate > $ceiling else 1)"; then
            ceiling="$rate"
            ceiling_redis_us="$redis_us"
        fi
    done
done

# 4. Half the peak: packets per second per device so that records/s is half the peak. On an empty Redis,
#    as the peak run had (the ceiling runs left two streams of a million entries each).
redis-cli -p "$redis_port" FLUSHALL >/dev/null
start_server half
rate="$(python3 -c "print(f'{$peak_rps / 2 / ($devices * $records):.3f}')")"
fleet --host 127.0.0.1 --port "$device_port" --devices "$devices" --duration "$seconds" \
    --records-per-packet "$records" --rate "$rate" >"$work/half.json"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true

# 5. The simulator's own ceiling (no Redis, no server work).
ack_port="$(free_port)"
"$bin" ack-server --port "$ack_port" 2>/dev/null &
pids+=("$!")
sleep 0.5
fleet --host 127.0.0.1 --port "$ack_port" --devices "$devices" --duration "$seconds" \
    --records-per-packet "$records" >"$work/sim.json"

# 6. Idle connections.
start_server idle MAX_CONNECTIONS=$((idle + 100))
idle_line="$(python3 scripts/idle-rss.py "$device_port" "$server_pid" "$idle" "$metrics_port")"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true

python3 - "$work" "$ceiling" "$depth" "$cpu_per_100k" "$rate" "$idle_line" "$fleet_kind" "$stored" "$ceiling_depth" \
    $split "$(nproc)" "$ceiling_redis_us" <<'PY'
import json, os, sys
work, ceiling, depth, cpu, rate, idle, fleet, stored = sys.argv[1], float(sys.argv[2]), *sys.argv[3:9]
ceiling_depth = float(sys.argv[9])
redis_us, idle_cores, cores = float(sys.argv[10]), float(sys.argv[11]), int(sys.argv[12])
ceiling_redis_us = float(sys.argv[13])
load = lambda name: json.loads(open(f"{work}/{name}.json").read().strip().splitlines()[-1])
peak, half, sim = load("peak"), load("half"), load("sim")
# Where the CPU went at peak, per ACKed record, and the rate the cores allow at those costs with none idle.
server_us = float(cpu) * 10
fleet_us = float(peak["cpu_s"]) / max(1, peak["records_acked"]) * 1e6
bound = cores * 1e6 / (redis_us + server_us + fleet_us)
split = f"Redis {redis_us:.2f}, server {server_us:.2f}, fleet {fleet_us:.2f} µs; {idle_cores:.2f} of {cores} cores idle"
redis_alone = f"{ceiling_redis_us:.2f} µs per record in the ceiling's best run, {redis_us:.2f} at peak"
print()
print("| measure | value |")
print("|---|---|")
print(f"| redis-benchmark ceiling (XADD, best of pipeline 64/256 with 1/50 clients) | {ceiling:,.0f} records/s |")
print(f"| redis-benchmark, 1 connection, pipeline {depth} (the publisher's shape) | {ceiling_depth:,.0f} records/s |")
print(f"| server peak ({fleet} fleet, {peak['devices']} devices) | {peak['acked_per_s']:,.0f} records/s |")
print(f"| records ACKed at peak / added to the stream | {int(peak['records_acked']):,} / {int(stored):,} |")
print(f"| ratio peak / ceiling | {peak['acked_per_s'] / ceiling:.2f} (target >= 0.9); against 1 connection: {peak['acked_per_s'] / ceiling_depth:.2f} |")
print(f"| CPU per ACKed record at peak | {split} |")
print(f"| rate the {cores} cores allow at those costs, none idle | {bound:,.0f} records/s ({bound / ceiling:.2f} of the ceiling; the peak is {peak['acked_per_s'] / bound:.2f} of it) |")
print(f"| Redis' CPU alone (ceiling) and shared (peak) | {redis_alone} |")
print(f"| ACK latency at peak p50 / p99 / p999 | {peak['ack_p50_ms']} / {peak['ack_p99_ms']} / {peak['ack_p999_ms']} ms |")
print(f"| half peak (rate {rate} packets/s/device) achieved | {half['acked_per_s']:,.0f} records/s |")
print(f"| ACK latency at half peak p50 / p99 / p999 | {half['ack_p50_ms']} / {half['ack_p99_ms']} / {half['ack_p999_ms']} ms (target p99 <= 5) |")
print(f"| server CPU per 100k records (at peak) | {cpu} s |")
print(f"| fleet CPU at peak, half peak | {peak['cpu_s']} s, {half['cpu_s']} s |")
print(f"| fleet alone against ack-server | {sim['acked_per_s']:,.0f} records/s |")
print(f"| idle connections | {idle} |")
print(f"| resends / errors at peak, half | {peak['resends']}/{peak['errors']}, {half['resends']}/{half['errors']} |")
# For the summary table of `make bench` (scripts/bench.sh): one "figure<TAB>value" line each.
summary = os.environ.get("BENCH_SUMMARY")
if summary:
    fields = dict(kv.split("=", 1) for kv in idle.split() if "=" in kv)
    rows = [
        ("device fleet (BENCH_FLEET)", fleet),
        ("redis-benchmark ceiling (best of pipeline 64/256, 1/50 clients), records/s", f"{ceiling:,.0f}"),
        (f"redis-benchmark, 1 connection, pipeline {depth}, records/s", f"{ceiling_depth:,.0f}"),
        ("end to end (peak), records/s", f"{peak['acked_per_s']:,.0f}"),
        ("ratio end to end / ceiling (target >= 0.9)", f"{peak['acked_per_s'] / ceiling:.2f}"),
        ("ratio end to end / 1 connection at the same depth", f"{peak['acked_per_s'] / ceiling_depth:.2f}"),
        ("server CPU per ACKed record at peak, µs (target <= 2.0)", f"{server_us:.2f}"),
        ("CPU per ACKed record at peak: Redis, server, fleet; idle cores", split),
        (f"rate the {cores} cores allow at those costs (none idle), records/s; ratio to the ceiling; peak / it", f"{bound:,.0f}; {bound / ceiling:.2f}; {peak['acked_per_s'] / bound:.2f}"),
        ("Redis CPU per record with a core to itself (ceiling) / sharing the cores (peak)", redis_alone),
        ("ACK latency at half peak p50 / p99, ms (target p99 <= 5)", f"{half['ack_p50_ms']} / {half['ack_p99_ms']}"),
        ("ACK latency at peak p99, ms", f"{peak['ack_p99_ms']}"),
        (f"RSS per idle logged-in connection at {fields.get('connections', '?')}, KiB (target <= 4)", fields.get("per_connection_kib", "?")),
        (f"/metrics scrape p50 with {fields.get('connections', '?')} connections, ms", fields.get("scrape_ms_p50", "?")),
    ]
    with open(summary, "a") as out:
        for name, value in rows:
            out.write(f"{name}\t{value}\n")
PY
