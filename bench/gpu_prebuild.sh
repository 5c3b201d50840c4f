#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, what bench/gpu_session.sh runs on a lent GPU machine, whose
# image has nvcc, CMake and ninja but not ferry's other dependencies (fmt, liburing, GoogleTest,
# CLI11, …) and cannot fetch them: a Release build of ferry, the gpu test binaries and the copy
# and packed-product benchmarks, stripped, with the shared libraries they need that the image may
# lack, in gpu-bin/ (ignored by git). Then: device run with carry ["gpu-bin"] and command `bench/gpu_session.sh`.
#   bench/gpu_prebuild.sh            env: BUILD=build-gpu  DEST=gpu-bin  JOBS=$(nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
DEST=${DEST:-gpu-bin}
JOBS=${JOBS:-$(nproc)}
targets=(tools/ferry tests/kernels/test_cuda_kernels tests/kernels/test_cublas_loader
         tests/runtime/test_cuda_backend tests/runtime/test_backends_gpu tests/tools/test_cuda_cli_gpu
         bench/bench_cuda_h2d bench/bench_cuda_packed)
[ -f "$BUILD/CMakeCache.txt" ] ||
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFERRY_WITH_CUDA=ON
# shellcheck disable=SC2046  # one word per target
cmake --build "$BUILD" -j"$JOBS" --target $(for t in "${targets[@]}"; do basename "$t"; done)
rm -rf "$DEST"
mkdir -p "$DEST/lib"
for t in "${targets[@]}"; do strip -o "$DEST/$(basename "$t")" "$BUILD/$t"; done
# Everything but the C runtime and libstdc++/libgcc (the image's are as new or newer).
for t in "${targets[@]}"; do ldd "$DEST/$(basename "$t")"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' |
  while read -r lib; do cp -L "$lib" "$DEST/lib/"; done
grep -qx "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >> .git/info/exclude
du -sh "$DEST" "$DEST/lib"
ls "$DEST" "$DEST/lib"
echo "gpu_prebuild: carry [\"$DEST\"] and run bench/gpu_session.sh"
