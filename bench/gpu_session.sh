#!/usr/bin/env bash
# Everything a session lent a GPU should run for the CUDA backend, in one call. Logs go to a work
# folder; $OUT (the device tool's output folder, which returns at most 8 files; default
# ./gpu-session-out) gets steps.txt, ferry-info.txt and gpu-session.tgz holding every log, JUnit
# XML and benchmark JSON:
#   1. the binaries: prebuilt ones from gpu-bin/ when present (bench/gpu_prebuild.sh, run on the
#      developer's machine, carried along: the GPU image lacks ferry's build dependencies), else
#      configure and build the CUDA targets there for this GPU (FERRY_CUDA_ARCHITECTURES=native)
#   2. the gpu tests (kernels vs their CPU twins, the engine vs Hugging Face, streamed vs
#      resident, bf16, the CLI), JUnit XML
#   3. compute-sanitizer memcheck, racecheck and initcheck on the kernel and engine tests
#   4. bench/cuda_bench.sh: copy rates always; the GPT-J-6B-shaped runs and HF Accelerate when
#      FULL=1 (making the 12 GB checkpoint and loading it four times takes many minutes)
# Each step's log is kept even when a step fails; the script goes on and exits with the first
# failure's status. Without a GPU it runs nothing and says so.
#   bench/gpu_session.sh     env: OUT  BIN=gpu-bin  BUILD=build-gpu  JOBS  FULL=0  SANITIZE=1
#                                 MODEL_DIR=/var/tmp/ferry-gptj-6b
# A device call: carry ["gpu-bin"], command "bench/gpu_session.sh", timeout_s 540.
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
status=0
step() {  # step NAME CMD...: runs CMD, log in $WORK/NAME.log, remembers the first failure
  local name=$1; shift
  echo "== $name: $*" | tee -a "$WORK/steps.txt"
  local t0=$SECONDS rc=0
  "$@" > "$WORK/$name.log" 2>&1 || rc=$?
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
  ferry=$BIN/ferry kernels=$BIN/test_cuda_kernels engine=$BIN/test_cuda_engine
  cli=$BIN/test_cuda_cli_gpu loader=$BIN/test_cublas_loader h2d=$BIN/bench_cuda_h2d
  echo "== prebuilt binaries from $BIN" | tee -a "$WORK/steps.txt"
else
  step configure cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DFERRY_CUDA_ARCHITECTURES=native
  step build cmake --build "$BUILD" -j"$JOBS" --target ferry test_cuda_kernels test_cuda_engine \
    test_cuda_cli_gpu test_cublas_loader bench_cuda_h2d
  ferry=$BUILD/tools/ferry kernels=$BUILD/tests/kernels/test_cuda_kernels
  engine=$BUILD/tests/runtime/test_cuda_engine cli=$BUILD/tests/tools/test_cuda_cli_gpu
  loader=$BUILD/tests/kernels/test_cublas_loader h2d=$BUILD/bench/bench_cuda_h2d
fi
export FERRY_TEST_DATA=$PWD/tests/data FERRY_DATA_DIR=$PWD/data FERRY_CACHE_DIR=$WORK/probe-cache
export FERRY_BIN=$PWD/$ferry
"$ferry" info > "$WORK/ferry-info.txt" 2>&1
cat "$WORK/ferry-info.txt"

for t in kernels engine cli loader; do
  step "test_$t" "${!t}" --gtest_output="xml:$WORK/test_$t.xml"
done

if [ "$SANITIZE" = 1 ]; then
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    step "sanitizer_${tool}_kernels" "$cs" --tool "$tool" --error-exitcode 9 "$kernels"
    # The engine under the sanitizer is slow: the tiny fixtures resident, streamed and batched.
    step "sanitizer_${tool}_engine" "$cs" --tool "$tool" --error-exitcode 9 "$engine" \
      --gtest_filter='*CudaParity*/0:*StreamedEqualsResident*:*BatchedSequences*'
  done
  step sanitizer_initcheck_engine "$cs" --tool initcheck --error-exitcode 9 "$engine" \
    --gtest_filter='*CudaParity*/0:*StreamedEqualsResident*'
fi

if [ "$FULL" = 1 ]; then
  step cuda_bench env FERRY="$ferry" H2D="$h2d" OUT_DIR="$WORK/cuda_bench" bench/cuda_bench.sh
else
  step cuda_bench env FERRY="$ferry" H2D="$h2d" OUT_DIR="$WORK/cuda_bench" CASES= HF=0 \
    bench/cuda_bench.sh
fi
echo "gpu_session: done, first failure status $status; logs in $WORK, packed into $OUT/gpu-session.tgz" | tee -a "$WORK/steps.txt"
exit $status
