#!/usr/bin/env bash
# Speculative decoding under a memory cap (issue 20): a GPT-J-6B-shaped f16 checkpoint streams
# from disk under a 4 GiB cgroup, and `ferry run --draft` drafts with self-int4 (the model's int4
# pack, resident) or lookup (n-grams of the text so far) for k = 0 (no speculation), 2, 4, 8.
# Each run reports s/token over the decode (ferry's own timings: drafting + verifying over the tokens
# after the prompt's, or a plain run's measured s/token), the acceptance rate
# and tokens per target pass (ferry's "speculative" line), and whether its ids equal k = 0's —
# they must (greedy, lossless). Random-weight models have tiny top-2 margins, so each self-* pack's
# top-1 agreement with f16 is measured too (`ferry perplexity --reference`) and printed beside
# the acceptance rate.
#
#   bench/speculative.sh [MODEL_DIR]                 (as root: it makes a memory cgroup)
#   env: MODEL_DIR=/var/tmp/ferry-gptj-6b  CAP=4GiB  HEADROOM=256MiB  N_TOKENS=32
#        KS="0 2 4 8"  DRAFTS="self-int4 lookup"  IDS="<prompt ids>"  AGREE_IDS="<ids>"
#        FERRY=build/tools/ferry
#        OUT_DIR=<dir>  TIMEOUT=3600
# Each self-* pack is converted once into $FERRY_CACHE_DIR/drafts (OUT_DIR/cache by default),
# before the timed runs. The last line of stdout is a JSON summary.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "speculative: $*" >&2; exit 2; }
log() { echo "== $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "run as root (it creates a memory cgroup)"
command -v python3 >/dev/null || die "python3 is needed"

FERRY=${FERRY:-build/tools/ferry}
MODEL_DIR=${1:-${MODEL_DIR:-/var/tmp/ferry-gptj-6b}}
CAP=${CAP:-4GiB}
HEADROOM=${HEADROOM:-256MiB}
N_TOKENS=${N_TOKENS:-32}
KS=${KS:-"0 2 4 8"}
DRAFTS=${DRAFTS:-"self-int4 lookup"}
# A prompt that repeats itself, so prompt lookup has something to find.
IDS=${IDS:-"15496 995 11 314 716 257 1332 13 15496 995 11 314 716 257 1332 13"}
TIMEOUT=${TIMEOUT:-3600}
# The pack-vs-f16 agreement is measured over more positions than the prompt has: 256 ids spread
# over the vocabulary's first 50000.
AGREE_IDS=${AGREE_IDS:-$(python3 -c "print(' '.join(str((i * 7919 + 13) % 50000) for i in range(256)))")}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ferry-speculative.XXXXXX)}
export FERRY_CACHE_DIR=${FERRY_CACHE_DIR:-$OUT_DIR/cache}
mkdir -p "$OUT_DIR" "$FERRY_CACHE_DIR"

[ -x "$FERRY" ] || die "no ferry binary at $FERRY; build it: ninja -C build -j2 ferry (or set FERRY=)"
[ -f "$MODEL_DIR/config.json" ] || die "no model at $MODEL_DIR; make one: $FERRY make-model --preset gptj-6b -o $MODEL_DIR"
cp "$FERRY" "$OUT_DIR/ferry"
FERRY=$OUT_DIR/ferry

to_bytes() {
  python3 -c "
import re,sys
m=re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*', sys.argv[1], re.I)
n,u,i=float(m[1]),m[2].upper(),m[3]
print(int(n*(1024 if i or not u else 1000)**'_KMGT'.index(u or '_')))" "$1"
}
CAP_BYTES=$(to_bytes "$CAP")
BUDGET=$((CAP_BYTES - $(to_bytes "$HEADROOM")))

# A memory cgroup of CAP (v2 if mounted, else v1), swap off for it.
CG=""
make_cgroup() {
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG=/sys/fs/cgroup/ferry-spec-$$
    mkdir -p "$CG"
    echo "$CAP_BYTES" >"$CG/memory.max"
    echo 0 >"$CG/memory.swap.max" 2>/dev/null || true
  else
    CG=/sys/fs/cgroup/memory/ferry-spec-$$
    mkdir -p "$CG"
    echo "$CAP_BYTES" >"$CG/memory.limit_in_bytes"
    echo "$CAP_BYTES" >"$CG/memory.memsw.limit_in_bytes" 2>/dev/null || true
  fi
}
cleanup() { [ -n "$CG" ] && rmdir "$CG" 2>/dev/null || true; }
trap cleanup EXIT
make_cgroup

evict() {  # the checkpoint out of the page cache, so the cap is not bypassed by cached pages
  python3 - "$MODEL_DIR" <<'PY'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        fd = os.open(os.path.join(root, f), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PY
}

# One run in the cgroup: stdout ids with arrival times, stderr kept.
run_one() {  # name, extra args...
  local name=$1; shift
  evict
  sh -c "echo \$\$ > $CG/cgroup.procs 2>/dev/null || echo \$\$ > $CG/tasks; exec timeout $TIMEOUT $FERRY run -m $MODEL_DIR --ids '$IDS' -n $N_TOKENS --max-ram $BUDGET --print-ids $*" \
    2>"$OUT_DIR/$name.err" | python3 -c "
import sys, time, json
times = []
out = []
for line in sys.stdin:
    out.append(line)
    times.append(time.monotonic())
json.dump({'lines': out, 'times': times}, open('$OUT_DIR/$name.out.json', 'w'))
" || log "$name failed (see $OUT_DIR/$name.err)"
}

: >"$OUT_DIR/agreement.txt"
for draft in $DRAFTS; do
  case "$draft" in self-int4|self-int8) ;; *) continue ;; esac
  quant=${draft#self-}
  log "converting the $draft draft once (outside the cap)"
  "$FERRY" run -m "$MODEL_DIR" --ids "$IDS" -n 1 --draft "$draft" --draft-k 1 -q >/dev/null 2>&1 || true
  log "$quant-vs-f16 top-1 agreement"
  pack=$(ls -d "$FERRY_CACHE_DIR"/drafts/*-"$quant"-* 2>/dev/null | head -1 || true)
  if [ -n "$pack" ] && "$FERRY" perplexity -m "$pack" --reference "$MODEL_DIR" --ids "$AGREE_IDS" --json -q \
      >"$OUT_DIR/agreement-$quant.txt" 2>&1; then
    echo "$quant $(tail -n 1 "$OUT_DIR/agreement-$quant.txt")" >>"$OUT_DIR/agreement.txt"
  else
    log "$quant agreement not measured"
  fi
done

for draft in $DRAFTS; do
  for k in $KS; do
    if [ "$k" = 0 ]; then name="plain"; [ -f "$OUT_DIR/plain.out.json" ] && continue; run_one plain
    else name="$draft-k$k"; run_one "$name" --draft "$draft" --draft-k "$k"; fi
  done
done

python3 - "$OUT_DIR" <<'PY'
import json, os, re, sys
d = sys.argv[1]
def load(name):
    p = os.path.join(d, name + ".out.json")
    if not os.path.exists(p): return None
    j = json.load(open(p))
    err = open(os.path.join(d, name + ".err")).read()
    ids = json.loads(j["lines"][-1]) if j["lines"] else None
    spec = re.search(r"speculative \(.*?\): (\d+) target passes.*?(\d+) of (\d+) drafts judged were accepted \(([\d.]+)%; \d+ drafted\), ([\d.]+) tokens per pass; drafting ([\d.]+) s, verifying ([\d.]+) s", err)
    gen = re.search(r"generated (\d+) tokens", err)
    measured = re.search(r"measured ([\d.]+) s/token", err)
    # s/token over the decode: a speculative run's drafting + verifying over the tokens after the
    # first (which the prompt's pass gives); a plain run's own "measured" figure, the same span.
    s_tok = None
    if spec and gen and int(gen[1]) > 1:
        s_tok = (float(spec[6]) + float(spec[7])) / (int(gen[1]) - 1)
    elif measured:
        s_tok = float(measured[1])
    return {"ids": ids, "s_per_token": s_tok,
            "acceptance": float(spec[4]) / 100 if spec else None,
            "tokens_per_pass": float(spec[5]) if spec else 1.0}
plain = load("plain")
rows = []
for f in sorted(os.listdir(d)):
    if f.endswith(".out.json"):
        n = f[:-9]; r = load(n); r["name"] = n
        r["same_ids"] = plain is not None and r["ids"] == plain["ids"]
        r["speedup"] = (plain["s_per_token"] / r["s_per_token"]) if plain and r["s_per_token"] and plain["s_per_token"] else None
        rows.append(r)
print(f"{'run':<18}{'s/token':>10}{'accept':>8}{'tok/pass':>10}{'speedup':>9}  same ids")
for r in rows:
    fmt = lambda v, f: (f % v) if v is not None else "-"
    print(f"{r['name']:<18}{fmt(r['s_per_token'], '%.3f'):>10}{fmt(r['acceptance'], '%.2f'):>8}"
          f"{r['tokens_per_pass']:>10.2f}{fmt(r['speedup'], '%.2fx'):>9}  {r['same_ids']}")
agree = {}
for line in open(os.path.join(d, "agreement.txt")).read().strip().splitlines():
    quant, js = line.split(" ", 1)
    try:
        ref = json.loads(js)["reference"]
        agree[quant] = {"top1_agreement": ref["top1_agreement"], "kl_mean": ref["kl_mean"]}
        print(f"{quant} vs f16: same top-1 token at {100 * ref['top1_agreement']:.1f}% of positions, KL {ref['kl_mean']:.4f} nats")
    except (ValueError, KeyError):
        agree[quant] = js
print(json.dumps({"runs": [{k: v for k, v in r.items() if k != "ids"} for r in rows],
                  "agreement_vs_f16": agree}))
PY
