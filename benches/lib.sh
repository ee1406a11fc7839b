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
