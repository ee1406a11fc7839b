#!/usr/bin/env bash
# Replication cost: a 3-node dynkv cluster (N=3, R=2, W=2) against one node
# (N=1), in one run on this machine, driven by redis-benchmark on RESP.
#
# Every node has 2 shards; all run on this machine's cores, so the cluster
# does three times the storage work and all the internode traffic on the
# same CPUs. Reports throughput, p50 and p99 and the CPU seconds (utime +
# stime, summed over every server process) per million operations, and for
# SET the cost per replica write against the single node's local write.
#
# Usage: benches/cluster-vs-single.sh [requests] [sync]
#   (default 200000 requests per test, sync=interval_ms=1000)
# Needs redis-benchmark (apt-get install redis-tools). Every server it
# starts is stopped by PID on exit; all traffic is on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-200000}
sync=${2:-interval_ms=1000}
secret=bench-cluster-secret-0123456789
source benches/lib.sh

command -v redis-benchmark >/dev/null || {
  echo "needs redis-benchmark: apt-get install redis-tools" >&2
  exit 1
}
cargo build --release --quiet
bin=target/release/dynkv

wait_ready() { # $1 = RESP port: until a SET succeeds (the cluster has formed)
  for _ in $(seq 1 400); do
    [ "$(redis-cli -p "$1" set bench-probe x 2>/dev/null)" = "OK" ] && return 0
    sleep 0.05
  done
  echo "node on RESP port $1 did not become ready" >&2
  exit 1
}

servers=()
start_node() { # $1 = index, $2 = peers (comma list, may be empty), $3 = n
  local i=$1 dir="$work/node$1"
  mkdir -p "$dir"
  local peers=()
  [ -n "$2" ] && peers=(--peers "$2")
  "$bin" serve --data-dir "$dir" --sync "$sync" --shards 2 \
    --base-port $((27600 + 10 * i)) --internode-base-port $((27700 + 10 * i)) \
    --resp-port $((27400 + i)) --metrics-port $((27500 + i)) \
    --n "$3" --r "$(( $3 < 2 ? $3 : 2 ))" --w "$(( $3 < 2 ? $3 : 2 ))" --cluster-secret "$secret" "${peers[@]}" >"$dir.log" 2>&1 &
  pids+=($!)
  servers+=($!)
}

stop_servers() {
  for pid in "${servers[@]}"; do kill -TERM "$pid"; done
  for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
  servers=()
  rm -rf "$work"/node*
}

declare -A cpu_per_op
run_case() { # $1 = label, $2 = pipeline
  local rps p50 p99 cpu
  for test in set get; do
    read -r rps p50 p99 cpu < <(redis_bench 27400 "$test" "$requests" 1000000 "$2" "${servers[@]}")
    cpu_per_op["$1 $test $2"]=$cpu
    printf '| %s | %s | -P %s | %s | %s ms | %s ms | %s |\n' "$1" "${test^^}" "$2" "$rps" "$p50" "$p99" "$cpu"
  done
}

echo "Machine: $(nproc) cores, $(uname -r); sync=$sync; $requests requests per test, 100-byte values, 50 clients."
echo
echo '| setup | op | pipeline | requests/s | p50 | p99 | server CPU s / 1M ops |'
echo '|---|---|---|---:|---:|---:|---:|'
for pipeline in 1 16; do
  start_node 0 "" 1
  wait_ready 27400
  run_case "1 node, N=1" "$pipeline"
  stop_servers
  start_node 0 "127.0.0.1:27710,127.0.0.1:27720" 3
  start_node 1 "127.0.0.1:27700,127.0.0.1:27720" 3
  start_node 2 "127.0.0.1:27700,127.0.0.1:27710" 3
  wait_ready 27400
  run_case "3 nodes, N=3 R=2 W=2" "$pipeline"
  stop_servers
done
echo
for pipeline in 1 16; do
  single=${cpu_per_op["1 node, N=1 set $pipeline"]}
  cluster=${cpu_per_op["3 nodes, N=3 R=2 W=2 set $pipeline"]}
  awk -v s="$single" -v c="$cluster" -v p="$pipeline" \
    'BEGIN { printf "SET -P %s: CPU per replica write = %.2f / 3 = %.2f s per 1M, %.2fx the single node'"'"'s local write (target <= 1.5x)\n", p, c, c / 3, c / 3 / s }'
done
