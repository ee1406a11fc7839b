#!/usr/bin/env bash
# Membership benchmarks: what a join costs and what background work takes
# from the foreground. Builds in release mode, starts 3 nodes (2 shards,
# N=3, R=W=2, sync=interval) on 127.0.0.1, and in one session measures:
#   1. anti-entropy between replicas that agree, at two key counts: bytes
#      received per partition comparison (target: independent of keys);
#   2. YCSB B through `dynkv bench` on the quiet cluster;
#   3. the same while anti-entropy repairs a node that was down while a
#      fifth of the keys were updated (its hints expired), and the time
#      until the repair is complete;
#   4. the same while anti-entropy refills a node restarted with an empty
#      disk (same node id), and the time until it holds every key again;
#   5. the same while a fourth node joins: time to full ownership, keys and
#      bytes it received against the data it then holds;
#   6. the quiet cluster of four, for reference: every row above is
#      compared with the quiet cluster of the same shape (three nodes),
#      since four nodes of two shards share the same two cores.
# Writes the results into docs/PERFORMANCE.md (<!-- elastic:begin/end -->).
#
# Usage: benches/elastic.sh   (ELASTIC_KEYS=200000, ELASTIC_SECONDS=15)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

keys=${ELASTIC_KEYS:-200000}
seconds=${ELASTIC_SECONDS:-15}
secret=elastic-bench-secret-0123456789
cargo build --release --quiet
bin=target/release/dynkv
out="$work/results.md"
servers=()
config="$work/dynkv.toml"
# Anti-entropy runs at its defaults (a partition every 100 ms per shard, at
# most 1,000 keys merged a second), so that the foreground rows show what a
# user's cluster would see.
# Hints expire after a second, so that a node down for longer misses its
# writes for good and only anti-entropy (and read repair) bring them back.
printf 'gossip_interval_ms = 500\nhint_age_max_ms = 1000\n' >"$config"

internode() { echo "127.0.0.1:$((29700 + 10 * $1))"; }
native() { echo "127.0.0.1:$((29600 + 10 * $1))"; }
start_node() { # index, extra arguments...
  local i=$1; shift
  mkdir -p "$work/node$i"
  "$bin" serve --data-dir "$work/node$i" --sync interval_ms=10 --shards 2 --node-id $((i + 1)) \
    --base-port $((29600 + 10 * i)) --internode-base-port $((29700 + 10 * i)) \
    --resp-port $((29400 + i)) --metrics-port $((29500 + i)) --n 3 --r 2 --w 2 \
    --cluster-secret "$secret" --config "$config" "$@" >>"$work/node$i.log" 2>&1 &
  pids+=($!); servers+=($!); node_pid[$i]=$!
  echo $! >>"$work/pids"
}
stop_node() { # index: SIGTERM, and wait until it has exited
  local old=${node_pid[$1]}
  kill -TERM "$old"
  # Not a child of this subshell: poll until it has exited.
  while kill -0 "$old" 2>/dev/null; do sleep 0.1; done
  local kept=() p
  for p in "${servers[@]}"; do [ "$p" != "$old" ] && kept+=("$p"); done
  servers=("${kept[@]}")
}
metric() { # node index, metric name: summed over shards
  curl -s "http://127.0.0.1:$((29500 + $1))/metrics" | awk -v m="$2" '$1 ~ "^"m"[{]" { s += $2 } END { print s + 0 }'
}
wait_settled() { # node indices...: until every one is settled on one epoch and nothing is being dropped
  local deadline=$((SECONDS + 600))
  while [ $SECONDS -lt $deadline ]; do
    local ok=1 epochs=()
    for i in "$@"; do
      [ "$(metric "$i" dynkv_ownership_settled)" = 2 ] || ok=0
      epochs+=("$(metric "$i" dynkv_ownership_epoch)")
    done
    [ "$ok" = 1 ] && [ "$(printf '%s\n' "${epochs[@]}" | sort -u | wc -l)" = 1 ] && return 0
    sleep 0.2
  done
  echo "ownership did not settle in 600 s" >&2; exit 1
}
join_watch() { # times node 3's join: from now until it owns partitions and all four are settled
  local deadline=$((SECONDS + 600)) t0
  t0=$(date +%s.%N)
  while [ $SECONDS -lt $deadline ]; do
    if [ "$(metric 3 dynkv_partitions_owned)" -gt 0 ] 2>/dev/null; then
      wait_settled 0 1 2 3
      awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }' >"$work/join_s"
      return 0
    fi
    sleep 0.2
  done
  echo "?" >"$work/join_s"
}
ae_cost() { # label: bytes received per partition comparison over 8 s, all nodes
  local b0=0 c0=0 b1=0 c1=0
  for i in 0 1 2; do b0=$((b0 + $(metric $i dynkv_sync_bytes_received_total))); c0=$((c0 + $(metric $i dynkv_anti_entropy_compared_total))); done
  sleep 8
  for i in 0 1 2; do b1=$((b1 + $(metric $i dynkv_sync_bytes_received_total))); c1=$((c1 + $(metric $i dynkv_anti_entropy_compared_total))); done
  awk -v l="$1" -v b=$((b1 - b0)) -v c=$((c1 - c0)) \
    'BEGIN { printf "| %s | %d | %d | %.0f |\n", l, c, b, (c > 0 ? b / c : 0) }'
}
load() { # first key count: writes keys 0..n-1 once
  "$bin" bench --quiet --addr "$(native 0),$(native 1),$(native 2)" --workload custom --update 1 \
    --distribution uniform --keys "$1" --load --ops 1 --json "$work/load.json" --svg "$work/load.svg" >/dev/null
}
ycsb_b() { # label, extra arguments: a table row; the throughput also goes to $work/ops_s
  local label=$1; shift
  bench_row "$label" --addr "$(native 0),$(native 1),$(native 2)" --workload B --keys "$keys" \
    --duration-s "$seconds" --concurrency 32 "$@"
  python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["throughput_ops_s"]))' "$work/b.json" \
    >"$work/ops_s"
}
loss() { # throughput, baseline: the change in percent
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.0f%%", (a - b) / b * 100 }'
}
refilled() { # since: waits (max 600 s) until node 2 holds as many keys as node 0; prints the seconds since $1
  while [ $((SECONDS - $1)) -lt 600 ]; do
    if [ "$(metric 2 dynkv_engine_keys)" -ge "$(metric 0 dynkv_engine_keys)" ]; then
      echo $((SECONDS - $1)); return 0
    fi
    sleep 0.5
  done
  echo "more than 600"
}

for i in 0 1 2; do
  peers=()
  for j in 0 1 2; do [ $j != $i ] && peers+=("$(internode $j)"); done
  start_node $i --peers "$(IFS=,; echo "${peers[*]}")"
done
wait_settled 0 1 2

{
  echo "Run of $(date -u +%Y-%m-%d) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),"
  echo "$(uname -r). 3 nodes of 2 shards on 127.0.0.1, N=3, R=W=2, sync=interval_ms=10, 100-byte values;"
  echo "the load generator shares the cores."
  echo
  echo "**Anti-entropy between replicas that agree** (every node, 8 s, a partition compared every 100 ms per shard):"
  echo
  echo "| keys | comparisons | bytes received | bytes per comparison |"
  echo "|---|---|---|---|"
  load $((keys / 10))
  sleep 3
  ae_cost "$((keys / 10))"
  load "$keys"
  sleep 3
  ae_cost "$keys"
  echo
  echo "**Foreground YCSB B (95% reads, zipfian) against background work:**"
  echo
  echo "| cluster state | ops/s | p50 | p99 | server CPU s / 1M ops | errors | sibling reads | client busy |"
  echo "|---|---|---|---|---|---|---|---|"
  ycsb_b "quiet, 3 nodes"
  quiet=$(cat "$work/ops_s")
  # Node 2 is down while a fifth of the keys are rewritten, and comes back
  # after its hints have expired: anti-entropy repairs what it missed.
  stop_node 2
  missed=$((keys / 5))
  "$bin" bench --quiet --addr "$(native 0),$(native 1)" --workload custom --update 1 --distribution uniform \
    --keys "$keys" --ops "$missed" --json "$work/missed.json" --svg "$work/missed.svg" >/dev/null
  sleep 2
  r0=0; for i in 0 1; do r0=$((r0 + $(metric $i dynkv_anti_entropy_repaired_total))); done
  start_node 2 --peers "$(internode 0),$(internode 1)"
  sleep 2
  ycsb_b "anti-entropy repairing a node that missed $missed updates"
  missed_ops=$(cat "$work/ops_s")
  repaired=$((-r0)); for i in 0 1 2; do repaired=$((repaired + $(metric $i dynkv_anti_entropy_repaired_total))); done
  # Node 2 loses its disk and comes back empty under the same id:
  # anti-entropy alone (and read repair) refills it while YCSB B runs.
  stop_node 2
  rm -rf "$work/node2"
  start_node 2 --join "$(internode 0)"
  t_refill=$SECONDS
  sleep 2
  ycsb_b "anti-entropy refilling an emptied node"
  refill_ops=$(cat "$work/ops_s")
  refill_keys=$(metric 0 dynkv_engine_keys)
  refill_s=$(refilled "$t_refill")
  # A fourth node joins while YCSB B runs; a watcher times the join from
  # the node's start to settled ownership with partitions on it.
  start_node 3 --join "$(internode 0)"
  join_watch &
  watcher=$!
  # On this machine the joining node shares the cores with the others; its
  # CPU during the row shows how much of the loss is its side of the copy.
  joiner0=$(cpu_seconds "${node_pid[3]}"); all0=$(cpu_seconds "${servers[@]}")
  ycsb_b "a fourth node joining"
  joiner1=$(cpu_seconds "${node_pid[3]}"); all1=$(cpu_seconds "${servers[@]}")
  join_ops=$(cat "$work/ops_s")
  wait "$watcher"
  join_s=$(cat "$work/join_s")
  received_keys=$(metric 3 dynkv_transfer_keys_total)
  received_bytes=$(metric 3 dynkv_sync_bytes_received_total)
  held_bytes=$(metric 3 dynkv_engine_live_bytes)
  held_keys=$(metric 3 dynkv_engine_keys)
  sleep 5
  ycsb_b "quiet, 4 nodes (for reference)"
  echo
  echo "**Throughput against the quiet cluster of three:** anti-entropy repairing missed writes $(loss "$missed_ops" "$quiet"),"
  echo "refilling an emptied node $(loss "$refill_ops" "$quiet"), a fourth node joining $(loss "$join_ops" "$quiet")."
  echo
  echo "**Missed writes:** node 2 was down while ${missed} updates ran (hints expire after 1 s, so none were handed off);"
  echo "anti-entropy repaired ${repaired} keys (on either side of a comparison, all nodes) during the YCSB B run above."
  echo
  echo "**Refill:** node 2, restarted with an empty disk, held all ${refill_keys} keys again ${refill_s} s after it started"
  echo "(anti-entropy at the defaults above, plus read repair of the keys YCSB B read)."
  echo
  echo "**Join:** the fourth node reached full ownership ${join_s} s after it started (under the YCSB B load above,"
  echo "transfer_keys_per_second_max = 20000 per shard): it received ${received_keys} keys in ${received_bytes} bytes"
  echo "of comparison traffic (hashes, key listings, objects), and holds ${held_keys} keys in ${held_bytes} bytes."
  awk -v j0="$joiner0" -v j1="$joiner1" -v a0="$all0" -v a1="$all1" 'BEGIN {
    printf "During the row, the joining node used %.1f of the four servers%s %.1f CPU seconds (%.0f%%).\n",
      j1 - j0, "\047", a1 - a0, (a1 > a0 ? (j1 - j0) / (a1 - a0) * 100 : 0) }'
} | tee "$out"

write_section "$out" elastic "Membership: joins and anti-entropy (\`benches/elastic.sh\`)"
