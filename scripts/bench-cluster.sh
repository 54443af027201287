#!/usr/bin/env bash
# make bench-cluster (not part of make test or make bench): end-to-end records/s of one release server on a
# local 3-primary Redis Cluster (no replicas, no persistence), with the stream in 1 shard, then in 3
# (REDIS_STREAM_SHARDS), under the same fleet simulator at full speed. Prints where each shard's key lives
# and a table; the load average before and after each run (the machine may be shared: say so with the figures).
# Env: BENCH_DEVICES (200), BENCH_SECONDS (15), BENCH_RECORDS (10 per packet), BENCH_SHARDS ("1 3").
# Figures and how to read them: docs/PERFORMANCE.md, "Redis Cluster: 1 vs 3 shards".
set -euo pipefail
cd "$(dirname "$0")/.."

devices="${BENCH_DEVICES:-200}"
seconds="${BENCH_SECONDS:-15}"
records="${BENCH_RECORDS:-10}"
shard_counts="${BENCH_SHARDS:-1 3}"

source scripts/bench-common.sh
load() { cut -d' ' -f1-3 /proc/loadavg; }

# Three primaries, each with a free port and a free cluster-bus port, every slot assigned.
nodes=()
for i in 1 2 3; do
    port="$(free_port)"
    mkdir -p "$work/node$i"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/node$i" \
        --cluster-enabled yes --cluster-config-file "$work/node$i/nodes.conf" --cluster-port "$(free_port)" \
        --cluster-node-timeout 5000 --daemonize yes --pidfile "$work/node$i.pid" --logfile "$work/node$i/redis.log"
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    nodes+=("127.0.0.1:$port")
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$work/create.log" 2>&1
for node in "${nodes[@]}"; do
    for _ in $(seq 100); do
        redis-cli -p "${node#*:}" CLUSTER INFO | grep -q 'cluster_state:ok' && break
        sleep 0.1
    done
done
redis_port="${nodes[0]#*:}"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(load)"
echo "run: devices=$devices seconds=$seconds records_per_packet=$records cluster=${nodes[*]}"
rows=()
for shards in $shard_counts; do
    stream="bench:cluster-$shards"
    where=()
    for ((k = 0; k < shards; k++)); do
        key="$stream"
        [ "$shards" -gt 1 ] && key="$stream:{$k}"
        slot="$(redis-cli -p "$redis_port" CLUSTER KEYSLOT "$key")"
        owner="$(redis-cli -p "$redis_port" CLUSTER NODES | python3 -c '
import sys
slot = int(sys.argv[1])
for line in sys.stdin:
    fields = line.split()
    for r in fields[8:]:
        first, _, last = r.partition("-")
        if first.isdigit() and int(first) <= slot <= int(last or first): print(fields[1].split("@")[0])' "$slot")"
        where+=("$key@$owner")
    done
    echo "shards=$shards: ${where[*]}"
    load_before="$(load)"
    start_server "cluster-$shards" REDIS_MODE=cluster REDIS_STREAM_SHARDS="$shards"
    "$bin" simulate --host 127.0.0.1 --port "$device_port" --devices "$devices" --duration "$seconds" \
        --records-per-packet "$records" --json >"$work/shards-$shards.json"
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
    primaries="$(printf '%s\n' "${where[@]}" | sed 's/.*@//' | sort -u | wc -l)"
    rows+=("$shards $primaries $(json_field acked_per_s <"$work/shards-$shards.json") $(json_field ack_p99_ms <"$work/shards-$shards.json") $load_before $(load)")
done

echo
echo "| shards | primaries holding them | records/s ACKed | ACK p99 ms | load before | load after |"
echo "|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
    read -r shards primaries rps p99 b1 b2 b3 a1 a2 a3 <<<"$row"
    printf '| %s | %s | %s | %s | %s %s %s | %s %s %s |\n' "$shards" "$primaries" "$rps" "$p99" "$b1" "$b2" "$b3" "$a1" "$a2" "$a3"
done
