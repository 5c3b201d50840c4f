#!/usr/bin/env bash
# Continuous batching: aggregate decode tokens/s at 1, 2, 4, 8 and 16 concurrent sequences,
# through `ferry run --prompts` (the scheduler, one forward pass per step for every sequence).
# Each run decodes N prompts of the same length together; the rate is the tokens sampled in
# passes with no prompt rows over those passes' wall time (the "decode … tok/s in all" figure
# ferry prints), so loading and prefill are left out. When the weights stream from disk or over
# PCIe a pass costs about the same for 1 or 16 rows, so the rate should grow close to N-fold
# until compute or the KV cache takes over; issue 18's goal is ≥ 6× at 8 when disk-bound.
#
#   bench/batch_decode.sh MODEL_DIR [-n TOKENS] [--seqs "1 2 4 8 16"] [--prompt-len L] [-- FERRY_ARGS...]
#   e.g. bench/batch_decode.sh ~/models/gptj-6b -n 32 -- --max-ram 4GiB
#        bench/batch_decode.sh ~/models/gptj-6b -- --device cuda
# FERRY (default build/tools/ferry) picks the binary. The last line is JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
# FERRY may be a command with arguments, e.g. "bench/capped.sh 4GiB build/tools/ferry".
read -ra ferry <<<"${FERRY:-build/tools/ferry}"
[ $# -ge 1 ] || { sed -n '2,14p' "$0"; exit 2; }
model=$1
shift
n=32
seqs="1 2 4 8 16"
prompt_len=16
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n=$2; shift 2 ;;
    --seqs) seqs=$2; shift 2 ;;
    --prompt-len) prompt_len=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "batch_decode.sh: unknown argument $1 (ferry's own go after --)" >&2; exit 2 ;;
  esac
done
[ -x "${ferry[-1]}" ] || [ -x "${ferry[0]}" ] || { echo "batch_decode.sh: no ${ferry[*]}; build the ferry target or set FERRY" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results=()
printf '%6s %14s %14s %8s %10s  %s\n' seqs 'decode tok/s' 'per seq' 'vs 1' 'wall s' plan
base=""
for s in $seqs; do
  # Different prompts (ids below 1000: every fixture and real vocabulary has them), same length.
  python3 - "$s" "$prompt_len" "$n" >"$work/prompts.jsonl" <<'PY'
import json, sys
s, length, n = map(int, sys.argv[1:4])
for i in range(s):
    print(json.dumps({"ids": [(i * 131 + t * 17 + 3) % 997 for t in range(length)], "max_tokens": n}))
PY
  start=$(date +%s.%N)
  "${ferry[@]}" run -m "$model" --prompts "$work/prompts.jsonl" --max-seqs "$s" --ignore-eos "$@" \
    >"$work/out.jsonl" 2>"$work/err.txt" || { cat "$work/err.txt" >&2; exit 1; }
  end=$(date +%s.%N)
  rate=$(grep -o 'decode [0-9.]* tok/s in all' "$work/err.txt" | awk '{print $2}')
  plan=$(grep -o 'plan: .*' "$work/err.txt" | head -1 | cut -c1-120 || true)
  # bench/capped.sh's line: the kernel's peak for the cgroup.
  peak=$(grep -o 'peak [0-9.]* [KMG]iB (kernel)' "$work/err.txt" | head -1 || true)
  [ -z "$peak" ] || plan="$plan; $peak"
  [ -n "$base" ] || base=$rate
  wall=$(python3 -c "print(f'{$end - $start:.2f}')")
  row=$(python3 -c "s, r, b, w = $s, $rate, $base, $wall
print(f'{s:6d} {r:14.2f} {r / s:14.2f} {r / b if b else 0:7.2f}x {w:10.2f}')")
  echo "$row  $plan"
  results+=("{\"seqs\": $s, \"decode_tok_s\": $rate, \"wall_s\": $wall}")
done
(IFS=,; echo "{\"model\": \"$model\", \"new_tokens\": $n, \"prompt_len\": $prompt_len, \"runs\": [${results[*]}]}")
