#!/usr/bin/env bash
# The end-to-end figures per Redis topology, run by `make bench` (or alone): the release server under
# the device fleet (scripts/bench-common.sh: BENCH_FLEET) against
#   plain     one redis-server over TCP (the reference);
#   replica   a primary with one replica, REDIS_MIN_REPLICAS=1 (each batch ends with WAIT 1);
#   tls       one redis-server over TLS (rediss://, a CA made here with the openssl CLI).
# Each at full speed (records/s, ACK p50/p99) and at a fixed 5,000 records/s (ACK p50/p99).
# Env: BENCH_DEVICES (200), BENCH_SECONDS (10), BENCH_RECORDS (10 per packet).
# Figures: docs/PERFORMANCE.md ("Redis topologies").
set -euo pipefail
cd "$(dirname "$0")/.."

devices="${BENCH_DEVICES:-200}"
seconds="${BENCH_SECONDS:-10}"
records="${BENCH_RECORDS:-10}"

source scripts/bench-common.sh

redis() {  # redis NAME ARGS...: a throwaway redis-server; sets port
    port="$(free_port)"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --dbfilename "$1.rdb" \
        --repl-diskless-sync yes --repl-diskless-sync-delay 0 \
        --daemonize yes --pidfile "$work/$1.pid" --logfile "$work/$1.log" "${@:2}"
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.1; done
    echo "bench: redis $1 did not start" >&2
    exit 1
}

# A CA and a certificate for 127.0.0.1.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile <(printf 'subjectAltName=IP:127.0.0.1') -out "$work/server.crt" 2>/dev/null

redis plain
plain_url="redis://127.0.0.1:$port"
redis primary
primary_port="$port"
redis replica --replicaof 127.0.0.1 "$primary_port"
for _ in $(seq 100); do redis-cli -p "$primary_port" info replication | grep -q 'state=online' && break; sleep 0.1; done
tls_port="$(free_port)"
redis tls --tls-port "$tls_port" --tls-cert-file "$work/server.crt" --tls-key-file "$work/server.key" \
    --tls-ca-cert-file "$work/ca.crt" --tls-auth-clients no

run() {  # run NAME RATE ENV=VALUE...: one server, one fleet run; prints records/s p50 p99
    local device_port metrics_port server_pid
    device_port="$(free_port)"
    metrics_port="$(free_port)"
    env TELTONIKA_HOST=127.0.0.1 TELTONIKA_PORT="$device_port" METRICS_HOST=127.0.0.1 METRICS_PORT="$metrics_port" \
        REDIS_TELEMETRY_STREAM="bench:$1" LOG_LEVEL=warning "${@:3}" "$bin" serve 2>"$work/$1.server.log" &
    server_pid=$!
    pids+=("$server_pid")
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null || { cat "$work/$1.server.log" >&2; exit 1; }
    fleet --host 127.0.0.1 --port "$device_port" --devices "$devices" --duration "$seconds" \
        --records-per-packet "$records" --rate "$2" >"$work/$1.json"
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
    python3 - "$work/$1.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"{r['acked_per_s']:,.0f} | {r['ack_p50_ms']} / {r['ack_p99_ms']}")
PY
}

rate="$(python3 -c "print(5000 / ($devices * $records))")"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); devices=$devices seconds=$seconds records_per_packet=$records"
echo
echo "| Redis | peak records/s | ACK p50 / p99 at peak (ms) | 5,000 records/s: ACK p50 / p99 (ms) |"
echo "|---|---|---|---|"
for topology in plain replica tls; do
    case "$topology" in
        plain) settings=(REDIS_URL="$plain_url") ;;
        replica) settings=(REDIS_URL="redis://127.0.0.1:$primary_port" REDIS_MIN_REPLICAS=1) ;;
        tls) settings=(REDIS_URL="rediss://127.0.0.1:$tls_port" REDIS_TLS_CA_FILE="$work/ca.crt") ;;
    esac
    peak="$(run "$topology-peak" 0 "${settings[@]}")"
    fixed="$(run "$topology-fixed" "$rate" "${settings[@]}")"
    echo "| $topology | ${peak% | *} | ${peak#* | } | ${fixed#* | } |"
done
