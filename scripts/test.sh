#!/usr/bin/env bash
# make test: a throwaway redis-server on a free port, every test against it (make test then fuzzes).
# SANITIZE=thread (make tsan): the same run with the tests and the server binary built under
# ThreadSanitizer in .build-thread; any report fails the run. The crash tests are skipped there,
# because the sanitizer takes over fatal signals.
set -euo pipefail
cd "$(dirname "$0")/.."

build=()
skip=()
if [ -n "${SANITIZE:-}" ]; then
    build=(--scratch-path ".build-$SANITIZE" --sanitize="$SANITIZE")
    skip=(--skip testCrashLogsOneFatalLineAndDiesByTheSignal)
fi
swift build --build-tests "${build[@]}"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
cleanup() {
    # Wait for Redis to be gone before removing its directory: it writes its log while it shuts down, and
    # an rm racing that write failed a passing run ("Directory not empty").
    if [ -f "$dir/redis.pid" ]; then
        redis_pid="$(cat "$dir/redis.pid")"
        kill "$redis_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$redis_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$dir" || true
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
echo "test: throwaway redis-server on 127.0.0.1:$port"

mkdir -p "$dir/sanitizer"
status=0
# At most 3 tests at a time (Swift Testing's default is twice the cores): the integration suites run
# servers, simulators and Redis processes, and the blocking ones no longer share the 2 cooperative
# threads (Tests/FixtureSupport/BlockingTests.swift), so the width is what bounds the load on 2 cores.
export SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH="${SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH:-3}"
TSAN_OPTIONS="log_path=$dir/sanitizer/report halt_on_error=0" \
TEST_REDIS_URL="redis://127.0.0.1:$port" \
TELTONIKA_INGEST_BIN="$(swift build "${build[@]}" --show-bin-path)/teltonika-ingest" \
    swift test --skip-build "${build[@]}" "${skip[@]}" || status=$?

if [ -n "$(ls -A "$dir/sanitizer")" ]; then
    cat "$dir/sanitizer"/* >&2
    echo "test: the sanitizer reported the problems above (test runner or server)" >&2
    exit 1
fi
exit "$status"
