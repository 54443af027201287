# Shared by the end-to-end bench scripts (source it after `cd` to the repository root): the release
# binary, a work directory removed at exit with every process started here, one throwaway redis-server,
# and the release server on fresh ports.
#   bin            the release binary (built by scripts/release.sh; $BENCH_BIN when set)
#   work           a temporary directory; `pids` and every daemon whose pid file is in it are killed, and it
#                  is removed, at exit
#   free_port      prints a free TCP port on 127.0.0.1
#   start_redis    a redis-server without persistence on a free port: sets redis_port, redis_pid
#   start_server NAME [ENV=VALUE ...]
#                  the server against that Redis (stream bench:NAME, LOG_LEVEL warning, its log in
#                  $work/NAME.log, then the settings in $BENCH_SERVER_ENV, e.g. "EVENT_LOOP_THREADS=1", then
#                  ENV=VALUE), once /readyz answers: sets server_pid, device_port, metrics_port
#   json_field F   field F of the last JSON line on standard input (a `simulate --json` summary)
#   cpu_seconds PID [user]
#                  the process's user + system CPU seconds so far (user only with `user`), from /proc
#   idle_seconds   the seconds every core of the machine has been idle so far (idle + iowait, /proc/stat)
#   fleet ARGS     the device fleet that drives the server (`simulate` options: --host, --port, --devices,
#                  --duration, --records-per-packet, --rate; one JSON line out). BENCH_FLEET=c (default): the
#                  independent C fleet, tools/fleet/fleet.c, built here with cc -O2 (or $CC, or the toolchain's clang); BENCH_FLEET=swift: the
#                  server's own `simulate` (shares the Codec8 module with the server, and costs more CPU)

bin="${BENCH_BIN:-$(scripts/release.sh | tail -1)}"
json_field() { python3 -c 'import json, sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])' "$1"; }
cpu_seconds() {
    awk -v t="$(getconf CLK_TCK)" -v only="${2:-}" \
        '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.3f", (f[12] + (only == "user" ? 0 : f[13])) / t }' "/proc/$1/stat"
}
idle_seconds() { awk -v t="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.3f", ($5 + $6) / t }' /proc/stat; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

work="$(mktemp -d)"
fleet_kind="${BENCH_FLEET:-c}"
fleet() {
    if [ "$fleet_kind" = swift ]; then
        "$bin" simulate --json "$@"
    else
        "$work/fleet" "$@"
    fi
}
pids=()
bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    rm -rf "$work" || true
}
trap bench_cleanup EXIT
case "$fleet_kind" in
    c) cc="${CC:-$(command -v cc || command -v clang || command -v gcc)}"
       "$cc" -O2 -Wall -o "$work/fleet" tools/fleet/fleet.c ;;
    swift) ;;
    *) echo "bench: BENCH_FLEET is c or swift, not $fleet_kind" >&2; exit 2 ;;
esac

start_redis() {
    redis_port="$(free_port)"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
        --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis_pid="$(cat "$work/redis.pid")"
}

start_server() {
    device_port="$(free_port)"
    metrics_port="$(free_port)"
    env TELTONIKA_HOST=127.0.0.1 TELTONIKA_PORT="$device_port" METRICS_HOST=127.0.0.1 METRICS_PORT="$metrics_port" \
        REDIS_URL="redis://127.0.0.1:$redis_port" REDIS_TELEMETRY_STREAM="bench:$1" LOG_LEVEL=warning ${BENCH_SERVER_ENV:-} "${@:2}" \
        "$bin" serve 2>"$work/$1.log" &
    server_pid=$!
    pids+=("$server_pid")
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
    echo "bench: server did not become ready" >&2
    cat "$work/$1.log" >&2
    exit 1
}
