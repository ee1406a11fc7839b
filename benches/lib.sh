# Shared by the benchmark scripts (sourced, not run): a work directory
# removed on exit, every started process stopped by PID, and CPU time of
# processes from /proc.

work=$(mktemp -d)
pids=()
cleanup() {
  # Processes started in a subshell (a pipeline) are listed in $work/pids.
  [ -f "$work/pids" ] && mapfile -t -O "${#pids[@]}" pids <"$work/pids"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [ "${BENCH_KEEP_WORK:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
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

# Runs dynkv bench ($1 = label, rest = arguments) against the servers whose
# pids are in `servers` and prints a table row: throughput, p50, p99,
# server CPU per million operations, errors, sibling reads, client load.
# Needs `bin` (the dynkv binary) and `work`.
bench_row() {
  local label=$1; shift
  local before after
  before=$(cpu_seconds "${servers[@]}")
  "$bin" bench --quiet --json "$work/b.json" --svg "$work/b.svg" "$@" >"$work/b.txt"
  after=$(cpu_seconds "${servers[@]}")
  python3 - "$work/b.json" "$label" "$before" "$after" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); label = sys.argv[2]; cpu = float(sys.argv[4]) - float(sys.argv[3])
ops = r["operations"]; errors = sum(r["errors"].values())
p99 = max((v["p99_us"] for v in r["by_operation"].values()), default=0)
p50 = max((v["p50_us"] for v in r["by_operation"].values()), default=0)
per_m = cpu / max(ops, 1) * 1e6
print(f"| {label} | {r['throughput_ops_s']:.0f} | {p50/1000:.3f} ms | {p99/1000:.3f} ms | {per_m:.2f} | {errors} | {r['sibling_reads']} | {100*r['client_utilization']:.0f}% |")
PY
}

# Writes the text of file $1 into docs/PERFORMANCE.md between the markers
# <!-- $2:begin --> and <!-- $2:end -->, or appends it under heading $3.
write_section() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
results, name, heading = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
path = "docs/PERFORMANCE.md"
doc = open(path).read()
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
if begin in doc and end in doc:
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc = head + begin + "\n" + results + "\n" + end + tail
else:
    doc += f"\n## {heading}\n\n" + begin + "\n" + results + "\n" + end + "\n"
open(path, "w").write(doc)
print(f"wrote the results into {path}")
PY
}
