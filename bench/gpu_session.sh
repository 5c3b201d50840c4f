#!/usr/bin/env bash
# Everything a session lent a GPU should run for the CUDA backend, in one call. Logs go to a work
# folder; $OUT (the device tool's output folder, which returns at most 8 files; default
# ./gpu-session-out) gets steps.txt, ferry-info.txt and gpu-session.tgz holding every log, JUnit
# XML and benchmark JSON:
#   1. the binaries: prebuilt ones from gpu-bin/ when present (bench/gpu_prebuild.sh, run on the
#      developer's machine, carried along: the GPU image lacks ferry's build dependencies), else
#      configure and build the CUDA targets there for this GPU (FERRY_CUDA_ARCHITECTURES=native)
#   2. the gpu tests (kernels vs their CPU twins, the engine vs Hugging Face, streamed vs
#      resident, bf16, the CLI), JUnit XML; the streamed and batched engine tests 25 times over;
#      the paged KV cache (block-table kernels, KV in host memory) and bench/batch_decode.sh on
#      the device with a tiny fixture (FULL: also the GPT-J-6B shape after cuda_bench)
#   3. compute-sanitizer memcheck on the kernel and engine tests; the packed-product benchmark
#      (fused against dequantize + cuBLAS: bench/cuda/packed_gemm.cpp)
#   4. bench/cuda_bench.sh: copy rates always; the GPT-J-6B-shaped runs, f16 and int4 pack, when
#      FULL=1 (the 12 GB checkpoint and its pack are made in the background while the tests run)
#   5. compute-sanitizer racecheck, then initcheck (slow: it gets what time is left)
# Each step's log is kept even when a step fails; the script goes on and exits with the first
# failure's status. Without a GPU it runs nothing and says so.
#   bench/gpu_session.sh     env: OUT  BIN=gpu-bin  BUILD=build-gpu  JOBS  FULL=0  SANITIZE=1
#                                 MODEL_DIR=/var/tmp/ferry-gptj-6b
#          PACK_QUANT=int4  CASES / PACK_CASES / HF (FULL's runs: bench/cuda_bench.sh)
#          STEP_TIMEOUT=120 (s per step)  DEADLINE=480 (s: no step starts later; the device call's
#          timeout_s should leave a minute more)
# A device call: carry ["gpu-bin"], command "FULL=1 bench/gpu_session.sh", timeout_s 560. On an
# H200 (2026-11-26) the whole of it took about 4 minutes, racecheck of the engine excepted.
# shellcheck disable=SC2034  # the test binaries' variables are read through ${!t}
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-gpu-session-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-/tmp/ferry-gpu-session}
rm -rf "$WORK"
mkdir -p "$WORK"
# Whatever happens, what was logged comes back.
# shellcheck disable=SC2317  # called by the EXIT trap
pack() {
  cp "$WORK/steps.txt" "$WORK/ferry-info.txt" "$OUT/" 2>/dev/null
  tar -czf "$OUT/gpu-session.tgz" -C "$WORK" . 2>/dev/null
}
trap pack EXIT
BIN=${BIN:-gpu-bin}
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc)}
FULL=${FULL:-0}
SANITIZE=${SANITIZE:-1}
# The device call is killed at its limit, and then nothing comes back: each step gets at most
# STEP_TIMEOUT seconds, and no step starts after DEADLINE seconds.
STEP_TIMEOUT=${STEP_TIMEOUT:-120}
DEADLINE=${DEADLINE:-480}
MODEL_DIR=${MODEL_DIR:-/var/tmp/ferry-gptj-6b}
status=0
step() {  # step NAME CMD...: runs CMD, log in $WORK/NAME.log, remembers the first failure
  local name=$1; shift
  if [ $SECONDS -ge "$DEADLINE" ]; then
    echo "== $name: skipped, past the ${DEADLINE} s deadline" | tee -a "$WORK/steps.txt"
    return 0
  fi
  local limit=$STEP_TIMEOUT left=$((DEADLINE + 30 - SECONDS))
  [ $left -lt "$limit" ] && limit=$left
  echo "== $name (limit ${limit} s): $*" | tee -a "$WORK/steps.txt"
  local t0=$SECONDS rc=0
  timeout -k 5 "$limit" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s" | tee -a "$WORK/steps.txt"
  tail -n 5 "$WORK/$name.log"
  [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc
  return 0
}

{ nvidia-smi || echo "nvidia-smi: not found"; } > "$WORK/nvidia-smi.txt" 2>&1
if ! nvidia-smi -L > /dev/null 2>&1; then
  echo "gpu_session: no GPU visible (nvidia-smi -L failed); nothing to run" | tee "$WORK/steps.txt"
  exit 0
fi

if [ -x "$BIN/ferry" ]; then
  export LD_LIBRARY_PATH="$PWD/$BIN/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  ferry=$BIN/ferry kernels=$BIN/test_cuda_kernels engine=$BIN/test_cuda_backend
  registry=$BIN/test_backends_gpu
  cli=$BIN/test_cuda_cli_gpu loader=$BIN/test_cublas_loader h2d=$BIN/bench_cuda_h2d
  packed=$BIN/bench_cuda_packed
  echo "== prebuilt binaries from $BIN" | tee -a "$WORK/steps.txt"
else
  step configure cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DFERRY_CUDA_ARCHITECTURES=native
  step build cmake --build "$BUILD" -j"$JOBS" --target ferry test_cuda_kernels test_cuda_backend \
    test_backends_gpu test_cuda_cli_gpu test_cublas_loader bench_cuda_h2d bench_cuda_packed
  ferry=$BUILD/tools/ferry kernels=$BUILD/tests/kernels/test_cuda_kernels
  engine=$BUILD/tests/runtime/test_cuda_backend cli=$BUILD/tests/tools/test_cuda_cli_gpu
  registry=$BUILD/tests/runtime/test_backends_gpu
  loader=$BUILD/tests/kernels/test_cublas_loader h2d=$BUILD/bench/bench_cuda_h2d
  packed=$BUILD/bench/bench_cuda_packed
fi
export FERRY_TEST_DATA=$PWD/tests/data FERRY_DATA_DIR=$PWD/data FERRY_CACHE_DIR=$WORK/probe-cache
export FERRY_BIN=$PWD/$ferry
"$ferry" info > "$WORK/ferry-info.txt" 2>&1
cat "$WORK/ferry-info.txt"
# The 12 GB checkpoint is written while the tests run (16 cores, the tests use one).
# Then its int4 pack (PACK_QUANT), for the same cases on packed weights.
maker=
PACK_QUANT=${PACK_QUANT:-int4}
PACK_DIR=${PACK_DIR:-$MODEL_DIR-$PACK_QUANT.ferry}
if [ "$FULL" = 1 ] && [ ! -f "$PACK_DIR/model.ferry" ]; then
  mkdir -p "$(dirname "$MODEL_DIR")"
  ( if [ ! -f "$MODEL_DIR/config.json" ]; then
      t0=$SECONDS; "$ferry" make-model --preset gptj-6b --dtype f16 -o "$MODEL_DIR" --quiet
      echo "make-model rc=$? in $((SECONDS - t0)) s"
    fi
    t0=$SECONDS; "$ferry" convert -m "$MODEL_DIR" -o "$PACK_DIR" --quant "$PACK_QUANT" --quiet
    echo "convert --quant $PACK_QUANT rc=$? in $((SECONDS - t0)) s" ) > "$WORK/make-model.log" 2>&1 &
  maker=$!
fi

for t in kernels engine registry cli loader; do
  step "test_$t" "${!t}" --gtest_output="xml:$WORK/test_$t.xml"
done
# The streamed and batched paths again and again: an event waited on too late shows up as a
# token that differs now and then, not every time.
step test_engine_repeat "$engine" --gtest_repeat=25 --gtest_brief=1 \
  --gtest_filter='*StreamedEqualsResident*:*BatchedSequences*:*PlannedLoad*:*HostKv*'
# The paged KV cache (issue 18), never yet run on a GPU: the block-table kernels against the
# contiguous cache, the engine's batches and the KV pool in mapped host memory, then batched
# decoding through `ferry run --prompts` on the device, its KV in VRAM and in host memory.
step test_paged_kv "$kernels" --gtest_repeat=10 --gtest_brief=1 \
  --gtest_filter='*PagedCacheEqualsContiguous*'
small=tests/data/gptj/tiny-f16-bin-sharded
step batch_decode_cuda env FERRY="$ferry" bench/batch_decode.sh "$small" -n 16 \
  --seqs "1 4 16" -- --device cuda
step batch_decode_cuda_kv_host env FERRY="$ferry" bench/batch_decode.sh "$small" -n 16 \
  --seqs "1 4 16" -- --device cuda --kv-memory host
for f in batch_decode_cuda batch_decode_cuda_kv_host; do
  tail -n 1 "$WORK/$f.log" 2>/dev/null | sed "s/^/     $f: /" | tee -a "$WORK/steps.txt"
done

cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
# sanitizer NAME TOOL BINARY [gtest filter]: every error printed (device backtraces only), then
# the errors counted by kind and kernel into steps.txt, so one line says where they all are.
sanitizer() {
  local name=$1 tool=$2 bin=$3 filter=${4:-}
  step "$name" "$cs" --tool "$tool" --error-exitcode 9 --print-limit 0 --show-backtrace device \
    "$bin" ${filter:+"--gtest_filter=$filter"}
  [ -f "$WORK/$name.log" ] || return 0
  grep -E '^=========( +at |.*(error|Error|Uninitialized|Invalid|hazard))' "$WORK/$name.log" |
    grep -v 'ERROR SUMMARY\|RACECHECK SUMMARY' | sed -E 's/\+0x[0-9a-f]+//; s/\(.*//; s/ +/ /g' |
    sort | uniq -c | sort -rn | head -8 | sed 's/^/     /' | tee -a "$WORK/steps.txt"
}
# racecheck checks shared memory within kernels: the resident f32 fixture runs every kernel that
# has any (layer norm, attention) and is slow enough under it. initcheck runs each engine test
# alone, so that reports say which path they come from.
sanitize() {  # sanitize TOOL...
  for tool in "$@"; do
    sanitizer "sanitizer_${tool}_kernels" "$tool" "$kernels"
    case $tool in
      racecheck) sanitizer "sanitizer_${tool}_engine" "$tool" "$engine" '*CudaParity*/0' ;;
      initcheck)
        for t in 'CudaParity*/0' StreamedEqualsResident BatchedSequences PacksMatch; do
          sanitizer "sanitizer_${tool}_engine_${t%%\**}" "$tool" "$engine" "*$t*"
        done ;;
      *) sanitizer "sanitizer_${tool}_engine" "$tool" "$engine" \
           '*CudaParity*/0:*StreamedEqualsResident*:*BatchedSequences*:*PacksMatch*' ;;
    esac
  done
}
[ "$SANITIZE" = 1 ] && sanitize memcheck
# Packed products fused against dequantize + cuBLAS, per dtype, shape and batch rows: where the
# engine's kPackedGemvMaxRows should sit (the `choose` lines, also in steps.txt).
step bench_packed "$packed"
grep '"choose"' "$WORK/bench_packed.log" 2>/dev/null | sed 's/^/     /' | tee -a "$WORK/steps.txt"
cp "$WORK/bench_packed.log" "$OUT/bench_packed.jsonl" 2>/dev/null

if [ "$FULL" = 1 ]; then
  if [ -n "$maker" ]; then
    echo "== waiting for make-model" | tee -a "$WORK/steps.txt"
    while kill -0 "$maker" 2>/dev/null && [ $SECONDS -lt $((DEADLINE - 150)) ]; do sleep 2; done
    # Stopped with its ferry child, else a convert left running writes the pack beside the one
    # cuda_bench.sh then starts.
    kill -0 "$maker" 2>/dev/null && { echo "make-model / convert still running at $SECONDS s: stopped";
                                      pkill -P "$maker"; kill "$maker"; } | tee -a "$WORK/steps.txt"
    tee -a "$WORK/steps.txt" < "$WORK/make-model.log"
  fi
  # The f16 cases the H200 measured before (docs/cuda.md) are in CASES; by default the ones that
  # set the pack beside f16: every layer resident, and 3 GiB of VRAM (most layers over PCIe).
  STEP_TIMEOUT=$((DEADLINE - SECONDS)) step cuda_bench env FERRY="$ferry" H2D="$h2d" \
    OUT_DIR="$WORK/cuda_bench" MODEL_DIR="$MODEL_DIR" RUN_TIMEOUT="${RUN_TIMEOUT:-150}" \
    CASES="${CASES-colab vram3}" PACK_CASES="${PACK_CASES-colab vram3}" PACK_QUANT="$PACK_QUANT" \
    PACK_DIR="$PACK_DIR" HF="${HF:-0}" bench/cuda_bench.sh
  cp "$WORK/cuda_bench/summary.json" "$OUT/" 2>/dev/null
  # Batched decoding of the GPT-J-6B shape on the device: the rate at 1, 4 and 16 sequences
  # (issue 18's benchmark; the planner's prediction is in each run's plan line).
  if [ -f "$MODEL_DIR/config.json" ]; then
    step batch_decode_gptj env FERRY="$ferry" bench/batch_decode.sh "$MODEL_DIR" -n 16 \
      --prompt-len 8 --seqs "1 4 16" -- --device cuda
    tail -n 1 "$WORK/batch_decode_gptj.log" 2>/dev/null | sed 's/^/     /' | tee -a "$WORK/steps.txt"
  fi
else
  step cuda_bench env FERRY="$ferry" H2D="$h2d" OUT_DIR="$WORK/cuda_bench" CASES= HF=0 \
    bench/cuda_bench.sh
fi
[ "$SANITIZE" = 1 ] && sanitize racecheck initcheck
echo "gpu_session: done, first failure status $status; logs in $WORK, packed into $OUT/gpu-session.tgz" | tee -a "$WORK/steps.txt"
exit $status
