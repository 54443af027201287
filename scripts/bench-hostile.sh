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

bin="$(scripts/release.sh | tail -1)"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work="$(mktemp -d)"
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    [ -f "$work/redis.pid" ] && kill "$(cat "$work/redis.pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

start_server() {  # start_server ENV=VALUE...: the release server on fresh ports; sets device_port, metrics_port, server_pid
    device_port="$(free_port)"
    metrics_port="$(free_port)"
    env REDIS_URL="redis://127.0.0.1:$redis_port" TELTONIKA_HOST=127.0.0.1 TELTONIKA_PORT="$device_port" \
        METRICS_HOST=127.0.0.1 METRICS_PORT="$metrics_port" MAX_CONNECTIONS=10100 LOG_LEVEL=error "$@" \
        "$bin" serve >"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null && return; sleep 0.1; done
    echo "bench-hostile: the server did not get ready" >&2
    exit 1
}
stop_server() { kill -INT "$server_pid"; wait "$server_pid" || true; server_pid=""; }

echo "bench-hostile: load average $(cut -d' ' -f1-3 /proc/loadavg)"
start_server
echo "partial frames: $(python3 scripts/hostile-bench.py partial-frames "$device_port" "$server_pid" "$metrics_port" 9990)"
stop_server
start_server FRAME_TIMEOUT_MS=10000
python3 scripts/hostile-bench.py slowloris "$device_port" 20 1000 | sed 's/^/slowloris: /'
stop_server
