#!/usr/bin/env bash
# make test: a throwaway redis-server on a free port, every test against it, then the brief fuzz run.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build --build-tests

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
cleanup() {
    [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
echo "test: throwaway redis-server on 127.0.0.1:$port"

TEST_REDIS_URL="redis://127.0.0.1:$port" \
TELTONIKA_INGEST_BIN="$(swift build --show-bin-path)/teltonika-ingest" \
    swift test --skip-build
