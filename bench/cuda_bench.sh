#!/usr/bin/env bash
# GPU benchmarks of the CUDA backend (issue 5), for a machine with a GPU; with none it says so
# and exits 0. Everything lands in OUT_DIR; the last line of stdout is a JSON summary.
#   1. host → device copy rate: the staging ring (registered StagingPool slots, held until the
#      copy's event) against back-to-back pinned cudaMemcpyAsync measured in the same run
#      (bench_cuda_h2d); target ring ≥ 0.9 × pinned.
#   2. a GPT-J-6B-shaped random f16 checkpoint (`ferry make-model --preset gptj-6b`, 12.1 GB,
#      made once in MODEL_DIR), run greedily with
#        colab:    --max-vram 15GiB --max-ram 10GiB   (every layer resident; RAM bounded at load)
#        streamed: --max-vram 6GiB  --max-ram 10GiB   (layers that do not fit stream every token)
#        disk:     --max-vram 6GiB  --max-ram 4GiB    (and those that do not fit in RAM from disk)
#        vram3:    --max-vram 3GiB  --max-ram 20GiB   (most layers cross PCIe every token, none from disk)
#      and, when PACK_CASES is set, the same cases on a ferry pack of it (PACK_QUANT, made once in
#      PACK_DIR by `ferry convert`), named PACK_QUANT_CASE: the bytes a pack saves on PCIe.
#      recording load time, s/token (ferry's decode rate), peak RSS (VmHWM via /usr/bin/time, else
#      ferry's own line) and the plan's prediction; s/token is set against the bound
#        max(bytes over PCIe per token / pinned copy rate, s/token of the all-resident run)
#      (the all-resident run is the compute time: it copies nothing per token), and for the disk
#      case the bytes read from disk per token / the disk rate ferry probed before the run.
#   3. Hugging Face Accelerate loading the same checkpoint with device_map="auto" and the same
#      max_memory (when python3 has torch, transformers and accelerate), same prompt and tokens
#      (not for the disk case: Accelerate would first write its own offload copy to disk).
# The page cache is dropped before each run when this runs as root (else noted: a warm cache
# flatters load times).
#   bench/cuda_bench.sh
#   env: BUILD=build  FERRY=$BUILD/tools/ferry  H2D=$BUILD/bench/bench_cuda_h2d
#        OUT_DIR=${OUT:-bench-out}/cuda_bench  MODEL_DIR=/var/tmp/ferry-gptj-6b  N_TOKENS=16
#        IDS="<8 ids>"  CASES="colab streamed disk"  HF=1  RUN_TIMEOUT=1200
#        PACK_CASES=""  PACK_QUANT=int4  PACK_DIR=$MODEL_DIR-$PACK_QUANT.ferry
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
FERRY=${FERRY:-$BUILD/tools/ferry}
H2D=${H2D:-$BUILD/bench/bench_cuda_h2d}
OUT_DIR=${OUT_DIR:-${OUT:-bench-out}/cuda_bench}
MODEL_DIR=${MODEL_DIR:-/var/tmp/ferry-gptj-6b}
N_TOKENS=${N_TOKENS:-16}
IDS=${IDS:-"15496 11 616 1438 318 257 1332 13"}
CASES=${CASES-"colab streamed disk"}  # empty: the copy rates only
HF=${HF:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-1200}
PACK_CASES=${PACK_CASES-}
PACK_QUANT=${PACK_QUANT:-int4}
PACK_DIR=${PACK_DIR:-$MODEL_DIR-$PACK_QUANT.ferry}
mkdir -p "$OUT_DIR"
log() { echo "== $*" >&2; }

[ -x "$FERRY" ] || { echo "cuda_bench: $FERRY not built (set BUILD or FERRY)" >&2; exit 2; }
"$FERRY" info > "$OUT_DIR/info.txt"
if ! grep -q '^device cuda:' "$OUT_DIR/info.txt"; then
  echo "cuda_bench: no CUDA device ($(grep '^cuda' "$OUT_DIR/info.txt" | tr '\n' ' ')); nothing measured"
  exit 0
fi
if command -v nvidia-smi >/dev/null; then nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true; fi
gpu=$(grep -m1 '^device cuda:' "$OUT_DIR/info.txt" | sed 's/^device //')
log "GPU: $gpu"

drop_caches() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; echo cold
  else echo warm; fi
}

log "host → device copy rates"
pinned_gbps=0
if [ -x "$H2D" ]; then
  "$H2D" | tee "$OUT_DIR/h2d.json"
  pinned_gbps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pinned_gbps"])' "$OUT_DIR/h2d.json")
else
  echo "cuda_bench: $H2D not built; copy rates skipped" >&2
fi

if [ -n "$CASES" ] && [ ! -f "$MODEL_DIR/config.json" ]; then
  log "making a GPT-J-6B-shaped f16 checkpoint in $MODEL_DIR"
  mkdir -p "$(dirname "$MODEL_DIR")"
  "$FERRY" make-model --preset gptj-6b --dtype f16 -o "$MODEL_DIR" > "$OUT_DIR/make-model.txt" 2>&1
fi
if [ -n "$PACK_CASES" ] && [ ! -f "$PACK_DIR/model.ferry" ]; then
  log "converting $MODEL_DIR to an $PACK_QUANT pack in $PACK_DIR"
  "$FERRY" convert -m "$MODEL_DIR" -o "$PACK_DIR" --quant "$PACK_QUANT" --quiet \
    > "$OUT_DIR/convert.txt" 2>&1
fi
ctx=$(( $(echo "$IDS" | wc -w) + N_TOKENS ))

flags_for() {
  case "$1" in
    colab) echo "--max-vram 15GiB --max-ram 10GiB" ;;
    streamed) echo "--max-vram 6GiB --max-ram 10GiB" ;;
    disk) echo "--max-vram 6GiB --max-ram 4GiB" ;;
    vram3) echo "--max-vram 3GiB --max-ram 20GiB" ;;
    *) echo "cuda_bench: unknown case $1" >&2; exit 2 ;;
  esac
}

# One ferry run: its plan, its output, and the figures pulled out of them into NAME.json.
run_ferry() {  # run_ferry CASE [MODEL [NAME]]
  local name=${3:-$1} model=${2:-$MODEL_DIR} flags
  flags=$(flags_for "$1")
  log "ferry $name ($model): $flags"
  # shellcheck disable=SC2086
  "$FERRY" plan -m "$model" --device cuda $flags --ctx "$ctx" --json > "$OUT_DIR/plan_$name.json"
  local cache; cache=$(drop_caches)
  local timer=()
  [ -x /usr/bin/time ] && timer=(/usr/bin/time -v)
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  # The run replays the plan just printed (`ferry plan` plans for a what-if GPU of --max-vram),
  # so the prediction, the tiers and the PCIe bytes below are the run's.
  timeout "$RUN_TIMEOUT" "${timer[@]}" "$FERRY" run -m "$model" --ids "$IDS" -n "$N_TOKENS" \
    --device cuda $flags --plan "$OUT_DIR/plan_$name.json" --print-ids \
    > "$OUT_DIR/run_$name.out" 2> "$OUT_DIR/run_$name.err" || rc=$?
  t1=$(date +%s.%N)
  python3 - "$OUT_DIR" "$name" "$rc" "$cache" "$t0" "$t1" "$pinned_gbps" <<'PY'
import json, re, sys
out, name, rc, cache, t0, t1, pinned = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
err = open(f"{out}/run_{name}.err").read()
plan = json.load(open(f"{out}/plan_{name}.json"))
def num(pattern, default=None):
    m = re.search(pattern, err)
    return float(m.group(1)) if m else default
decode_tps = num(r"decode ([0-9.]+) tok/s")
# ferry's own "measured X s/token" has three decimals; tok/s has one (0.6 tok/s for 1.794 s).
measured = num(r"measured ([0-9.]+) s/token")
rss_kb = num(r"Maximum resident set size \(kbytes\): ([0-9]+)")
streamed_bytes = sum(l["bytes"] for l in plan["layers"] if l["tier"] != "device")
disk_bytes = plan["links"]["disk_bytes_per_token"]
disk_probed = plan["machine"]["disk_bytes_per_s"]
r = {"case": name, "rc": rc, "page_cache": cache, "wall_s": round(t1 - t0, 2),
     "load_s": num(r"load ([0-9.]+) s"), "s_per_token": measured if measured and measured >= 0.05 else (1 / decode_tps) if decode_tps else None,
     "peak_rss_bytes": rss_kb * 1024 if rss_kb else None,
     "ferry_peak_rss": (re.search(r"peak RSS ([^;\n]+)", err) or [None, None])[1],
     "predicted_s_per_token": plan.get("s_per_token"), "predicted_bound": plan.get("bound"),
     "predicted_peak_ram_bytes": plan.get("peak_ram_bytes"),
     "predicted_peak_vram_bytes": plan.get("peak_vram_bytes"),
     "pcie_bytes_per_token": streamed_bytes,
     "pcie_s_per_token": streamed_bytes / (pinned * 1e9) if pinned > 0 else None,
     "disk_bytes_per_token": disk_bytes, "disk_probed_gbps": disk_probed / 1e9,
     "disk_s_per_token": disk_bytes / disk_probed if disk_bytes else 0.0,
     "disk_achieved_gbps": num(r"disk → host achieved ([0-9.]+) GB/s"),
     "layers_on_device": sum(1 for l in plan["layers"] if l["tier"] == "device"),
     "layers": len(plan["layers"])}
json.dump(r, open(f"{out}/{name}.json", "w"), indent=1)
print(json.dumps(r))
PY
}

# Hugging Face Accelerate on the same checkpoint, budgets and prompt.
run_hf() {
  local name=$1 vram ram
  case "$name" in colab) vram=15GiB; ram=10GiB ;; streamed) vram=6GiB; ram=10GiB ;; esac
  if ! python3 -c 'import torch, transformers, accelerate' 2>/dev/null; then
    echo '{"case": "'"hf_$name"'", "skipped": "python3 lacks torch, transformers or accelerate"}' \
      | tee "$OUT_DIR/hf_$name.json"
    return
  fi
  log "HF Accelerate $name: max_memory={0: $vram, cpu: $ram}"
  local cache; cache=$(drop_caches)
  timeout "$RUN_TIMEOUT" python3 - "$MODEL_DIR" "$vram" "$ram" "$N_TOKENS" "$IDS" "$name" "$cache" \
    > "$OUT_DIR/hf_$name.json" 2> "$OUT_DIR/hf_$name.err" <<'PY' || echo "{\"case\": \"hf_$name\", \"rc\": $?}" > "$OUT_DIR/hf_$name.json"
import json, resource, sys, tempfile, time
import torch
from transformers import AutoModelForCausalLM
d, vram, ram, n, ids, name, cache = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), [int(x) for x in sys.argv[5].split()], sys.argv[6], sys.argv[7]
t0 = time.time()
import transformers
# transformers 4.56 renamed torch_dtype to dtype; device_map implies low_cpu_mem_usage.
major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
m = AutoModelForCausalLM.from_pretrained(d, device_map="auto", max_memory={0: vram, "cpu": ram},
                                         offload_folder=tempfile.mkdtemp(prefix="hf-offload-"),
                                         **{dtype_kw: torch.float16})
torch.cuda.synchronize()
load_s = time.time() - t0
x = torch.tensor([ids], device="cuda")
def gen(k):
    torch.cuda.synchronize(); t = time.time()
    out = m.generate(x, max_new_tokens=k, min_new_tokens=k, do_sample=False)
    torch.cuda.synchronize()
    return time.time() - t, out[0, len(ids):].tolist()
gen(2)  # warm-up: the first generate pays for CUDA's and cuBLAS's set-up
t1, _ = gen(1)
tn, toks = gen(n)
placement = {}
for v in getattr(m, "hf_device_map", {}).values():
    placement[str(v)] = placement.get(str(v), 0) + 1
print(json.dumps({"case": "hf_" + name, "page_cache": cache, "load_s": round(load_s, 2),
                  "s_per_token": (tn - t1) / (n - 1), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "peak_vram_bytes": torch.cuda.max_memory_allocated(), "device_map": placement, "tokens": toks}))
PY
  cat "$OUT_DIR/hf_$name.json"
}

for c in $CASES; do
  run_ferry "$c"
  [ "$HF" = 1 ] && [ "$c" != disk ] && [ "$c" != vram3 ] && run_hf "$c"
done
for c in $PACK_CASES; do
  run_ferry "$c" "$PACK_DIR" "${PACK_QUANT}_$c"
done

python3 - "$OUT_DIR" "$gpu" "$CASES" "$PACK_CASES" "$PACK_QUANT" <<'PY'
import json, os, sys
out, gpu, cases, pack_cases, quant = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split(), sys.argv[5]
s = {"gpu": gpu}
if os.path.exists(f"{out}/h2d.json"):
    s["h2d"] = json.load(open(f"{out}/h2d.json"))
# Each family's compute time is its all-resident (colab) run: it copies nothing per token.
families = [("", cases), (quant + "_", pack_cases)]
for prefix, names in families:
    for c in names:
        for k in (prefix + c, "hf_" + c) if not prefix else (prefix + c,):
            p = f"{out}/{k}.json"
            if os.path.exists(p):
                try: s[k] = json.load(open(p))
                except ValueError: s[k] = {"unreadable": p}
for prefix, names in families:
    compute = (s.get(prefix + "colab") or {}).get("s_per_token")
    for c in names:
        r = s.get(prefix + c) or {}
        if r.get("s_per_token") and compute:
            bound = max(r.get("pcie_s_per_token") or 0, r.get("disk_s_per_token") or 0, compute)
            r["bound_s_per_token"] = bound
            r["over_bound"] = r["s_per_token"] / bound
json.dump(s, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(s))
PY
