#!/usr/bin/env bash
# The end-to-end benchmark suite: builds in release mode, starts the
# servers it needs on 127.0.0.1, runs every comparison in one session on
# this machine, stops everything it started (by PID), and writes the
# results into docs/PERFORMANCE.md between the e2e markers.
#
#   1. dynkv (1 node, 2 shards) vs redis-server, appendfsync always and
#      everysec, driven by redis-benchmark on RESP (benches/resp-vs-redis.sh);
#   2. dynkv's native protocol driven by `dynkv bench` (one request per
#      worker at a time, and pipelined), against redis at its best
#      pipelining: the issue-7 target (sync=interval, 100 B values);
#   3. a 3-node cluster (N=3, R=2, W=2), YCSB A, B and C, zipfian;
#   4. an open-loop latency curve (p99 against offered rate) to find the knee;
#   5. criterion suites, each saved as baseline `e2e` so that the next run
#      shows regressions; with E2E_PEERS=1 also the engine against RocksDB
#      and fjall (the `peers` feature compiles RocksDB: about 15 minutes).
#
# Usage: benches/e2e.sh            (E2E_SECONDS=10 per run, E2E_QUICK=1 skips criterion)
# Needs redis-server, redis-benchmark, redis-cli (apt-get install redis-server redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${E2E_SECONDS:-10}
secret=e2e-cluster-secret-0123456789
source benches/lib.sh
out="$work/results.md"
for tool in redis-server redis-benchmark redis-cli; do
  command -v $tool >/dev/null || { echo "needs $tool: apt-get install redis-server redis-tools" >&2; exit 1; }
done
cargo build --release --quiet
bin=target/release/dynkv
wait_ready() { # RESP port: until a SET succeeds
  for _ in $(seq 1 400); do
    [ "$(redis-cli -p "$1" set e2e-probe x 2>/dev/null)" = "OK" ] && return 0
    sleep 0.05
  done
  echo "node on RESP port $1 did not become ready" >&2; exit 1
}
servers=()
start_node() { # index, peers, n, sync
  local dir="$work/node$1" peers=()
  mkdir -p "$dir"
  [ -n "$2" ] && peers=(--peers "$2")
  "$bin" serve --data-dir "$dir" --sync "$4" --shards 2 \
    --base-port $((28600 + 10 * $1)) --internode-base-port $((28700 + 10 * $1)) \
    --resp-port $((28400 + $1)) --metrics-port $((28500 + $1)) --n "$3" \
    --r "$(( $3 < 2 ? $3 : 2 ))" --w "$(( $3 < 2 ? $3 : 2 ))" --cluster-secret "$secret" "${peers[@]}" \
    >"$dir.log" 2>&1 &
  pids+=($!); servers+=($!)
}
stop_servers() {
  for pid in "${servers[@]}"; do kill -TERM "$pid"; done
  for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
  servers=(); rm -rf "$work"/node*
}
{
  echo "Run of $(date -u +%Y-%m-%d) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),"
  echo "$(uname -r), data on $(df --output=source,fstype . | tail -1 | xargs); redis $(redis-server --version | awk '{print $3}' | cut -d= -f2)."
  echo "Every figure below comes from this one run. The load generators share the cores with the servers."
  echo
  echo "### RESP: dynkv against redis-server (redis-benchmark)"
  echo
  bash benches/resp-vs-redis.sh 200000 | tail -n +2
  echo
  echo "### Native protocol: \`dynkv bench\` against one node (2 shards, sync=interval_ms=1000, 100 B values)"
  echo
  echo "Closed loop, 100,000 keys loaded first, zipfian (theta 0.99), ${seconds} s per run; 2 load threads"
  echo "with 128 requests in flight each unless the row says otherwise."
  echo
  echo '| run | ops/s | p50 | p99 | server CPU s / 1M ops | errors | sibling reads | client CPU |'
  echo '|---|---:|---:|---:|---:|---:|---:|---:|'
  start_node 0 "" 1 interval_ms=1000; wait_ready 28400
  common=(--addr 127.0.0.1:28600 --keys 100000 --duration-s "$seconds" --threads 2 --concurrency 128)
  "$bin" bench --quiet --addr 127.0.0.1:28600 --keys 100000 --load --ops 1 --json "$work/l.json" --svg "$work/l.svg" >/dev/null
  bench_row "update only (cf. SET)" "${common[@]}" --workload custom --update 1
  bench_row "read only (cf. GET), YCSB C" "${common[@]}" --workload C
  bench_row "YCSB A" "${common[@]}" --workload A
  bench_row "YCSB B" "${common[@]}" --workload B
  # Redis is compared at its best pipelining (-P 64 over 50 clients: 3,200
  # requests in flight); these rows give dynkv 2 x 512.
  deep=(--addr 127.0.0.1:28600 --keys 100000 --duration-s "$seconds" --threads 2 --concurrency 512)
  bench_row "update only, 2 x 512 in flight" "${deep[@]}" --workload custom --update 1
  bench_row "read only, 2 x 512 in flight" "${deep[@]}" --workload C
  # Pipelined as redis-benchmark -P drives Redis: 2 workers per thread, each
  # sending 256 at a time (1,024 in flight); then with uniform keys, as
  # redis-benchmark -r chooses them.
  piped=(--addr 127.0.0.1:28600 --keys 100000 --duration-s "$seconds" --threads 2 --concurrency 2 --pipeline 256)
  bench_row "update only, pipelined 2 x 2 x 256" "${piped[@]}" --workload custom --update 1
  bench_row "read only, pipelined 2 x 2 x 256" "${piped[@]}" --workload C
  bench_row "update only, pipelined, uniform keys" "${piped[@]}" --workload custom --update 1 --distribution uniform
  bench_row "read only, pipelined, uniform keys" "${piped[@]}" --workload C --distribution uniform
  stop_servers
  echo
  echo "redis-server (appendfsync everysec) at its best pipelining, same values and clients:"
  echo
  echo '| op | pipeline | requests/s | p99 | server CPU s / 1M ops |'
  echo '|---|---|---:|---:|---:|'
  redis-server --port 28390 --bind 127.0.0.1 --dir "$work" --save "" --appendonly yes --appendfsync everysec \
    --daemonize no >"$work/redis.log" 2>&1 &
  redis_pid=$!; pids+=($redis_pid)
  sleep 0.5
  for test in set get; do
    for pipeline in 1 16 64; do
      read -r rps _ p99 cpu < <(redis_bench 28390 "$test" 400000 100000 "$pipeline" "$redis_pid")
      echo "| ${test^^} | -P $pipeline | $rps | $p99 ms | $cpu |"
    done
  done
  kill -TERM $redis_pid; wait $redis_pid 2>/dev/null || true
  echo
  echo "### 3-node cluster (N=3, R=2, W=2), \`dynkv bench\` over all three nodes, zipfian"
  echo
  echo '| run | ops/s | p50 | p99 | server CPU s / 1M ops | errors | sibling reads | client CPU |'
  echo '|---|---:|---:|---:|---:|---:|---:|---:|'
  start_node 0 "127.0.0.1:28710,127.0.0.1:28720" 3 interval_ms=1000
  start_node 1 "127.0.0.1:28700,127.0.0.1:28720" 3 interval_ms=1000
  start_node 2 "127.0.0.1:28700,127.0.0.1:28710" 3 interval_ms=1000
  wait_ready 28400; wait_ready 28401; wait_ready 28402
  cluster=(--addr 127.0.0.1:28600,127.0.0.1:28610,127.0.0.1:28620 --keys 100000 --duration-s "$seconds" --threads 3 --concurrency 64)
  "$bin" bench --quiet "${cluster[@]}" --load --ops 1 --json "$work/l.json" --svg "$work/l.svg" >/dev/null
  for w in A B C; do bench_row "YCSB $w" "${cluster[@]}" --workload $w; done
  stop_servers
  echo
  echo "### Open loop: p99 against offered rate (one node, YCSB B, latency from each request's due time)"
  echo
  echo '| offered ops/s | achieved ops/s | p50 | p99 | server CPU s / 1M ops | errors | sibling reads | client CPU |'
  echo '|---|---:|---:|---:|---:|---:|---:|---:|'
  start_node 0 "" 1 interval_ms=1000; wait_ready 28400
  "$bin" bench --quiet --addr 127.0.0.1:28600 --keys 100000 --load --ops 1 --json "$work/l.json" --svg "$work/l.svg" >/dev/null
  for rate in 100000 200000 400000 600000 800000 1000000 1200000; do
    bench_row "$rate" --addr 127.0.0.1:28600 --keys 100000 --workload B --rate $rate --threads 2 \
      --concurrency 512 --duration-s "$seconds"
  done
  stop_servers
  if [ "${E2E_QUICK:-0}" != 1 ]; then
    echo
    echo "### criterion (medians; saved as baseline \`e2e\`)"
    echo
    echo '```'
    features=()
    [ "${E2E_PEERS:-0}" = 1 ] && features=(--features peers)
    for suite in codec ring version engine; do
      cargo bench --quiet --bench $suite "${features[@]}" -- --save-baseline e2e 2>/dev/null \
        | awk '/time:/ { if ($1 == "time:") print name, $0; else print; next } NF == 1 { name = $1 }'
    done
    echo '```'
  fi
} | tee "$out"

write_section "$out" e2e "End to end (\`benches/e2e.sh\`)"
