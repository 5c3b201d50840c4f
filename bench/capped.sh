#!/usr/bin/env bash
# Runs one command inside a fresh memory cgroup capped at SIZE (v1: memory.limit_in_bytes and
# memory.memsw.limit_in_bytes, so swap cannot hide an overrun; v2: memory.max and swap.max = 0),
# after dropping the page cache (a child cgroup is not charged for pages its parent already
# cached, so a warm cache would slip past the cap), and prints the kernel's own peak for the
# cgroup on stderr. For the benchmarks that must hold under a cap, e.g.
#   FERRY="bench/capped.sh 4GiB build/tools/ferry" bench/batch_decode.sh MODEL -n 8
#   bench/capped.sh 4GiB build/tools/ferry run -m MODEL -p "Hello" -n 16
# Needs root.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,9p' "$0"; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "capped.sh: run as root (it creates memory cgroups)" >&2; exit 2; }
size=$1
shift
bytes=$(python3 - "$size" <<'PY'
import re, sys
m = re.fullmatch(r'\s*([0-9.]+)\s*([KMGT]?)(i?B?)\s*', sys.argv[1], re.I)
if not m: sys.exit('capped.sh: bad size ' + sys.argv[1])
unit = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}[m.group(2).upper()]
print(int(float(m.group(1)) * unit))
PY
)
sync
echo 3 >/proc/sys/vm/drop_caches
if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
  parent=/sys/fs/cgroup/memory${own%/}
  cg=$parent/ferry-capped.$$
  mkdir "$cg"
  echo "$bytes" >"$cg/memory.limit_in_bytes"
  [ -f "$cg/memory.memsw.limit_in_bytes" ] && echo "$bytes" >"$cg/memory.memsw.limit_in_bytes"
  peak_file=$cg/memory.max_usage_in_bytes
else
  parent=/sys/fs/cgroup
  cg=$parent/ferry-capped.$$
  mkdir "$cg"
  echo "$bytes" >"$cg/memory.max"
  [ -f "$cg/memory.swap.max" ] && echo 0 >"$cg/memory.swap.max"
  peak_file=$cg/memory.peak
fi
set +e
(echo "$BASHPID" >"$cg/cgroup.procs" && exec "$@")
rc=$?
set -e
peak=$(cat "$peak_file" 2>/dev/null || echo 0)
oom=$(grep -hs '^oom_kill ' "$cg/memory.oom_control" "$cg/memory.events" | awk '{print $2}' | head -1 || true)
echo "capped.sh: cap $size ($bytes bytes), peak $((peak / 1048576)) MiB (kernel), oom kills ${oom:-0}, exit $rc" >&2
rmdir "$cg" 2>/dev/null || true
exit $rc
