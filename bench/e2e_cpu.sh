#!/usr/bin/env bash
# End-to-end CPU throughput: prompt tokens/s and decode tokens/s on a GPT-J-shaped random f16
# model made by make-model (GPT-J-6B's widths, 2 layers: 1.63 GB of weights by default), with
# the decode rate set against its bound: weight bytes per token ÷ the memory read bandwidth
# measured by bench_kernels' read loop in the same run. The last line is JSON.
#   bench/e2e_cpu.sh [MODEL_DIR] [N_LAYER]
set -euo pipefail
cd "$(dirname "$0")/.."
ferry=build/tools/ferry
model=${1:-/tmp/ferry-bench-gptj-2l}
n_layer=${2:-2}
[ -x "$ferry" ] || scripts/setup.sh >/dev/null
if [ ! -f "$model/config.json" ]; then
  "$ferry" make-model --preset gptj-6b --n-layer "$n_layer" --dtype f16 --seed 1 -o "$model" -q
fi
# Bytes of weights read per decoded token: everything but the embedding table (one row of it).
weights_bytes=$(python3 - "$model" <<'PY'
import glob, json, os, sys
d = sys.argv[1]
files = glob.glob(d + "/*.safetensors") + glob.glob(d + "/*.bin")
c = json.load(open(d + "/config.json"))
esize = {"float32": 4, "float16": 2, "bfloat16": 2}[c["torch_dtype"]]
print(sum(os.path.getsize(f) for f in files) - c["vocab_size"] * c["n_embd"] * esize)
PY
)

prompt_ids=$(python3 -c "print(' '.join(str((i*7919)%50000) for i in range(128)))")
"$ferry" run -m "$model" --ids "$prompt_ids" -n 1 --ignore-eos >/dev/null 2>/tmp/ferry-e2e-prompt.txt
"$ferry" run -m "$model" --ids "1 2 3 4" -n 33 --ignore-eos >/dev/null 2>/tmp/ferry-e2e-decode.txt
prompt_tps=$(grep -o 'prompt 128 tokens in [0-9.]* s ([0-9.]* tok/s)' /tmp/ferry-e2e-prompt.txt | sed 's/.*(\([0-9.]*\) tok.*/\1/')
decode_tps=$(grep -o 'decode [0-9.]* tok/s' /tmp/ferry-e2e-decode.txt | awk '{print $2}')

read_bw=""
if [ -x build/bench/bench_kernels ]; then
  read_bw=$(build/bench/bench_kernels --benchmark_filter='MemoryRead' --benchmark_format=json 2>/dev/null |
    python3 -c "import json,sys; b=[x for x in json.load(sys.stdin)['benchmarks'] if 'bytes_per_second' in x]; print(max(x['bytes_per_second'] for x in b) if b else '')")
fi
python3 - "$weights_bytes" "$prompt_tps" "$decode_tps" "$read_bw" <<'PY'
import json, sys
weights, prompt, decode, bw = sys.argv[1:5]
out = {"weights_bytes": int(weights), "prompt_tokens_per_s": float(prompt),
       "decode_tokens_per_s": float(decode)}
if bw:
    bound = float(bw) / int(weights)  # tokens/s if every weight byte is read once per token
    out.update({"read_bw_bytes_per_s": float(bw), "decode_bound_tokens_per_s": bound,
                "decode_vs_bound": float(decode) / bound})
print(json.dumps(out))
PY
