#!/usr/bin/env bash
# The hostile-client figures of issue 13, run by `make bench` (or alone), against the release server and
# a throwaway redis-server:
#   partial   9,990 logged-in connections each holding all but 16 bytes of a frame declaring 16 KiB:
#             the server's RSS growth and how many connections MAX_BUFFERED_BYTES closed;
#   slowloris a device's ACK latency alone, then beside 1,000 connections trickling a packet a byte
#             every 2 s (FRAME_TIMEOUT_MS 10 s, so they are cut during the run).
# Needs 20,000 open files (ulimit -n) and the loopback addresses 127.0.0.1-12 (any Linux has them).
# Figures: docs/PERFORMANCE.md ("Hostile clients").
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 20000

source scripts/bench-common.sh
start_redis
stop_server() { kill -INT "$server_pid"; wait "$server_pid" || true; }

echo "bench-hostile: load average $(cut -d' ' -f1-3 /proc/loadavg)"
start_server hostile MAX_CONNECTIONS=10100
echo "partial frames: $(python3 scripts/hostile-bench.py partial-frames "$device_port" "$server_pid" "$metrics_port" 9990)"
stop_server
start_server slowloris MAX_CONNECTIONS=10100 FRAME_TIMEOUT_MS=10000
python3 scripts/hostile-bench.py slowloris "$device_port" 20 1000 | sed 's/^/slowloris: /'
stop_server
