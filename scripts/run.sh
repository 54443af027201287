#!/usr/bin/env bash
# make run: serve devices on 5027. Without REDIS_URL, a local redis-server is started with its data in
# var/redis (git-ignored) and stopped again on exit; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build -c release --product teltonika-ingest
bin="$(swift build -c release --show-bin-path)/teltonika-ingest"

started_redis=0
if [ -z "${REDIS_URL:-}" ]; then
    port="${LOCAL_REDIS_PORT:-6379}"
    mkdir -p var/redis
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        echo "run: using the redis-server already on 127.0.0.1:$port"
    else
        redis-server --port "$port" --bind 127.0.0.1 --dir "$PWD/var/redis" --appendonly yes --appendfsync everysec \
            --daemonize yes --pidfile "$PWD/var/redis/redis.pid" --logfile "$PWD/var/redis/redis.log"
        started_redis=1
        for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
        echo "run: started redis-server on 127.0.0.1:$port (data in var/redis)"
    fi
    export REDIS_URL="redis://127.0.0.1:$port"
fi

"$bin" "$@" &
server=$!
stop() {
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    if [ "$started_redis" = 1 ]; then redis-cli -p "$port" shutdown >/dev/null 2>&1 || true; fi
}
trap stop EXIT INT TERM
wait "$server"
