#!/usr/bin/env bash
# What tracing costs: decode s/token of `ferry profile` on a streamed model with tracing and with
# --no-trace, alternating runs so drift in the disk's speed falls on both; the median of each.
# The last line is JSON. The issue's budget: under 2%.
#   bench/trace_overhead.sh [FERRY] MODEL_DIR MAX_RAM [RUNS] [N_TOKENS]
set -euo pipefail
ferry=${1:-build/tools/ferry}
model=$2
max_ram=$3
runs=${4:-5}
n=${5:-16}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
decode_s_per_token() {  # from profile's JSON summary
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['decode']['s_per_token'])" "$1"
}
off=()
on=()
for i in $(seq "$runs"); do
  "$ferry" profile -m "$model" --max-ram "$max_ram" --ids "1 2 3 4" -n "$n" --json --no-trace \
    >"$out/off.json" 2>/dev/null
  off+=("$(decode_s_per_token "$out/off.json")")
  "$ferry" profile -m "$model" --max-ram "$max_ram" --ids "1 2 3 4" -n "$n" --json \
    --trace "$out/t.json" >"$out/on.json" 2>/dev/null
  on+=("$(decode_s_per_token "$out/on.json")")
done
python3 - "${off[*]}" "${on[*]}" <<'PY'
import json, statistics, sys
off = [float(x) for x in sys.argv[1].split()]
on = [float(x) for x in sys.argv[2].split()]
mo, mn = statistics.median(off), statistics.median(on)
print(f"tracing off: {mo:.4f} s/token (runs {off})")
print(f"tracing on:  {mn:.4f} s/token (runs {on})")
print(json.dumps({"off_s_per_token": mo, "on_s_per_token": mn, "overhead": mn / mo - 1}))
PY
