#!/usr/bin/env bash
# dynkv's RESP port against redis-server at equal durability, driven by
# redis-benchmark, all in one run on this machine.
#
#   dynkv sync=always           vs  redis appendonly yes, appendfsync always
#   dynkv sync=interval_ms=1000 vs  redis appendonly yes, appendfsync everysec
#
# SET and GET, 100-byte values, 1M random keys, 50 clients, at -P 1 and
# -P 16. Reports throughput, p50 and p99 (redis-benchmark's --csv has no
# p99, so it is read from its latency summary) and server CPU seconds per
# million operations (utime + stime of the server process, from /proc).
#
# Usage: benches/resp-vs-redis.sh [requests]   (default 200000 per test)
# Needs redis-server and redis-benchmark (apt-get install redis-server redis-tools).
# Every server it starts is stopped by PID on exit; all traffic is on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-200000}
port_dynkv=27379
port_redis=27380
source benches/lib.sh

command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
  echo "needs redis-server and redis-benchmark: apt-get install redis-server redis-tools" >&2
  exit 1
}
cargo build --release --quiet
bin=target/release/dynkv

wait_port() {
  for _ in $(seq 1 200); do
    redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2
  exit 1
}

start_dynkv() { # $1 = sync mode, $2 = shards (default: one per core)
  rm -rf "$work/dynkv"
  mkdir -p "$work/dynkv"
  "$bin" serve --data-dir "$work/dynkv" --sync "$1" --shards "${2:-$(nproc)}" --base-port 27600 \
    --internode-base-port 27700 --resp-port $port_dynkv \
    --metrics-port 27390 >"$work/dynkv.log" 2>&1 &
  pids+=($!)
  server_pid=$!
  wait_port $port_dynkv
}

start_redis() { # $1 = appendfsync
  rm -rf "$work/redis"
  mkdir -p "$work/redis"
  redis-server --port $port_redis --bind 127.0.0.1 --dir "$work/redis" --save "" \
    --appendonly yes --appendfsync "$1" --daemonize no >"$work/redis.log" 2>&1 &
  pids+=($!)
  server_pid=$!
  wait_port $port_redis
}

stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" 2>/dev/null || true
}

run_case() { # $1 = label, $2 = port, $3 = pipeline
  local rps p50 p99 cpu
  for test in set get; do
    read -r rps p50 p99 cpu < <(redis_bench "$2" "$test" "$requests" 1000000 "$3" "$server_pid")
    printf '| %s | %s | -P %s | %s | %s ms | %s ms | %s |\n' "$1" "${test^^}" "$3" "$rps" "$p50" "$p99" "$cpu"
  done
}

echo "Machine: $(nproc) cores, $(uname -r); redis $(redis-server --version | awk '{print $3}'); $requests requests per test."
echo
echo '| server | op | pipeline | requests/s | p50 | p99 | server CPU s / 1M ops |'
echo '|---|---|---|---:|---:|---:|---:|'
# The "1 shard" rows: Redis runs one thread, and redis-benchmark takes a
# core of this machine, so a node with one shard per core pays a hop
# between shards for half the keys without a spare core to gain from it.
for pipeline in 1 16; do
  start_dynkv always;              run_case "dynkv sync=always" $port_dynkv "$pipeline"; stop_server
  start_dynkv always 1;            run_case "dynkv sync=always, 1 shard" $port_dynkv "$pipeline"; stop_server
  start_redis always;              run_case "redis appendfsync=always" $port_redis "$pipeline"; stop_server
  start_dynkv interval_ms=1000;    run_case "dynkv sync=interval_ms=1000" $port_dynkv "$pipeline"; stop_server
  start_dynkv interval_ms=1000 1;  run_case "dynkv sync=interval_ms=1000, 1 shard" $port_dynkv "$pipeline"; stop_server
  start_redis everysec;            run_case "redis appendfsync=everysec" $port_redis "$pipeline"; stop_server
done
