#!/usr/bin/env bash
# Everything a session lent a GPU should run for the CUDA backend, in one call, results under
# $OUT (the device tool's output folder; default ./gpu-session-out):
#   1. configure and build the CUDA targets for this GPU only (FERRY_CUDA_ARCHITECTURES=native)
#   2. the gpu-labelled tests (ctest -L gpu), with JUnit XML
#   3. compute-sanitizer memcheck and racecheck on the kernel and engine test binaries
#   4. bench/cuda_bench.sh (copy rates; GPT-J-6B-shaped runs and HF Accelerate when FULL=1,
#      since making the 12 GB checkpoint and loading it twice takes minutes)
# Each step's log is kept even when a step fails; the script goes on and exits with the first
# failure's status. Without a GPU it builds nothing and says so.
#   bench/gpu_session.sh            env: OUT  BUILD=build-gpu  JOBS=$(nproc)  FULL=0
#                                        SANITIZE=1  MODEL_DIR=/var/tmp/ferry-gptj-6b
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-gpu-session-out}
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc)}
FULL=${FULL:-0}
SANITIZE=${SANITIZE:-1}
mkdir -p "$OUT"
status=0
step() {  # step NAME CMD...: runs CMD, log in $OUT/NAME.log, remembers the first failure
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/steps.txt"
  local t0=$SECONDS rc=0
  "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
  tail -n 5 "$OUT/$name.log"
  [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc
  return 0
}

{ nvidia-smi || echo "nvidia-smi: not found"; } > "$OUT/nvidia-smi.txt" 2>&1
if ! nvidia-smi -L > /dev/null 2>&1; then
  echo "gpu_session: no GPU visible (nvidia-smi -L failed); nothing to run" | tee "$OUT/steps.txt"
  exit 0
fi

step configure cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFERRY_CUDA_ARCHITECTURES=native -DFERRY_BUILD_BENCH=ON
step build cmake --build "$BUILD" -j"$JOBS" --target ferry test_cuda_kernels test_cuda_engine \
  test_cuda_cli_gpu test_cuda_cli test_cublas_loader test_kernels bench_cuda_h2d
"$BUILD/tools/ferry" info > "$OUT/ferry-info.txt" 2>&1
step gpu_tests ctest --test-dir "$BUILD" -L gpu --output-on-failure --output-junit "$PWD/$OUT/gpu-tests.xml"
step shared_math_tests ctest --test-dir "$BUILD" -R 'NnMath|CudaCli|CublasLoader' --output-on-failure

if [ "$SANITIZE" = 1 ]; then
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  export FERRY_TEST_DATA=$PWD/tests/data FERRY_DATA_DIR=$PWD/data FERRY_CACHE_DIR=$PWD/$BUILD/test-probe-cache
  for tool in memcheck racecheck; do
    step "sanitizer_${tool}_kernels" "$cs" --tool "$tool" --error-exitcode 9 \
      "$BUILD/tests/kernels/test_cuda_kernels"
    # The engine under racecheck is slow: the resident and streamed tiny fixtures are enough.
    step "sanitizer_${tool}_engine" "$cs" --tool "$tool" --error-exitcode 9 \
      "$BUILD/tests/runtime/test_cuda_engine" \
      --gtest_filter='*CudaParity*/0:*StreamedEqualsResident*:*BatchedSequences*'
  done
  step sanitizer_initcheck_engine "$cs" --tool initcheck --error-exitcode 9 \
    "$BUILD/tests/runtime/test_cuda_engine" --gtest_filter='*CudaParity*/0'
fi

if [ "$FULL" = 1 ]; then
  step cuda_bench env BUILD="$BUILD" OUT_DIR="$OUT/cuda_bench" bench/cuda_bench.sh
else
  step cuda_bench env BUILD="$BUILD" OUT_DIR="$OUT/cuda_bench" CASES= HF=0 bench/cuda_bench.sh
fi
echo "gpu_session: done, first failure status $status; logs in $OUT" | tee -a "$OUT/steps.txt"
exit $status
