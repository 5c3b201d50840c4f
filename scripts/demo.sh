#!/usr/bin/env bash
# ferry's main job on a default that needs no download: build, write small random-weight GPT-J
# and Llama-family checkpoints (and a Q4_K_M GGUF file) with make-model, and generate from them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
model=${FERRY_DEMO_MODEL:-/tmp/ferry-demo-tiny}
[ -f "$model/config.json" ] || build/tools/ferry make-model --preset tiny --seed 1 -o "$model"
build/tools/ferry info
build/tools/ferry inspect -m "$model"
build/tools/ferry run -m "$model" -p "The quick brown fox" -n 32 --temperature 0.8 --top-p 0.9 --seed 1
llama=${FERRY_DEMO_LLAMA:-/tmp/ferry-demo-tiny-llama}
[ -f "$llama/config.json" ] || build/tools/ferry make-model --preset tiny-llama --seed 1 -o "$llama"
build/tools/ferry inspect -m "$llama"
build/tools/ferry run -m "$llama" -p "The quick brown fox" -n 32 --temperature 0.8 --top-p 0.9 --seed 1
# The same small Llama as a GGUF file quantized as llama.cpp's Q4_K_M, run as it is.
gguf=${FERRY_DEMO_GGUF:-/tmp/ferry-demo-tiny-llama-q4_k_m.gguf}
[ -f "$gguf" ] || build/tools/ferry make-model --preset tiny-llama --seed 1 --n-embd 256 --n-head 4 --n-inner 768 --gguf q4_k_m -q -o "$gguf"
build/tools/ferry inspect -m "$gguf"
build/tools/ferry run -m "$gguf" -p "The quick brown fox" -n 32 --temperature 0.8 --top-p 0.9 --seed 1
