# Shared by the benchmark scripts (sourced, not run): a work directory
# removed on exit, every started process stopped by PID, and CPU time of
# processes from /proc.

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ticks=$(getconf CLK_TCK)

cpu_seconds() { # utime + stime summed over the given pids, in seconds
  local total=0
  for pid in "$@"; do
    total=$(awk -v t="$ticks" -v acc="$total" '{ printf "%.3f", acc + ($14 + $15) / t }' "/proc/$pid/stat")
  done
  echo "$total"
}

# Runs redis-benchmark once and prints "requests/s p50_ms p99_ms cpu_s_per_1M"
# ("?" for a figure it did not report), with CPU measured over the pids.
# Usage: redis_bench PORT TEST REQUESTS KEYS PIPELINE PID...
redis_bench() {
  local port=$1 test=$2 requests=$3 keys=$4 pipeline=$5
  shift 5
  local before after out rps p50 p99 cpu
  before=$(cpu_seconds "$@")
  out=$(redis-benchmark -p "$port" -t "$test" -n "$requests" -r "$keys" -d 100 -c 50 -P "$pipeline" --precision 3 \
    2>/dev/null | tr '\r' '\n')
  after=$(cpu_seconds "$@")
  rps=$(echo "$out" | awk '/requests per second/ { for (i = 1; i < NF; i++) if ($(i + 1) == "requests") v = $i } END { print v }')
  p50=$(echo "$out" | awk '/50.000%/ { print $3 }' | head -1)
  p99=$(echo "$out" | awk '/99.[0-9]*%/ && !/99.9/ { print $3 }' | head -1)
  cpu=$(awk -v a="$after" -v b="$before" -v n="$requests" 'BEGIN { printf "%.2f", (a - b) / n * 1e6 }')
  echo "${rps:-?} ${p50:-?} ${p99:-?} $cpu"
}
